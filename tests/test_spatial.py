"""Spatial arms against independent oracles: hand-multiplied DH matrices, URDF files written here,
scipy's rotations, finite differences, torch autograd, and (for the closed-form oracles) the
forward kinematics itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ikmdn.arms import (
    SerialArm,
    arm_from_spec,
    dh_arm,
    get_arm,
    list_arms,
    load_urdf,
    parse_urdf,
    pose_targets,
    poses_to_targets,
    targets_to_poses,
    wrap_angle,
)
from ikmdn.arms import rotations as rot
from ikmdn.arms.closed_form import closed_form_ik, has_closed_form
from ikmdn.arms.serial import Joint
from ikmdn.errors import IKMDNError
from ikmdn.refine import RefineSettings, refine

PI = math.pi
DATA = Path(__file__).parent / "data"
SPATIAL = ("rrr3", "ur5", "panda")

# The presets' tables written out here, independently of ikmdn/arms/dh.py:
# (convention, a, d, alpha, flange d or None, joint limits, target_dim).
TABLES = {
    "rrr3": ("standard", [0, 0.4, 0.35], [0.3, 0, 0], [PI / 2, 0, 0], None, [[-PI, PI]] * 3, 3),
    "ur5": ("standard", [0, -0.425, -0.39225, 0, 0, 0], [0.089159, 0, 0, 0.10915, 0.09465, 0.0823],
            [PI / 2, 0, 0, PI / 2, -PI / 2, 0], None, [[-PI, PI]] * 6, 9),
    "panda": ("modified", [0, 0, 0, 0.0825, -0.0825, 0, 0.088], [0.333, 0, 0.316, 0, 0.384, 0, 0],
              [0, -PI / 2, PI / 2, PI / 2, -PI / 2, PI / 2, PI / 2], 0.107,
              [[-2.8973, 2.8973], [-1.7628, 1.7628], [-2.8973, 2.8973], [-3.0718, -0.0698],
               [-2.8973, 2.8973], [-0.0175, 3.7525], [-2.8973, 2.8973]], 9),
}


def standard_dh(a, d, alpha, theta):
    """Rotz(theta) Transz(d) Transx(a) Rotx(alpha), written out."""
    ct, st, ca, sa = math.cos(theta), math.sin(theta), math.cos(alpha), math.sin(alpha)
    return np.array([[ct, -st * ca, st * sa, a * ct],
                     [st, ct * ca, -ct * sa, a * st],
                     [0, sa, ca, d],
                     [0, 0, 0, 1.0]])


def modified_dh(a, d, alpha, theta):
    """Rotx(alpha) Transx(a) Rotz(theta) Transz(d) (Craig), written out."""
    ct, st, ca, sa = math.cos(theta), math.sin(theta), math.cos(alpha), math.sin(alpha)
    return np.array([[ct, -st, 0, a],
                     [st * ca, ct * ca, -sa, -d * sa],
                     [st * sa, ct * sa, ca, d * ca],
                     [0, 0, 0, 1.0]])


def hand_fk(name, q):
    """Hand poses (N, 4, 4) of a preset, one sample at a time, multiplying DH matrices."""
    convention, a, d, alpha, flange, _, _ = TABLES[name]
    row = standard_dh if convention == "standard" else modified_dh
    out = []
    for sample in np.asarray(q, dtype=float).tolist():
        t = np.eye(4)
        for i, qi in enumerate(sample):
            t = t @ row(a[i], d[i], alpha[i], qi)
        if flange is not None:
            t = t @ row(0.0, flange, 0.0, 0.0)
        out.append(t)
    return np.array(out)


def urdf_origin(xyz, rpy):
    """A URDF <origin> as a 4 x 4, with scipy's extrinsic x-y-z Euler angles."""
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", rpy).as_matrix()
    t[:3, 3] = xyz
    return t


