"""Serial chains from Denavit-Hartenberg tables, and the DH presets rrr3, ur5 and panda.

Row i of a table is (a_i, d_i, alpha_i, theta_i), lengths in metres, angles in radians; theta_i
is the joint's constant offset (q_i adds to it for a revolute joint; for a prismatic joint q_i adds
to d_i). The two conventions:

- standard (Denavit-Hartenberg; Universal Robots): A_i = Rotz(theta_i) Transz(d_i) Transx(a_i)
  Rotx(alpha_i), hand pose A_1 ... A_n.
- modified (Craig; Franka): A_i = Rotx(alpha_i) Transx(a_i) Rotz(theta_i) Transz(d_i), where
  alpha_i and a_i of row i are those of the link before joint i (Craig's alpha_{i-1}, a_{i-1}).

A `flange` row (a, d, alpha, theta) in the same convention adds a fixed transform after the last
joint (Franka's "flange" row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ikmdn.arms.base import register_preset
from ikmdn.arms.serial import DEFAULT_ROTATION_WEIGHT, Joint, SerialArm
from ikmdn.errors import IKMDNError

PI = math.pi


def _rot_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def _rot_x(alpha: float) -> np.ndarray:
    c, s = math.cos(alpha), math.sin(alpha)
    return np.array([[1.0, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]])


def _trans(x: float, y: float, z: float) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = x, y, z
    return out


def dh_transform(a: float, d: float, alpha: float, theta: float, modified: bool = False) -> np.ndarray:
    """The (4, 4) transform of one DH row in the standard or the modified (Craig) convention."""
    if modified:
        return _rot_x(alpha) @ _trans(a, 0, 0) @ _rot_z(theta) @ _trans(0, 0, d)
    return _rot_z(theta) @ _trans(0, 0, d) @ _trans(a, 0, 0) @ _rot_x(alpha)


def dh_chain(a: Sequence[float], d: Sequence[float], alpha: Sequence[float],
             theta: Sequence[float] | None = None, modified: bool = False,
             prismatic: Sequence[bool] | None = None,
             flange: Sequence[float] | None = None) -> tuple[list[Joint], np.ndarray]:
    """(joints, tip (4, 4)) of the chain described by a DH table (see the module docstring).

    prismatic: per joint, True where q slides along z (default: all revolute).
    """
    n = len(a)
    theta = [0.0] * n if theta is None else list(theta)
    prismatic = [False] * n if prismatic is None else list(prismatic)
    if not n or any(len(col) != n for col in (d, alpha, theta, prismatic)):
        raise IKMDNError(f"a DH table needs equal-length columns a, d, alpha (and theta, prismatic), got "
                         f"{len(a)}, {len(d)}, {len(alpha)}, {len(theta)}, {len(prismatic)}")
    rows = [dh_transform(a[i], d[i], alpha[i], theta[i], modified) for i in range(n)]
    end = np.eye(4) if flange is None else dh_transform(*flange, modified=modified)
    if modified:   # A_i = (fixed row) Rotz(q_i): the row is the joint's origin
        origins, tip = rows, end
    else:          # A_i = Rotz(q_i) (fixed row): the row belongs before the next joint
        origins, tip = [np.eye(4)] + rows[:-1], rows[-1] @ end
    types = ["prismatic" if p else "revolute" for p in prismatic]
    return [Joint.make(t, o) for t, o in zip(types, origins, strict=True)], tip


def dh_arm(name: str, a: Sequence[float], d: Sequence[float], alpha: Sequence[float],
           joint_limits: Any, theta: Sequence[float] | None = None, modified: bool = False,
           prismatic: Sequence[bool] | None = None, flange: Sequence[float] | None = None,
           target: str = "pose", rotation_weight: float = DEFAULT_ROTATION_WEIGHT,
           joint_names: Sequence[str] | None = None, base_frame: str | None = None,
           tip_frame: str | None = None) -> SerialArm:
    """A SerialArm from a DH table (standard, or modified with modified=True); see `dh_chain`."""
    joints, tip = dh_chain(a, d, alpha, theta, modified, prismatic, flange)
    return SerialArm(name, joints, joint_limits, tip=tip, target=target,
                     rotation_weight=rotation_weight, joint_names=joint_names,
                     base_frame=base_frame, tip_frame=tip_frame)


# -- presets -------------------------------------------------------------------------------------
def rrr3() -> SerialArm:
    """Anthropomorphic 3-joint arm: waist about the vertical, shoulder and elbow about horizontal
    axes; position targets; up to 4 branches (shoulder left/right x elbow up/down)."""
    return dh_arm("rrr3", a=[0.0, 0.4, 0.35], d=[0.3, 0.0, 0.0], alpha=[PI / 2, 0.0, 0.0],
                  joint_limits=[[-PI, PI]] * 3, target="position",
                  joint_names=["waist", "shoulder", "elbow"], base_frame="base", tip_frame="wrist")


def ur5() -> SerialArm:
    """Universal Robots UR5 (CB3), standard DH table as published by Universal Robots; pose targets.

    Frames: UR's `base` (Rz(180 deg) from ur_description's `base_link`) -> `tool0`, the DH frame
    6 (the flange, z out of it). The real joint limits are +-2 pi; this preset trains over
    [-pi, pi], which loses nothing: every joint is a full turn, so each solution has 2 pi twins
    (`Arm.joint_turns` lists them). Up to 8 IK branches.
    """
    return dh_arm("ur5", a=[0.0, -0.425, -0.39225, 0.0, 0.0, 0.0],
                  d=[0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823],
                  alpha=[PI / 2, 0.0, 0.0, PI / 2, -PI / 2, 0.0], joint_limits=[[-PI, PI]] * 6,
                  joint_names=["shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2",
                               "wrist_3"], base_frame="base", tip_frame="tool0")


def panda() -> SerialArm:
    """Franka Emika Panda, Franka's modified-DH table with the flange (d = 0.107 m, no hand),
    and Franka's published joint limits; pose targets, 7 joints (a continuum of solutions).

    Frames: `panda_link0` -> `panda_link8` (the flange). The hand's TCP (`panda_hand_tcp`, between
    the fingertips) is 0.1034 m further along z and turned -45 deg about z: train on the URDF with
    `--tip panda_hand_tcp`, or add `--tool 0 0 0.1034 0.9238795 0 0 -0.3826834` to the flange."""
    return dh_arm("panda", a=[0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088],
                  d=[0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0],
                  alpha=[0.0, -PI / 2, PI / 2, PI / 2, -PI / 2, PI / 2, PI / 2],
                  modified=True, flange=(0.0, 0.107, 0.0, 0.0),
                  joint_limits=[[-2.8973, 2.8973], [-1.7628, 1.7628], [-2.8973, 2.8973],
                                [-3.0718, -0.0698], [-2.8973, 2.8973], [-0.0175, 3.7525],
                                [-2.8973, 2.8973]],
                  joint_names=[f"panda_joint{i}" for i in range(1, 8)],
                  base_frame="panda_link0", tip_frame="panda_link8")


def iiwa14() -> SerialArm:
    """KUKA LBR iiwa 14 R820, standard DH table from KUKA's published dimensions (d = 0.36, 0.42,
    0.40 m between the joint pairs, 0.126 m to the media flange) and limits (+-170, +-120, +-170,
    +-120, +-170, +-120, +-175 deg); pose targets, 7 joints (a continuum of solutions).

    Frames: `iiwa_link_0` -> `iiwa_link_ee_kuka` (the media flange, KUKA's flange frame) of the
    iiwa14 description in Drake / iiwa_stack (equal to its FK to 1e-15; its `iiwa_link_ee` is the
    same point, turned -90 deg about y)."""
    deg = PI / 180
    return dh_arm("iiwa14", a=[0.0] * 7, d=[0.36, 0.0, 0.42, 0.0, 0.4, 0.0, 0.126],
                  alpha=[-PI / 2, PI / 2, PI / 2, -PI / 2, -PI / 2, PI / 2, 0.0],
                  joint_limits=[[-170 * deg, 170 * deg], [-120 * deg, 120 * deg]] * 3
                  + [[-175 * deg, 175 * deg]],
                  joint_names=[f"iiwa_joint_{i}" for i in range(1, 8)],
                  base_frame="iiwa_link_0", tip_frame="iiwa_link_ee_kuka")


register_preset("rrr3", rrr3)
register_preset("iiwa14", iiwa14)
register_preset("ur5", ur5)
register_preset("panda", panda)
