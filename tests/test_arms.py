"""Arm kinematics against independent oracles: written-out formulas, per-sample loops,
finite differences, torch autograd and the closed-form IK oracle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikmdn.arms import PlanarArm, arm_from_spec, get_arm, list_arms, wrap_angle
from ikmdn.arms.closed_form import closed_form_ik, has_closed_form
from ikmdn.errors import IKMDNError

PI = math.pi
PRESETS = ("bishop", "planar2", "planar3")

# The presets' geometry written out here, independently of ikmdn/arms/planar.py:
# (link lengths, joint offsets, joint limits, hand angle in the target?).
GEOMETRY = {
    "bishop": ([0.8, 0.2], [0.0, PI], [[0.3, 1.2], [PI / 2, 3 * PI / 2]], False),
    "planar2": ([1.0, 0.6], [0.0, 0.0], [[-PI, PI], [-PI, PI]], False),
    "planar3": ([1.0, 0.7, 0.3], [0.0, 0.0, 0.0], [[-PI, PI]] * 3, True),
}


def loop_fk(lengths, offsets, q, orientation):
    """Planar chain, one sample at a time, plain Python floats: targets (N, 2 or 3)."""
    rows = []
    for sample in np.asarray(q, dtype=float).tolist():
        x = y = angle = 0.0
        for length, offset, qi in zip(lengths, offsets, sample, strict=True):
            angle += qi + offset
            x += length * math.cos(angle)
            y += length * math.sin(angle)
        row = [x, y]
        if orientation:
            row.append(math.atan2(math.sin(angle), math.cos(angle)))
        rows.append(row)
    return np.array(rows)


def joints_in_limits(name: str, max_rows: int = 4):
    """Hypothesis strategy: joint batches (N, dof) inside the preset's limits."""
    limits = GEOMETRY[name][2]
    row = st.tuples(*[st.floats(lo, hi, allow_nan=False) for lo, hi in limits])
    return st.lists(row, min_size=1, max_size=max_rows).map(np.array)


def fd_jacobian(arm, q, h=1e-6):
    """Central finite differences of fk (N, target_dim, dof); angular targets differenced mod 2 pi."""
    jac = np.empty((len(q), arm.target_dim, arm.dof))
    for j in range(arm.dof):
        step = np.zeros(arm.dof)
        step[j] = h
        jac[:, :, j] = arm.residual(arm.fk(q + step), arm.fk(q - step)) / (2 * h)
    return jac


@pytest.fixture(params=PRESETS)
def arm(request):
    return get_arm(request.param)


# -- presets and forward kinematics ---------------------------------------------------------

def test_registry_lists_presets():
    assert set(PRESETS) <= set(list_arms())
    assert list_arms() == sorted(list_arms())