def axis_motion(kind, axis, q):
    """A joint's motion as a 4 x 4: rotation about, or translation along, the unit axis."""
    t = np.eye(4)
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    if kind == "revolute":
        t[:3, :3] = Rotation.from_rotvec(axis * q).as_matrix()
    else:
        t[:3, 3] = axis * q
    return t


def small_chain_fk(q):
    """Hand poses (N, 4, 4) of tests/data/small_chain.urdf, from its numbers copied here."""
    out = []
    for q1, q2, q3 in np.asarray(q).tolist():
        t = urdf_origin([0.1, -0.05, 0.2], [0, 0, 0.5])
        t = t @ urdf_origin([0, 0, 0.3], [0.2, -0.3, 0.1]) @ axis_motion("revolute", [0, 1, 0], q1)
        t = t @ urdf_origin([0.25, 0, 0], [0, 0.4, 0]) @ axis_motion("prismatic", [0.6, 0, 0.8], q2)
        t = t @ urdf_origin([0, 0.05, 0.1], [-0.7, 0, 0.3]) @ axis_motion("revolute", [0, 0, -1], q3)
        out.append(t @ urdf_origin([0.02, 0, 0.08], [0.1, 0.2, 0.3]))
    return np.array(out)


def interior_joints(arm, n, seed, margin=0.1):
    """Joints (n, dof) drawn uniformly at least margin inside the limits."""
    lo, hi = arm.joint_limits.T
    return lo + margin + (hi - lo - 2 * margin) * np.random.default_rng(seed).random((n, arm.dof))


def rotations_of(poses):
    return poses[:, :3, :3]


# -- rotations -------------------------------------------------------------------------------
def scipy_rotations(n, seed):
    return Rotation.random(n, random_state=seed)


def test_quaternions_match_scipy_with_w_first():
    r = scipy_rotations(50, 0)
    xyzw = r.as_quat()
    wxyz = xyzw[:, [3, 0, 1, 2]]
    np.testing.assert_allclose(rot.quat_to_matrix(wxyz), r.as_matrix(), atol=1e-14)
    np.testing.assert_allclose(rot.quat_to_matrix(3.0 * wxyz), r.as_matrix(), atol=1e-14)
    q = rot.matrix_to_quat(r.as_matrix())
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(q, wxyz * np.sign(wxyz[:, :1]), atol=1e-14)
    # Shepperd's method at rotations where one of w, x, y, z dominates or vanishes.
    special = Rotation.from_rotvec([[0, 0, 0], [PI, 0, 0], [0, PI, 0], [0, 0, PI], [1e-9, 0, 0]])
    back = rot.quat_to_matrix(rot.matrix_to_quat(special.as_matrix()))
    np.testing.assert_allclose(back, special.as_matrix(), atol=1e-14)
    with pytest.raises(IKMDNError, match="non-zero"):
        rot.quat_to_matrix([0, 0, 0, 0])


def test_6d_encoding_and_gram_schmidt():
    m = scipy_rotations(50, 1).as_matrix()
    six = rot.matrix_to_6d(m)
    np.testing.assert_array_equal(six, np.concatenate([m[:, :, 0], m[:, :, 1]], axis=1))
    np.testing.assert_allclose(rot.sixd_to_matrix(six), m, atol=1e-14)
    # Gram-Schmidt ignores the first half's length and the second half's part along the first.
    rng = np.random.default_rng(2)
    skewed = np.concatenate([m[:, :, 0] * rng.uniform(0.5, 2, (50, 1)),
                             m[:, :, 1] * rng.uniform(0.5, 2, (50, 1)) + 0.3 * m[:, :, 0]], axis=1)
    np.testing.assert_allclose(rot.sixd_to_matrix(skewed), m, atol=1e-14)


