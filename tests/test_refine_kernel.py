"""The compiled refinement kernel (ikmdn.kernels) behind ikmdn.refine.refine.

Its kinematics are pinned to the arms' numpy kinematics candidate by candidate on every arm family;
its LM rules are checked against closed-form solutions, one hand-computed step, and the limit,
stall and iteration rules; the compiled code against its own Python source (.py_func); and the
on-disk cache against a second process.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ikmdn import kernels
from ikmdn.arms import get_arm, load_urdf, wrap_angle
from ikmdn.arms.closed_form import closed_form_ik
from ikmdn.arms.rotations import exp_map, matrix_to_6d, sixd_to_matrix
from ikmdn.errors import IKMDNError
from ikmdn.refine import RefineSettings, default_settings, refine

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parent.parent


def _arm(name: str):
    if name == "small_chain":  # revolute, prismatic and continuous joints, pose targets
        return load_urdf(DATA / "small_chain.urdf", "tool")
    if name == "small_chain_position":
        return load_urdf(DATA / "small_chain.urdf", "tool", target="position")
    if name == "ur5_ros":  # +-2 pi joints
        return load_urdf(DATA / "ur5_ros.urdf", "tool0")
    return get_arm(name)


FAMILIES = ["bishop", "planar2", "planar3", "rrr3", "ur5", "panda", "iiwa14", "small_chain",
            "small_chain_position", "ur5_ros"]


def _wide_joints(arm, n: int, rng: np.random.Generator) -> np.ndarray:
    """Joints (n, dof) within and up to a turn beyond the limits."""
    lo, hi = arm.joint_limits.T
    return lo - 3.0 + (hi - lo + 6.0) * rng.random((n, arm.dof))


# -- (a) kinematics parity, candidate by candidate ----------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_kernel_kinematics_match_numpy(name):
    arm = _arm(name)
    kin, _ = kernels.arm_data(arm)
    q = _wide_joints(arm, 60, np.random.default_rng(1))
    reached, jac = arm.kinematics_t(q.T, True)
    for i in range(len(q)):
        got_reached, got_jac = kernels.kinematics_one(kin, q[i].copy(), arm.target_dim)
        np.testing.assert_allclose(got_reached, reached[:, i], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got_jac, jac[:, :, i], rtol=0, atol=1e-12)


def _pose_targets_around(arm, reached: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pose targets whose rotations differ from reached (N, 9) by angles from 0 to pi (the log
    map's hard cases: 0, tiny, pi/2, just below pi, pi), positions moved a little."""
    angles = np.array([0.0, 1e-9, 1e-5, 0.3, math.pi / 2, math.pi / 2 + 1e-3, 2.5, math.pi - 1e-6,
                       math.pi - 1e-9, math.pi])
    angles = np.resize(angles, len(reached))
    axes = rng.normal(size=(len(reached), 3))
    axes[::4] = [0.0, 0.0, 1.0]  # axis-aligned too: the symmetric part's diagonal ties
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    rot = sixd_to_matrix(reached[:, 3:]) @ exp_map(axes * angles[:, None])
    position = reached[:, :3] + rng.normal(0.0, 0.1, (len(reached), 3))
    return np.concatenate([position, matrix_to_6d(rot)], axis=1)