def test_bishop_matches_the_paper_formula():
    arm = get_arm("bishop")
    q = arm.sample_joints(200, np.random.default_rng(0))
    t1, t2 = q[:, 0], q[:, 1]
    expected = np.stack([0.8 * np.cos(t1) - 0.2 * np.cos(t1 + t2),
                         0.8 * np.sin(t1) - 0.2 * np.sin(t1 + t2)], axis=1)
    np.testing.assert_allclose(arm.fk(q), expected, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(arm.joint_limits, [[0.3, 1.2], [PI / 2, 3 * PI / 2]])
    assert (arm.dof, arm.target_dim) == (2, 2)


@pytest.mark.parametrize("name", PRESETS)
def test_fk_equals_per_sample_loop(name):
    arm = get_arm(name)
    lengths, offsets, limits, orientation = GEOMETRY[name]
    rng = np.random.default_rng(1)
    lo, hi = np.array(limits).T
    q = lo + (hi - lo) * rng.random((64, len(lengths)))
    q[:4] = rng.uniform(-10, 10, (4, len(lengths)))  # fk itself does not need in-limit joints
    expected = loop_fk(lengths, offsets, q, orientation)
    got = arm.fk(q)
    assert got.shape == (64, 3 if orientation else 2)
    # atan2 gives (-pi, pi], the library [-pi, pi): compare angles modulo 2 pi.
    np.testing.assert_allclose(arm.residual(got, expected), 0.0, atol=1e-12)
    if orientation:
        assert np.all((got[:, 2] >= -PI) & (got[:, 2] < PI))


def test_batched_fk_equals_single_fk(arm):
    q = arm.sample_joints(16, np.random.default_rng(2))
    batched = arm.fk(q)
    for i in range(len(q)):
        single = arm.fk(q[i])  # (dof,) is promoted to (1, dof)
        assert single.shape == (1, arm.target_dim)
        np.testing.assert_array_equal(single[0], batched[i])
        np.testing.assert_array_equal(arm.jacobian(q[i])[0], arm.jacobian(q)[i])


def test_fk_of_empty_batch(arm):
    assert arm.fk(np.zeros((0, arm.dof))).shape == (0, arm.target_dim)


@pytest.mark.parametrize("name", PRESETS)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_jacobian_equals_finite_differences(name, data):
    arm = get_arm(name)
    q = data.draw(joints_in_limits(name))
    jac = arm.jacobian(q)
    assert jac.shape == (len(q), arm.target_dim, arm.dof)
    np.testing.assert_allclose(jac, fd_jacobian(arm, q), rtol=0, atol=1e-7)


def test_jacobian_fd_check_can_fail():
    """The finite-difference oracle notices a wrong Jacobian (guards the test above)."""
    arm = get_arm("planar2")
    q = arm.sample_joints(5, np.random.default_rng(3))
    wrong = arm.jacobian(q)[:, :, ::-1]
    assert not np.allclose(wrong, fd_jacobian(arm, q), atol=1e-7)


# -- torch twin -------------------------------------------------------------------------------

def test_fk_torch_matches_numpy_and_gradients_flow(arm):
    torch = pytest.importorskip("torch")
    q_np = arm.sample_joints(32, np.random.default_rng(4))
    q = torch.tensor(q_np, dtype=torch.float64, requires_grad=True)
    x = arm.fk_torch(q)
    assert x.dtype == torch.float64 and tuple(x.shape) == (32, arm.target_dim)
    np.testing.assert_allclose(arm.residual(x.detach().numpy(), arm.fk(q_np)), 0.0, atol=1e-12)
    jac = arm.jacobian(q_np)
    for i in range(arm.target_dim):
        # Row n of x depends on row n of q only, so the gradient of the column sum is J[:, i, :].
        (grad,) = torch.autograd.grad(x[:, i].sum(), q, retain_graph=True)
        assert torch.isfinite(grad).all()
        np.testing.assert_allclose(grad.numpy(), jac[:, i, :], rtol=0, atol=1e-12)


# -- spec round trip and registry errors ------------------------------------------------------

def test_spec_json_round_trip(arm):
    spec = json.loads(json.dumps(arm.spec()))
    for key in ("name", "kind", "dof", "target_dim", "joint_limits"):
        assert key in spec
    rebuilt = arm_from_spec(spec)
    assert rebuilt.spec() == arm.spec()
    q = np.random.default_rng(5).uniform(-7, 7, (50, arm.dof))
    np.testing.assert_array_equal(rebuilt.fk(q), arm.fk(q))
    np.testing.assert_array_equal(rebuilt.jacobian(q), arm.jacobian(q))
    np.testing.assert_array_equal(rebuilt.joint_limits, arm.joint_limits)


def test_unknown_arm_lists_valid_names():
    with pytest.raises(IKMDNError) as info:
        get_arm("nope")
    message = str(info.value)
    assert "nope" in message
    for name in list_arms():
        assert name in message
    assert isinstance(info.value, ValueError)


def _planar2_spec():
    return get_arm("planar2").spec()


def _edit(**changes):
    spec = _planar2_spec()
    for key, value in changes.items():
        if value is _DROP:
            del spec[key]
        else:
            spec[key] = value
    return spec


_DROP = object()


@pytest.mark.parametrize("spec", [
    ["planar"],
    "planar2",
    _edit(kind=_DROP),
    _edit(joint_limits=_DROP),
    _edit(kind="teleporter"),
    _edit(dof=3),
    _edit(target_dim=3),
    _edit(link_lengths=_DROP),
    _edit(link_lengths=[1.0, -0.6]),
    _edit(link_lengths=[1.0, 0.6, 0.2]),
    _edit(joint_limits=[[1.0, -1.0], [-PI, PI]]),
    _edit(joint_limits=[-PI, PI]),
    _edit(joint_offsets=[0.0]),
], ids=["list", "str", "no-kind", "no-limits", "bad-kind", "bad-dof", "bad-target-dim",
        "no-lengths", "negative-length", "three-lengths", "lo>hi", "flat-limits", "short-offsets"])
def test_malformed_specs_raise(spec):
    with pytest.raises(IKMDNError):
        arm_from_spec(spec)


def test_joint_limits_is_a_copy():
    arm = get_arm("bishop")
    arm.joint_limits[0, 0] = -100.0
    assert arm.joint_limits[0, 0] == 0.3


# -- sampling and limits ---------------------------------------------------------------------

def test_sample_joints_within_limits_and_reproducible(arm):
    lo, hi = np.array(GEOMETRY[arm.name][2]).T
    q = arm.sample_joints(5000, np.random.default_rng(6))
    assert q.shape == (5000, arm.dof) and q.dtype == np.float64
    assert np.all((q >= lo) & (q <= hi))
    assert arm.within_limits(q).all()
    # uniform: the mean sits near the middle, and most of the range is covered
    np.testing.assert_allclose(q.mean(0), (lo + hi) / 2, atol=0.03 * (hi - lo).max())
    assert np.all(q.max(0) - q.min(0) > 0.98 * (hi - lo))
    np.testing.assert_array_equal(arm.sample_joints(50, np.random.default_rng(7)),
                                  arm.sample_joints(50, np.random.default_rng(7)))
    assert not np.array_equal(arm.sample_joints(50, np.random.default_rng(7)),
                              arm.sample_joints(50, np.random.default_rng(8)))


def test_within_limits_bounded_and_continuous():
    bishop = get_arm("bishop")
    q = np.array([
        [0.3, PI / 2],            # on the limits
        [1.2, 3 * PI / 2],        # on the limits
        [0.3 - 1e-12, PI],        # within atol
        [0.2, PI],                # joint 0 below
        [0.5, 3 * PI / 2 + 1e-6],  # joint 1 above
        [0.5, -PI / 2],           # joint 1 congruent to 3 pi / 2, but bounded joints do not wrap
    ])
    np.testing.assert_array_equal(bishop.within_limits(q), [True, True, True, False, False, False])
    planar2 = get_arm("planar2")
    assert planar2.continuous_joints.all() and not bishop.continuous_joints.any()
    assert planar2.within_limits(np.array([[10.0, -20.0], [PI, -PI]])).all()
    # any leading shape: (N, K, dof) -> (N, K)
    assert bishop.within_limits(np.tile(q, (3, 1, 1))).shape == (3, len(q))


def _mixed_arm():
    """Joint 0 continuous [-pi, pi]; joint 1 bounded [-1, 2]."""
    return PlanarArm("mixed", [1.0, 0.5], [[-PI, PI], [-1.0, 2.0]])


def _naive_project(q, wrap_only=False):
    """Per-element reference for the mixed arm: joint 0 wraps into [-pi, pi), joint 1 clips."""
    out = np.array(q, dtype=float)
    for row in out.reshape(-1, 2):
        a = row[0]
        while a < -PI:
            a += 2 * PI
        while a >= PI:
            a -= 2 * PI
        row[0] = a
        if not wrap_only:
            row[1] = min(max(row[1], -1.0), 2.0)
    return out


def test_wrap_and_project_both_layouts():
    arm = _mixed_arm()
    assert list(arm.continuous_joints) == [True, False]
    q = np.random.default_rng(9).uniform(-12, 12, (40, 2))
    q_before = q.copy()
    wrapped = arm.wrap_joints(q)
    projected = arm.project_to_limits(q)
    np.testing.assert_array_equal(q, q_before)  # inputs are not modified
    np.testing.assert_allclose(wrapped, _naive_project(q, wrap_only=True), atol=1e-12)
    np.testing.assert_allclose(projected, _naive_project(q), atol=1e-12)
    assert arm.within_limits(projected).all()
    # wrapped angles are congruent to the originals
    np.testing.assert_allclose(wrap_angle(wrapped[:, 0] - q[:, 0]), 0.0, atol=1e-12)
    # component-major layout (dof, N) gives the transposed result
    np.testing.assert_array_equal(arm.wrap_joints(q.T, axis=0), wrapped.T)
    np.testing.assert_array_equal(arm.project_to_limits(q.T, axis=0), projected.T)
    # (N, K, dof) with axis=-1
    q3 = q.reshape(8, 5, 2)
    np.testing.assert_array_equal(arm.project_to_limits(q3), projected.reshape(8, 5, 2))


def test_presets_wrap_or_clip():
    planar2, bishop = get_arm("planar2"), get_arm("bishop")
    q = np.array([[3 * PI / 2, -3 * PI / 2], [7.0, -7.0]])
    np.testing.assert_allclose(planar2.project_to_limits(q), [[-PI / 2, PI / 2], [7 - 2 * PI, 2 * PI - 7]],
                               atol=1e-12)
    np.testing.assert_array_equal(bishop.wrap_joints(q), q)  # no continuous joint: unchanged
    np.testing.assert_allclose(bishop.project_to_limits(q), [[1.2, PI / 2], [1.2, PI / 2]])
    np.testing.assert_allclose(bishop.project_to_limits(q.T, axis=0), [[1.2, 1.2], [PI / 2, PI / 2]])


@pytest.mark.parametrize("n", [4, 2], ids=["broadcast-error", "silently-wrong"])
def test_project_to_limits_axis0_three_dims(n):
    bishop = get_arm("bishop")
    q = np.random.default_rng(10).uniform(-5, 5, (n, 3, 2))  # (N, K, dof)
    expected = bishop.project_to_limits(q)
    got = bishop.project_to_limits(np.moveaxis(q, -1, 0), axis=0)  # (dof, N, K)
    np.testing.assert_array_equal(np.moveaxis(got, 0, -1), expected)


# -- closed-form IK oracle -------------------------------------------------------------------

def test_closed_form_branches_reach_target_and_contain_sample(arm):
    assert has_closed_form(arm)
    q0 = arm.sample_joints(2000, np.random.default_rng(11))
    x = arm.fk(q0)
    q, valid = closed_form_ik(arm, x)
    assert q.shape == (2000, 2, arm.dof) and valid.shape == (2000, 2)
    assert valid.any(axis=1).all()
    assert np.isfinite(q[valid]).all() and np.isnan(q[~valid]).all()
    assert arm.within_limits(q[valid]).all()
    for b in range(2):
        m = valid[:, b]
        assert arm.target_error(arm.fk(q[m, b]), x[m]).max() < 1e-9
    gap = np.abs(wrap_angle(q - q0[:, None, :])).max(axis=-1)
    gap = np.where(valid, gap, np.inf).min(axis=1)
    assert gap.max() < 1e-6


def test_closed_form_finds_both_elbows_of_planar2():
    arm = get_arm("planar2")
    x = np.array([[1.0, 0.5], [-0.3, 0.9], [0.0, -1.2]])
    q, valid = closed_form_ik(arm, x)
    assert valid.all()
    np.testing.assert_allclose(loop_fk([1.0, 0.6], [0, 0], q.reshape(-1, 2), False),
                               np.repeat(x, 2, axis=0), atol=1e-12)
    # the elbows bend opposite ways
    assert np.all(np.sign(wrap_angle(q[:, 0, 1])) == -np.sign(wrap_angle(q[:, 1, 1])))


def test_closed_form_outside_workspace(arm):
    if arm.name == "planar3":
        # beyond reach; the wrist point (x - 0.3 (cos phi, sin phi)) at the origin, inside the
        # inner radius 1.0 - 0.7
        x = np.array([[5.0, 0.0, 0.0], [0.3 * math.cos(1.0), 0.3 * math.sin(1.0), 1.0], [2.1, 0.0, 0.0]])
    elif arm.name == "planar2":
        x = np.array([[1.7, 0.0], [0.0, 0.2], [0.0, 0.0], [-2.0, 3.0]])
    else:
        # beyond reach; at the origin; fully stretched (reach 1.0) at angle -1, where t1 is outside
        # [0.3, 1.2]
        x = np.array([[2.0, 2.0], [0.0, 0.0], [math.cos(-1.0), math.sin(-1.0)]])
    q, valid = closed_form_ik(arm, x)
    assert not valid.any()
    assert np.isnan(q).all()


def test_closed_form_single_branch_on_workspace_boundary():
    """Fully stretched, both elbows coincide: one valid branch, not two copies."""
    arm = get_arm("planar2")
    angles = np.array([0.0, 1.0, -2.5])
    x = 1.6 * np.column_stack([np.cos(angles), np.sin(angles)])
    q, valid = closed_form_ik(arm, x)
    np.testing.assert_array_equal(valid.sum(axis=1), 1)
    np.testing.assert_allclose(q[valid], np.column_stack([angles, np.zeros(3)]), atol=1e-7)


def test_closed_form_rejects_arms_without_oracle():
    arm = PlanarArm("p3", [1.0, 1.0, 1.0], [[-PI, PI]] * 3)
    assert not has_closed_form(arm)
    with pytest.raises(IKMDNError):
        closed_form_ik(arm, np.zeros((1, 2)))


# -- input validation ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    np.zeros((4, 3)),
    np.zeros((2, 2, 2)),
    np.zeros(3),
    1.0,
    [[0.5, np.nan]],
    [[0.5, np.inf]],
    [["a", "b"]],
], ids=["wrong-width", "3d", "wrong-length", "scalar", "nan", "inf", "strings"])
def test_fk_rejects_bad_joints(bad):
    arm = get_arm("planar2")
    with pytest.raises(IKMDNError):
        arm.fk(bad)
    with pytest.raises(IKMDNError):
        arm.jacobian(bad)


def test_closed_form_rejects_bad_targets():
    with pytest.raises(IKMDNError):
        closed_form_ik(get_arm("planar3"), np.zeros((2, 2)))
    with pytest.raises(IKMDNError):
        closed_form_ik(get_arm("planar2"), [[np.nan, 0.0]])