def test_log_and_exp_maps_match_scipy_including_near_0_and_pi():
    r = scipy_rotations(200, 3)
    np.testing.assert_allclose(rot.log_map(r.as_matrix()), r.as_rotvec(), atol=1e-12)
    np.testing.assert_allclose(rot.exp_map(r.as_rotvec()), r.as_matrix(), atol=1e-14)
    axes = Rotation.random(6, random_state=4).apply([1.0, 0, 0])
    for angle in (0.0, 1e-12, 1e-8, 1e-5, 1e-3, PI / 2, PI - 1e-3, PI - 1e-6, PI - 1e-9, PI):
        m = Rotation.from_rotvec(axes * angle).as_matrix()
        w = rot.log_map(m)
        np.testing.assert_allclose(np.linalg.norm(w, axis=1), angle, atol=1e-12)
        np.testing.assert_allclose(rot.exp_map(w), m, atol=1e-12)
        if angle < PI - 1e-6:  # the axis sign is defined until very near pi
            np.testing.assert_allclose(w, axes * angle, atol=1e-12)


def test_rotation_angle_matches_scipy():
    a, b = scipy_rotations(100, 5), scipy_rotations(100, 6)
    expected = (a.inv() * b).magnitude()

    def angle(r1, r2):  # (N, 3, 3) matrices as the component-major (3, 3, N) the function takes
        return rot.rotation_angle_t(np.moveaxis(r1, 0, -1), np.moveaxis(r2, 0, -1))

    np.testing.assert_allclose(angle(a.as_matrix(), b.as_matrix()), expected, atol=1e-12)
    tiny = Rotation.from_rotvec([[1e-10, 0, 0]]).as_matrix()
    np.testing.assert_allclose(angle(np.eye(3)[None], tiny), 1e-10, rtol=1e-6)
    half = Rotation.from_rotvec([[np.pi, 0, 0]]).as_matrix()
    np.testing.assert_allclose(angle(np.eye(3)[None], half), np.pi, atol=1e-12)


# -- presets and forward kinematics -----------------------------------------------------------
@pytest.mark.parametrize("name", SPATIAL)
def test_preset_fk_matches_hand_multiplied_dh(name):
    arm = get_arm(name)
    _, _, _, _, _, limits, target_dim = TABLES[name]
    assert name in list_arms() and isinstance(arm, SerialArm)
    assert arm.target_dim == target_dim and arm.dof == len(limits)
    np.testing.assert_array_equal(arm.joint_limits, limits)
    q = interior_joints(arm, 40, seed=7, margin=0.0)
    poses = arm.poses(q)
    np.testing.assert_allclose(poses, hand_fk(name, q), atol=1e-12)
    x = arm.fk(q)
    np.testing.assert_array_equal(x[:, :3], poses[:, :3, 3])
    if target_dim == 9:
        np.testing.assert_array_equal(x[:, 3:6], poses[:, :3, 0])
        np.testing.assert_array_equal(x[:, 6:9], poses[:, :3, 1])
    np.testing.assert_array_equal(arm.fk(q[3]), x[3:4])  # a single joint vector is promoted


