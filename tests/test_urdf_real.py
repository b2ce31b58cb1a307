"""Published robot descriptions (tests/data/panda.urdf, iiwa14.urdf, ur5_ros.urdf) against an
independent forward-kinematics oracle.

The oracle below walks the URDF tree itself (xml.etree, scipy rotations), sharing no code with
ikmdn: each joint is its <origin> (translation xyz, rotation rpy = extrinsic x-y-z Euler angles)
followed by its motion (revolute/continuous: a rotation by q about <axis>; prismatic: a
translation by q along <axis>; fixed: none; a <mimic> joint follows its master). The pose of a
link in the frame of another is inv(T_root_base) T_root_tip, so any two links of the tree work.
Where the vendored files come from, and their licences, is written at the top of each file.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from urdf_oracle import Urdf

from ikmdn.arms import get_arm, load_urdf
from ikmdn.errors import IKMDNError

DATA = Path(__file__).resolve().parent / "data"
PANDA = DATA / "panda.urdf"
IIWA = DATA / "iiwa14.urdf"
UR5 = DATA / "ur5_ros.urdf"
N = 50
ATOL = 1e-12


def _sample(limits: np.ndarray, seed: int, n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    limits = np.asarray(limits, dtype=np.float64)
    return rng.uniform(limits[:, 0], limits[:, 1], size=(n, len(limits)))


def _rz(angle: float) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("z", angle).as_matrix()
    return t


# -- the files themselves ---------------------------------------------------------------------
PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
IIWA_JOINTS = [f"iiwa_joint_{i}" for i in range(1, 8)]
UR5_JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint",
              "wrist_2_joint", "wrist_3_joint"]

# (file, tip, base_link or None, dof, joint names)
CHAINS = [
    (PANDA, "panda_link8", None, 7, PANDA_JOINTS),
    (PANDA, "panda_hand", None, 7, PANDA_JOINTS),
    (PANDA, "panda_hand_tcp", None, 7, PANDA_JOINTS),
    (PANDA, "panda_link8", "panda_link0", 7, PANDA_JOINTS),
    (PANDA, "panda_link7", "panda_link2", 5, PANDA_JOINTS[2:]),
    (IIWA, "iiwa_link_7", None, 7, IIWA_JOINTS),
    (IIWA, "iiwa_link_ee", None, 7, IIWA_JOINTS),
    (IIWA, "iiwa_link_ee_kuka", None, 7, IIWA_JOINTS),
    (IIWA, "iiwa_link_ee", "iiwa_link_0", 7, IIWA_JOINTS),
    (UR5, "tool0", None, 6, UR5_JOINTS),
    (UR5, "flange", None, 6, UR5_JOINTS),
    (UR5, "wrist_3_link", "base_link_inertia", 6, UR5_JOINTS),
]
IDS = [f"{path.stem}:{base or 'root'}->{tip}" for path, tip, base, _, _ in CHAINS]


def test_vendored_files_are_the_published_robots():
    """A few facts of the published descriptions, so a swapped file is noticed."""
    panda, iiwa, ur5 = Urdf(PANDA), Urdf(IIWA), Urdf(UR5)
    assert {"panda_link0", "panda_link8", "panda_hand", "panda_hand_tcp", "panda_leftfinger",
            "panda_rightfinger"} <= set(panda.links)
    finger1, finger2 = panda.by_name["panda_finger_joint1"], panda.by_name["panda_finger_joint2"]
    assert finger1["type"] == finger2["type"] == "prismatic"
    assert finger2["mimic"] == ("panda_finger_joint1", 1.0, 0.0)
    assert panda.by_name["panda_joint8"]["origin"][2, 3] == 0.107
    assert [iiwa.by_name[n]["limits"][1] for n in IIWA_JOINTS] == pytest.approx(
        np.radians([170, 120, 170, 120, 170, 120, 175]), abs=1e-10)
    base = ur5.by_name["base_link-base_fixed_joint"]
    assert base["parent"] == "base_link" and ur5.joints["base"] is base
    assert np.allclose(base["origin"], _rz(math.pi), atol=1e-15)
    assert {"base_link", "base_link_inertia", "shoulder_link", "flange", "tool0"} <= set(ur5.links)
    np.testing.assert_allclose([ur5.by_name[n]["limits"] for n in UR5_JOINTS],
                               [(-2 * math.pi, 2 * math.pi)] * 2 + [(-math.pi, math.pi)]
                               + [(-2 * math.pi, 2 * math.pi)] * 3, rtol=0, atol=1e-15)


@pytest.mark.parametrize("path, tip, base, dof, names", CHAINS, ids=IDS)
def test_chain_dof_names_and_limits(path, tip, base, dof, names):
    urdf = Urdf(path)
    arm = load_urdf(path, tip, base_link=base)
    assert arm.dof == dof
    assert list(arm.joint_names) == names == urdf.moving(tip, base)
    expected = np.array([urdf.by_name[n]["limits"] for n in names])
    np.testing.assert_array_equal(arm.joint_limits, expected)


@pytest.mark.parametrize("path, tip, base, dof, names", CHAINS, ids=IDS)
def test_poses_match_the_oracle(path, tip, base, dof, names):
    arm = load_urdf(path, tip, base_link=base)
    q = _sample(arm.joint_limits, seed=zlib.crc32(f"{path.name} {tip} {base}".encode()))
    got = arm.poses(q)
    assert got.shape == (N, 4, 4)
    np.testing.assert_allclose(got, Urdf(path).poses(tip, list(arm.joint_names), q, base), rtol=0, atol=ATOL)


def test_poses_at_zero_match_the_oracle():
    """All joints at 0 (inside the limits or not) for every chain."""
    for path, tip, base, dof, _ in CHAINS:
        arm = load_urdf(path, tip, base_link=base)
        q = np.zeros((1, dof))
        np.testing.assert_allclose(arm.poses(q), Urdf(path).poses(tip, list(arm.joint_names), q, base),
                                   rtol=0, atol=ATOL, err_msg=f"{path.name} {base} -> {tip}")


def test_panda_oracle_agrees_with_franka_published_flange_pose():
    """Oracle sanity check independent of ikmdn: at q = 0 the Panda flange (panda_link8) sits at
    x = a4 - a5 + a7 = 0.088 m, z = 0.333 + 0.316 + 0.384 - 0.107 = 0.926 m, pointing down."""
    t = Urdf(PANDA).link_pose("panda_link8", {})
    np.testing.assert_allclose(t[:3, 3], [0.088, 0.0, 0.926], atol=1e-12)
    np.testing.assert_allclose(t[:3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-12)


# -- depend on load_urdf features being added (base frames off the chain, lock, tool) -----------
def test_ur5_ros_from_base_matches_the_dh_preset():
    """UR's DH frame 0 is the ROS-Industrial `base` frame and DH frame 6 is `tool0`; `base` hangs
    off base_link by a fixed joint (rpy 0 0 pi), so it is not an ancestor of tool0."""
    arm = load_urdf(UR5, "tool0", base_link="base")
    preset = get_arm("ur5")
    assert arm.base_frame == "base"
    assert arm.tip_frame == "tool0"
    assert list(arm.joint_names) == UR5_JOINTS
    lo = np.maximum(arm.joint_limits[:, 0], preset.joint_limits[:, 0])
    hi = np.minimum(arm.joint_limits[:, 1], preset.joint_limits[:, 1])
    q = _sample(np.stack([lo, hi], axis=1), seed=5)
    got = arm.poses(q)
    np.testing.assert_allclose(got, Urdf(UR5).poses("tool0", UR5_JOINTS, q, base="base"), rtol=0, atol=ATOL)
    np.testing.assert_allclose(got, preset.poses(q), rtol=0, atol=1e-9)


def test_panda_flange_matches_the_preset():
    arm = load_urdf(PANDA, "panda_link8")
    preset = get_arm("panda")
    q = _sample(preset.joint_limits, seed=8)
    np.testing.assert_allclose(arm.poses(q), preset.poses(q), rtol=0, atol=1e-9)


def test_panda_finger_on_the_chain_needs_lock():
    with pytest.raises(IKMDNError, match="--lock"):
        load_urdf(PANDA, "panda_leftfinger")


def test_panda_finger_locked():
    arm = load_urdf(PANDA, "panda_leftfinger", lock={"panda_finger_joint1": 0.02})
    assert arm.dof == 7
    assert list(arm.joint_names) == PANDA_JOINTS
    q = _sample(arm.joint_limits, seed=11)
    expected = Urdf(PANDA).poses("panda_leftfinger", PANDA_JOINTS, q, extra={"panda_finger_joint1": 0.02})
    np.testing.assert_allclose(arm.poses(q), expected, rtol=0, atol=ATOL)


def test_panda_tool_transform():
    tool = _rz(-math.pi / 4)
    tool[:3, 3] = [0.0, 0.0, 0.1034]
    arm = load_urdf(PANDA, "panda_link8", tool=tool)
    q = _sample(arm.joint_limits, seed=13)
    got = arm.poses(q)
    expected = Urdf(PANDA).poses("panda_link8", PANDA_JOINTS, q) @ tool
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    assert "panda_hand_tcp" in Urdf(PANDA).links
    np.testing.assert_allclose(got, load_urdf(PANDA, "panda_hand_tcp").poses(q), rtol=0, atol=ATOL)