@pytest.mark.parametrize("name", FAMILIES)
def test_kernel_residual_matches_numpy(name):
    arm = _arm(name)
    kin, _ = kernels.arm_data(arm)
    rng = np.random.default_rng(2)
    reached = arm.fk(_wide_joints(arm, 60, rng))
    if arm.pose_targets:
        x = _pose_targets_around(arm, reached, rng)
    else:
        x = arm.fk(_wide_joints(arm, 60, rng))
        if arm.angular_targets.any():  # hand angles around the wrap point too
            x[:10, 2] = reached[:10, 2] + np.array([-1, 1, -1, 1, 0, 0, 3, -3, 6, -6]) * math.pi
    expected = arm.residual(reached, x)
    for i in range(len(x)):
        got = kernels.residual_one(kin, reached[i].copy(), x[i].copy())
        np.testing.assert_allclose(got, expected[i], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_kernel_projection_matches_arm(name):
    arm = _arm(name)
    _, limits = kernels.arm_data(arm)
    q = _wide_joints(arm, 200, np.random.default_rng(3))
    q[:20] = arm.joint_limits[:, 0] - 2 * math.pi * np.arange(20)[:, None] % 3  # exact turns
    expected = arm.project_to_limits(q)
    for i in range(len(q)):
        np.testing.assert_array_equal(kernels.project_one(limits, q[i].copy()), expected[i])


@pytest.mark.parametrize("dof", range(1, 8))
@pytest.mark.parametrize("rows", [1, 2, 3, 6])
def test_damped_step_solves_normal_equations(dof, rows):
    rng = np.random.default_rng(100 * dof + rows)
    for _ in range(6):
        jac, r, lam = rng.normal(size=(rows, dof)), rng.normal(size=rows), rng.uniform(1e-2, 1.0)
        dq = np.empty(dof)
        kernels.damped_step(jac, r, lam, dq, np.zeros((dof, dof)))
        expected = np.linalg.solve(jac.T @ jac + lam * np.eye(dof), -jac.T @ r)
        np.testing.assert_allclose(dq, expected, rtol=1e-9, atol=1e-12)


def test_damped_step_tiny_damping_is_gauss_newton():
    rng = np.random.default_rng(7)
    for _ in range(4):
        jac, r = rng.normal(size=(3, 3)), rng.normal(size=3)
        dq = np.empty(3)
        kernels.damped_step(jac, r, 1e-14, dq, np.zeros((3, 3)))
        np.testing.assert_allclose(dq, np.linalg.solve(jac, -r), rtol=1e-6)


# -- (b) convergence to closed-form solutions ---------------------------------------------------

@pytest.mark.parametrize("name", ["bishop", "planar2", "planar3", "ur5"])
def test_refine_converges_to_closed_form_solutions(name):
    arm = get_arm(name)
    rng = np.random.default_rng(4)
    x = arm.fk(arm.sample_joints(300, rng))
    branches, valid = closed_form_ik(arm, x)
    exact = branches[valid]                                   # (S, dof) in-limit solutions
    targets = np.repeat(x, valid.sum(axis=1), axis=0)
    seeds = exact + rng.normal(0.0, 0.01, exact.shape)
    q, reached, error = refine(arm, seeds, targets, default_settings(arm))
    assert len(exact) >= 300
    np.testing.assert_allclose(reached, arm.fk(q), rtol=0, atol=1e-12)
    assert np.mean(error <= 1e-9) >= 0.99
    # The default tol (1e-9 in target units) leaves joints up to ~1e-8 off on short links: with
    # a tighter tol the same iteration lands on the closed-form joints within 1e-9.
    settings = replace(default_settings(arm), tol=1e-13, max_iter=100)
    q, _, error = refine(arm, seeds, targets, settings)
    solved = error <= 1e-9
    assert solved.mean() >= 0.99
    gap = np.abs(wrap_angle(q - exact)).max(axis=1)
    assert np.mean(gap[solved] <= 1e-9) >= 0.99, np.sort(gap)[-10:]


# -- (c) the rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_one_iteration_is_the_documented_step(name):
    """max_iter=1: project q0; zero the pushing-out columns at a limit; solve the damped normal
    equations; keep project(q + dq) only if the error drops. Computed here with numpy."""
    arm = _arm(name)
    rng = np.random.default_rng(5)
    q_true = arm.sample_joints(40, rng)
    x = arm.fk(q_true)
    q0 = q_true + rng.normal(0.0, 0.2, q_true.shape)
    q0[::5] = arm.joint_limits[:, 1]  # some start at a limit
    q0 = arm.project_to_limits(q0)
    settings = RefineSettings(max_iter=1, damping=1e-3)
    q, _, error = refine(arm, q0, x, settings)
    lo, hi = arm.joint_limits.T
    frozen = 0
    for i in range(len(x)):
        reached, jac = (a[..., 0] for a in arm.kinematics_t(q0[i][:, None], True))
        r = arm.residual(reached, x[i])
        grad = jac.T @ r
        pinned = ~arm.continuous_joints & (((q0[i] <= lo) & (grad > 0)) | ((q0[i] >= hi) & (grad < 0)))
        jac[:, pinned] = 0.0
        frozen += pinned.sum()
        dq = np.linalg.solve(jac.T @ jac + 1e-3 * np.eye(arm.dof), -jac.T @ r)
        trial = arm.project_to_limits(q0[i] + dq)
        err0, err1 = np.linalg.norm(r), np.linalg.norm(arm.residual(arm.fk(trial)[0], x[i]))
        expected = trial if err1 < err0 else q0[i]
        np.testing.assert_allclose(q[i], expected, rtol=0, atol=1e-9)
        assert error[i] == pytest.approx(min(err0, err1), rel=1e-9, abs=1e-12)
    assert frozen > 0 or arm.continuous_joints.all()  # the freezing rule was exercised


def test_joint_pushed_against_its_limit_stays_there():
    """A target reachable only with the slider (limit 0.2 m) at 0.3 m: it stays at 0.2 exactly,
    and the other joints still get as close as they can."""
    arm = load_urdf(DATA / "small_chain.urdf", "tool", target="position")
    beyond = np.array([[0.4, 0.3, 0.5]])
    q, _, error = refine(arm, np.array([[0.3, 0.15, 0.3]]), arm.fk(beyond))
    assert q[0, 1] == 0.2
    assert arm.within_limits(q).all()
    assert error[0] > 1e-3
    # Against the lower limit too (bishop: joint 1 limit 0.3 rad).
    bishop = get_arm("bishop")
    q, _, error = refine(bishop, np.array([[0.4, math.pi]]), bishop.fk([[0.1, math.pi]]))
    assert q[0, 0] == 0.3 and error[0] > 1e-3


@pytest.mark.parametrize("name", ["bishop", "planar2", "planar3", "rrr3", "ur5", "small_chain"])
def test_unreachable_targets_stop_early_without_nan(name):
    arm = _arm(name)
    rng = np.random.default_rng(6)
    x = arm.fk(arm.sample_joints(50, rng))
    x[:, 0] += 50.0  # far outside the workspace
    q0 = arm.sample_joints(50, rng)
    q, reached, error = refine(arm, q0, x, RefineSettings(max_iter=1000))
    assert np.all(np.isfinite(q)) and np.all(np.isfinite(reached)) and np.all(np.isfinite(error))
    assert np.all(error > 1e-3)
    # Stopped by the stall or damping rule, not the cap: a larger cap changes nothing.
    again = refine(arm, q0, x, RefineSettings(max_iter=100_000))
    for a, b in zip((q, reached, error), again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_max_iter_is_respected():
    arm = get_arm("ur5")
    rng = np.random.default_rng(7)
    q_true = arm.sample_joints(100, rng)
    x = arm.fk(q_true)
    q0 = q_true + rng.normal(0.0, 0.5, q_true.shape)
    q, _, error = refine(arm, q0, x, RefineSettings(max_iter=0))
    np.testing.assert_array_equal(q, arm.project_to_limits(q0))
    previous = error
    for cap in (1, 2, 3, 5):
        _, _, error = refine(arm, q0, x, RefineSettings(max_iter=cap))
        assert np.all(error <= previous)   # never worse with more iterations
        previous = error
    assert np.mean(previous > 1e-9) > 0.5  # five iterations do not solve most of these


@pytest.mark.parametrize("name", FAMILIES)
def test_results_are_within_limits_and_consistent(name):
    arm = _arm(name)
    rng = np.random.default_rng(8)
    q0 = _wide_joints(arm, 200, rng)
    x = arm.fk(arm.sample_joints(200, rng))
    q, reached, error = refine(arm, q0, x, default_settings(arm))
    assert arm.within_limits(q, atol=0.0).all()
    np.testing.assert_allclose(reached, arm.fk(q), rtol=0, atol=1e-12)
    np.testing.assert_allclose(error, np.linalg.norm(arm.residual(reached, x), axis=1),
                               rtol=1e-12, atol=1e-15)
    start = np.linalg.norm(arm.residual(arm.fk(arm.project_to_limits(q0)), x), axis=1)
    assert np.all(error <= start)


def test_solved_candidates_are_not_moved():
    arm = get_arm("panda")
    q_true = arm.sample_joints(20, np.random.default_rng(9))
    q, _, error = refine(arm, q_true, arm.fk(q_true))
    np.testing.assert_array_equal(q, q_true)
    assert np.all(error <= 1e-12)


@pytest.mark.parametrize("name", ["bishop", "ur5"])
def test_empty_batch(name):
    arm = get_arm(name)
    q, reached, error = refine(arm, np.zeros((0, arm.dof)), np.zeros((0, arm.target_dim)))
    assert q.shape == (0, arm.dof) and reached.shape == (0, arm.target_dim) and error.shape == (0,)


def test_inputs_of_any_layout_and_bad_shapes():
    arm = get_arm("planar3")
    rng = np.random.default_rng(10)
    q0 = np.asfortranarray(arm.sample_joints(8, rng))
    x = arm.fk(arm.sample_joints(8, rng))
    x.setflags(write=False)
    expected = refine(arm, np.ascontiguousarray(q0), x.copy())
    for a, b in zip(refine(arm, q0, x), expected, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(IKMDNError, match=r"joints \(M, 3\) and targets \(M, 3\)"):
        refine(arm, q0[:, :2], x)
    with pytest.raises(IKMDNError, match="targets"):
        refine(arm, q0, x[:5])


# -- (d) one source: the compiled kernel equals its Python source -----------------------------------

@pytest.mark.parametrize("name", ["bishop", "planar3", "ur5", "small_chain"])
def test_compiled_kernel_equals_its_python_source(name):
    arm = _arm(name)
    rng = np.random.default_rng(11)
    q_true = arm.sample_joints(4, rng)
    q0 = q_true + rng.normal(0.0, 0.3, q_true.shape)
    x = arm.fk(q_true)
    kin, limits = kernels.arm_data(arm)
    args = (kin, limits, default_settings(arm).kernel_args(), q0, x)
    compiled = kernels.refine_kernel(*args)
    with np.errstate(all="ignore"):
        python = kernels.refine_kernel.py_func(*args)
    for a, b in zip(compiled, python, strict=True):
        np.testing.assert_array_equal(a, b)


def test_compiled_kernel_equals_the_interpreted_module(tmp_path):
    """With NUMBA_DISABLE_JIT the whole module (helpers included) runs as plain Python: the same
    numbers, bit for bit, as the compiled kernel."""
    arms = {"planar3": get_arm("planar3"), "ur5": get_arm("ur5"),
            "small_chain": _arm("small_chain")}
    rng = np.random.default_rng(12)
    cases = {}
    for name, arm in arms.items():
        q_true = arm.sample_joints(3, rng)
        cases[name] = (q_true + rng.normal(0.0, 0.3, q_true.shape), arm.fk(q_true))
        np.save(tmp_path / f"{name}_q0.npy", cases[name][0])
        np.save(tmp_path / f"{name}_x.npy", cases[name][1])
    code = f"""
import numpy as np, warnings
from pathlib import Path
from ikmdn.arms import get_arm, load_urdf
from ikmdn.refine import default_settings, refine
warnings.simplefilter("ignore")
arms = {{"planar3": get_arm("planar3"), "ur5": get_arm("ur5"),
        "small_chain": load_urdf({str(DATA / "small_chain.urdf")!r}, "tool")}}
out = Path({str(tmp_path)!r})
for name, arm in arms.items():
    q, reached, err = refine(arm, np.load(out / f"{{name}}_q0.npy"), np.load(out / f"{{name}}_x.npy"),
                             default_settings(arm))
    np.savez(out / f"{{name}}_py.npz", q=q, reached=reached, err=err)
"""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=300)
    for name, arm in arms.items():
        python = np.load(tmp_path / f"{name}_py.npz")
        compiled = refine(arm, *cases[name], default_settings(arm))
        for key, value in zip(("q", "reached", "err"), compiled, strict=True):
            np.testing.assert_array_equal(value, python[key])


def test_compiled_kernel_is_cached_across_processes():
    """A second process loads the machine code this one compiled (no compile on every CLI call)."""
    arm = get_arm("planar2")
    refine(arm, np.zeros((1, 2)), np.ones((1, 2)))  # compiled (or loaded) and cached here
    code = ("import numpy as np\nfrom ikmdn import kernels\nfrom ikmdn.arms import get_arm\n"
            "from ikmdn.refine import refine\n"
            "refine(get_arm('planar2'), np.zeros((1, 2)), np.ones((1, 2)))\n"
            "print(sum(kernels.refine_into.stats.cache_misses.values()),"
            " sum(kernels.refine_into.stats.cache_hits.values()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    misses, hits = map(int, out.stdout.split())
    assert (misses, hits) == (0, 1)


def test_arms_without_kernel_data_are_refused():
    class Other:
        name = "other"

    with pytest.raises(IKMDNError, match="kernel_data"):
        kernels.arm_data(Other())