def test_zero_configurations_are_the_published_ones():
    ur5 = get_arm("ur5").poses(np.zeros(6))[0]
    np.testing.assert_allclose(ur5[:3, 3], [-0.425 - 0.39225, -(0.10915 + 0.0823), 0.089159 - 0.09465],
                               atol=1e-15)
    np.testing.assert_allclose(ur5[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-15)
    panda = get_arm("panda").poses(np.zeros(7))[0]
    np.testing.assert_allclose(panda[:3, 3], [0.088, 0, 0.333 + 0.316 + 0.384 - 0.107], atol=1e-15)
    np.testing.assert_allclose(panda[:3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-15)  # flange down
    rrr3 = get_arm("rrr3").fk(np.zeros(3))[0]
    np.testing.assert_allclose(rrr3, [0.75, 0, 0.3], atol=1e-15)


def test_urdf_of_ur5_agrees_with_the_dh_preset():
    urdf = load_urdf(DATA / "ur5.urdf", "tool0")
    dh = get_arm("ur5")
    assert urdf.name == "ur5_dh" and urdf.dof == 6
    assert urdf.joint_names[0] == "shoulder_pan_joint" and urdf.joint_names[-1] == "wrist_3_joint"
    np.testing.assert_array_equal(urdf.joint_limits, [[-2 * PI, 2 * PI]] * 6)
    q = dh.sample_joints(200, np.random.default_rng(8))
    np.testing.assert_allclose(urdf.poses(q), dh.poses(q), atol=1e-12)
    assert has_closed_form(urdf)  # recognised from its chain data, not its name
    position_only = load_urdf(DATA / "ur5.urdf", "wrist_3_link", target="position")
    assert position_only.target_dim == 3 and not has_closed_form(position_only)
    np.testing.assert_allclose(position_only.fk(q), dh.poses(q)[:, :3, 3] - 0.0823 * dh.poses(q)[:, :3, 2],
                               atol=1e-12)


def test_urdf_small_chain_with_fixed_prismatic_and_continuous_joints():
    arm = load_urdf(DATA / "small_chain.urdf", "tool")
    assert arm.joint_names == ("hinge", "slide", "spin")
    assert [j.type for j in arm.joints] == ["revolute", "prismatic", "revolute"]
    np.testing.assert_array_equal(arm.joint_limits, [[-1.5, 1.5], [0.0, 0.2], [-PI, PI]])
    q = arm.sample_joints(30, np.random.default_rng(9))
    np.testing.assert_allclose(arm.poses(q), small_chain_fk(q), atol=1e-12)
    # A chain between two inner links: the base link's own frame is the base.
    inner = load_urdf(DATA / "small_chain.urdf", "slider", base_link="mount")
    expected = urdf_origin([0, 0, 0.3], [0.2, -0.3, 0.1]) @ axis_motion("revolute", [0, 1, 0], 0.4) @ \
        urdf_origin([0.25, 0, 0], [0, 0.4, 0]) @ axis_motion("prismatic", [0.6, 0, 0.8], 0.1)
    np.testing.assert_allclose(inner.poses([0.4, 0.1])[0], expected, atol=1e-12)


@pytest.mark.parametrize("change, message", [
    (("<link name=\"tool\"/>", ""), "no link 'tool'"),
    (("type=\"continuous\"", "type=\"floating\""), "floating"),
    (("<limit lower=\"-1.5\" upper=\"1.5\" effort=\"10\" velocity=\"1\"/>", ""), "needs <limit"),
    (("xyz=\"0.6 0 0.8\"", "xyz=\"0.6 0\""), "must be 3 numbers"),
    (("xyz=\"0.6 0 0.8\"", "xyz=\"0 0 0\""), "non-zero"),
    (("<robot name=\"small_chain\">", "<robot name=\"small_chain\"><bad"), "not a valid URDF"),
])
def test_urdf_errors_name_the_problem(change, message):
    text = (DATA / "small_chain.urdf").read_text().replace(*change)
    with pytest.raises(IKMDNError, match=message):
        parse_urdf(text, "tool")


def test_urdf_base_must_be_fixed_to_the_chain_and_file_must_exist(tmp_path):
    with pytest.raises(IKMDNError, match="moves relative to tip"):
        load_urdf(DATA / "small_chain.urdf", "camera", base_link="tool")
    with pytest.raises(IKMDNError, match="cannot read URDF"):
        load_urdf(tmp_path / "missing.urdf", "tool")


# -- Jacobians ----------------------------------------------------------------------------------
def all_arms():
    return [get_arm(n) for n in SPATIAL] + [load_urdf(DATA / "small_chain.urdf", "tool")]


@pytest.mark.parametrize("arm", all_arms(), ids=lambda a: a.name)
def test_geometric_jacobian_matches_finite_differences(arm):
    q = interior_joints(arm, 8, seed=10, margin=0.01)
    jac = arm.geometric_jacobian(q)
    h = 1e-6
    for j in range(arm.dof):
        step = np.zeros(arm.dof)
        step[j] = h
        plus, minus = arm.poses(q + step), arm.poses(q - step)
        np.testing.assert_allclose(jac[:, :3, j], (plus[:, :3, 3] - minus[:, :3, 3]) / (2 * h), atol=1e-8)
        # Angular velocity in the base frame: log(R(q + h) R(q - h)^T) / (2 h).
        spin = rot.log_map(rotations_of(plus) @ rotations_of(minus).transpose(0, 2, 1)) / (2 * h)
        np.testing.assert_allclose(jac[:, 3:, j], spin, atol=1e-8)


@pytest.mark.parametrize("arm", all_arms() + [load_urdf(DATA / "ur5.urdf", "tool0", rotation_weight=0.7)],
                         ids=lambda a: f"{a.name}-{a.rotation_weight}")
def test_residual_jacobian_is_the_derivative_of_the_residual(arm):
    """kinematics_t's Jacobian against finite differences of residual(fk(q), x): exact at the
    target (first order in the rotation error), as refinement needs."""
    q = interior_joints(arm, 8, seed=11, margin=0.01)
    x = arm.fk(q)
    jac = arm.jacobian(q)
    assert jac.shape == (len(q), arm.residual_dim, arm.dof)
    h = 1e-6
    for j in range(arm.dof):
        step = np.zeros(arm.dof)
        step[j] = h
        fd = (arm.residual(arm.fk(q + step), x) - arm.residual(arm.fk(q - step), x)) / (2 * h)
        np.testing.assert_allclose(jac[:, :, j], fd, atol=1e-8)
    if arm.target == "pose":  # the rotation rows carry rotation_weight; the layouts agree
        np.testing.assert_allclose(jac[:, 3:], arm.rotation_weight * arm.geometric_jacobian(q)[:, 3:])
        near = arm.fk(q + 1e-3)
        np.testing.assert_allclose(arm.residual(near.T, x.T, axis=0).T, arm.residual(near, x))
        kt_x, kt_jac = arm.kinematics_t(q.T.copy(), True)
        np.testing.assert_array_equal(kt_x.T, x)
        np.testing.assert_array_equal(kt_jac.transpose(2, 0, 1), jac)


def test_pose_residual_holds_position_and_weighted_rotation_errors():
    arm = get_arm("ur5")
    q = interior_joints(arm, 5, seed=12)
    poses = arm.poses(q)
    turn = Rotation.from_rotvec([0.0, 0.0, math.radians(10.0)]).as_matrix()
    moved = poses.copy()
    moved[:, :3, :3] = turn @ poses[:, :3, :3]         # turned 10 degrees about the base z axis
    moved[:, :3, 3] += [0.003, 0.0, -0.004]
    reached, target = arm.fk(q), poses_to_targets(moved)
    np.testing.assert_allclose(arm.position_error(reached, target), 0.005, atol=1e-15)
    np.testing.assert_allclose(arm.rotation_error_deg(reached, target), 10.0, atol=1e-10)
    r = arm.residual(reached, target)
    np.testing.assert_allclose(r[:, :3], [[-0.003, 0.0, 0.004]] * 5, atol=1e-15)
    # log(R_reached R_target^T) turns the target back onto the reached rotation: -10 deg about z.
    np.testing.assert_allclose(r[:, 3:], [[0.0, 0.0, -0.1 * math.radians(10.0)]] * 5, atol=1e-14)
    with pytest.raises(IKMDNError, match="position targets"):
        get_arm("rrr3").rotation_error_deg(np.zeros((1, 3)), np.zeros((1, 3)))


# -- torch twin and spec -------------------------------------------------------------------------
@pytest.mark.parametrize("arm", all_arms(), ids=lambda a: a.name)
def test_torch_twin_equals_numpy_and_is_differentiable(arm):
    torch = pytest.importorskip("torch")
    q = interior_joints(arm, 6, seed=13)
    qt = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    out = arm.fk_torch(qt)
    assert out.shape == (6, arm.target_dim) and out.dtype == torch.float64
    np.testing.assert_allclose(out.detach().numpy(), arm.fk(q), atol=1e-13)
    out[:, :3].sum().backward()  # d (x + y + z) / d q is the sum of the translation rows
    np.testing.assert_allclose(qt.grad.numpy(), arm.geometric_jacobian(q)[:, :3].sum(axis=1), atol=1e-12)
    out32 = arm.fk_torch(torch.tensor(q, dtype=torch.float32))
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), arm.fk(q), atol=1e-5)


@pytest.mark.parametrize("arm", all_arms() + [load_urdf(DATA / "ur5.urdf", "tool0", rotation_weight=0.25)],
                         ids=lambda a: a.name)
def test_spec_round_trip_rebuilds_identical_fk(arm):
    spec = json.loads(json.dumps(arm.spec()))
    assert spec["kind"] == "serial" and spec["dof"] == arm.dof and spec["target_dim"] == arm.target_dim
    again = arm_from_spec(spec)
    q = arm.sample_joints(20, np.random.default_rng(14))
    np.testing.assert_array_equal(again.fk(q), arm.fk(q))
    np.testing.assert_array_equal(again.jacobian(q), arm.jacobian(q))
    assert again.rotation_weight == arm.rotation_weight and again.joint_names == arm.joint_names
    assert again.spec() == spec


def test_constructor_errors_name_the_problem():
    joint = Joint.make("revolute", np.eye(4))
    with pytest.raises(IKMDNError, match="target must be one of"):
        SerialArm("x", [joint], [[-1, 1]], target="orientation")
    with pytest.raises(IKMDNError, match="1 joints need 1 joint limits"):
        SerialArm("x", [joint], [[-1, 1], [-1, 1]])
    with pytest.raises(IKMDNError, match="rotation_weight"):
        SerialArm("x", [joint], [[-1, 1]], rotation_weight=0.0)
    with pytest.raises(IKMDNError, match="joint type"):
        Joint.make("ball", np.eye(4))
    with pytest.raises(IKMDNError, match="rigid transform"):
        Joint.make("revolute", np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(IKMDNError, match="equal-length columns"):
        dh_arm("x", a=[0, 1], d=[0], alpha=[0, 0], joint_limits=[[-1, 1]] * 2)


def test_prismatic_dh_joint_slides_along_z():
    arm = dh_arm("slider", a=[0.2, 0.0], d=[0.1, 0.5], alpha=[PI / 2, 0.0], theta=[0.0, 0.3],
                 prismatic=[False, True], joint_limits=[[-PI, PI], [0.0, 0.4]], target="position")
    q = np.array([[0.7, 0.25]])
    expected = standard_dh(0.2, 0.1, PI / 2, 0.7) @ standard_dh(0.0, 0.5 + 0.25, 0.0, 0.3)
    np.testing.assert_allclose(arm.poses(q)[0], expected, atol=1e-15)
    np.testing.assert_allclose(arm.fk(q)[0], expected[:3, 3], atol=1e-15)


# -- pose targets from user input -------------------------------------------------------------------
def test_pose_targets_from_quaternions_matrices_and_poses():
    arm = get_arm("panda")
    q = interior_joints(arm, 10, seed=15)
    poses = arm.poses(q)
    x = arm.fk(q)
    np.testing.assert_allclose(poses_to_targets(poses), x, atol=1e-15)
    wxyz = Rotation.from_matrix(poses[:, :3, :3]).as_quat()[:, [3, 0, 1, 2]]
    np.testing.assert_allclose(pose_targets(poses[:, :3, 3], wxyz), x, atol=1e-14)
    np.testing.assert_allclose(pose_targets(poses[:, :3, 3], poses[:, :3, :3]), x, atol=1e-15)
    np.testing.assert_allclose(targets_to_poses(x), poses, atol=1e-14)
    np.testing.assert_allclose(pose_targets([1, 2, 3], [1, 0, 0, 0]), [[1, 2, 3, 1, 0, 0, 0, 1, 0]])
    with pytest.raises(IKMDNError, match="rotation matrices"):
        pose_targets([0, 0, 0], np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(IKMDNError, match="2 positions but 1 orientations"):
        pose_targets(np.zeros((2, 3)), [1, 0, 0, 0])


# -- closed-form oracles ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, branches", [("rrr3", 4), ("ur5", 8)])
def test_closed_form_branches_reproduce_the_target_and_include_the_sample(name, branches):
    arm = get_arm(name)
    assert has_closed_form(arm) and has_closed_form(arm_from_spec(arm.spec()))
    q = arm.sample_joints(500, np.random.default_rng(16))
    x = arm.fk(q)
    joints, valid = closed_form_ik(arm, x)
    assert joints.shape == (500, branches, arm.dof) and valid.shape == (500, branches)
    assert np.all(np.isnan(joints[~valid])) and not np.any(np.isnan(joints[valid]))
    assert np.all(arm.within_limits(joints[valid]))
    reached = arm.fk(joints[valid])
    target = np.repeat(x[:, None], branches, axis=1)[valid]
    assert arm.position_error(reached, target).max() < 1e-9
    if arm.target == "pose":
        assert np.radians(arm.rotation_error_deg(reached, target)).max() < 1e-9
    gap = np.abs(wrap_angle(joints - q[:, None])).max(axis=-1)
    assert np.all(np.nanmin(np.where(valid, gap, np.inf), axis=1) < 1e-8)
    # Valid branches are distinct solutions, and random poses mostly have all of them.
    for b in range(branches):
        for c in range(b):
            both = valid[:, b] & valid[:, c]
            assert np.all(np.abs(wrap_angle(joints[both, b] - joints[both, c])).max(axis=-1) > 1e-9)
    assert valid.sum(axis=1).mean() > 0.75 * branches


def test_closed_form_out_of_reach_and_unsupported_arms():
    rrr3 = get_arm("rrr3")
    _, valid = closed_form_ik(rrr3, [[2.0, 0.0, 0.3], [0.0, 0.0, 0.3 + 0.75]])
    assert not valid[0].any()      # beyond reach
    assert not valid[1].any()      # on the waist axis: a continuum, not enumerated
    ur5 = get_arm("ur5")
    far = pose_targets([[3.0, 0.0, 0.0]], [[1.0, 0, 0, 0]])
    assert not closed_form_ik(ur5, far)[1].any()
    panda = get_arm("panda")
    assert not has_closed_form(panda)
    with pytest.raises(IKMDNError, match="no closed-form"):
        closed_form_ik(panda, panda.fk(np.zeros(7)))


# -- refinement on poses -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ur5", "panda"])
def test_refine_converges_from_perturbed_solutions(name):
    """Away from singularities (smallest singular value of the Jacobian > 0.05), near which
    LM progress slows and refine's stall rule may stop it early."""
    arm = get_arm(name)
    q = interior_joints(arm, 200, seed=17, margin=0.2)
    q = q[np.linalg.svd(arm.geometric_jacobian(q), compute_uv=False)[:, -1] > 0.05]
    assert len(q) > 100
    x = arm.fk(q)
    start = q + np.random.default_rng(18).normal(0.0, 0.05, q.shape)
    q_out, reached, error = refine(arm, start, x, RefineSettings(tol=1e-9, max_iter=30))
    assert np.all(arm.within_limits(q_out))
    assert arm.position_error(reached, x).max() <= 1e-6
    assert np.radians(arm.rotation_error_deg(reached, x)).max() <= 1e-6
    np.testing.assert_allclose(reached, arm.fk(q_out))
    assert np.all(error <= 1e-9)
