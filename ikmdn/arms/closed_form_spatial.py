"""Closed-form IK of spatial arms: the oracle for tests, benchmarks and coverage reports.

It is never the product's answer (that comes from the MDN); it exists to measure the MDN.
Two families are recognised from the chain data of a SerialArm (so an arm rebuilt from its spec,
or loaded from an equivalent URDF, is recognised too): every joint revolute about z, the first
origin any base transform, the later origins and the tip standard-DH rows (see ikmdn.arms.dh):

- rrr-type (e.g. the rrr3 preset), position targets: alpha = (pi/2, 0, 0), a1 = d2 = d3 = 0;
  4 branches (shoulder front/back x elbow up/down).
- UR-type (e.g. the ur5 preset), pose targets: alpha = (pi/2, 0, 0, pi/2, -pi/2, 0),
  a1 = a4 = a5 = a6 = 0, d2 = d3 = 0; 8 branches (shoulder x wrist x elbow), the standard
  analytic solution (as in K. P. Hawkins, "Analytic inverse kinematics for the Universal Robots
  UR-5/UR-10 arms", 2013), derived afresh here.

Branches at a singularity with a continuum of solutions (the rrr wrist point on the waist axis,
the UR wrist with sin(q5) = 0) are marked invalid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ikmdn.arms.base import TWO_PI, Arm, as_batch, wrap_angle
from ikmdn.arms.dh import dh_transform
from ikmdn.arms.rotations import sixd_to_matrix
from ikmdn.arms.serial import SerialArm
from ikmdn.errors import IKMDNError

_MATCH = 1e-9      # tolerance when recognising a chain's DH structure
_SINGULAR = 1e-10  # |sin| below which a branch is a singular continuum
_SAME = 1e-9       # branches closer than this (rad, modulo 2 pi) are one solution
RRR_ALPHA = (math.pi / 2, 0.0, 0.0)
UR_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)


@dataclass(frozen=True)
class StandardDH:
    """A chain as base (4, 4) times standard-DH rows with columns a, d, alpha, theta (each (n,))."""

    base: np.ndarray
    a: np.ndarray
    d: np.ndarray
    alpha: np.ndarray
    theta: np.ndarray


def _dh_row(t: np.ndarray) -> tuple[float, float, float, float] | None:
    """(a, d, alpha, theta) with dh_transform(...) == t (4, 4), or None if t is no standard-DH row."""
    theta, alpha = math.atan2(t[1, 0], t[0, 0]), math.atan2(t[2, 1], t[2, 2])
    a = t[0, 3] * math.cos(theta) + t[1, 3] * math.sin(theta)
    row = (a, float(t[2, 3]), alpha, theta)
    return row if np.allclose(dh_transform(*row), t, rtol=0, atol=_MATCH) else None


def standard_dh(arm: Arm) -> StandardDH | None:
    """The standard-DH form of a SerialArm whose joints all turn about their z axis, else None."""
    if not isinstance(arm, SerialArm) or not all(
            j.type == "revolute" and np.allclose(j.axis, [0, 0, 1], rtol=0, atol=_MATCH) for j in arm.joints):
        return None
    rows = [_dh_row(j.origin) for j in arm.joints[1:]] + [_dh_row(arm.tip)]
    if any(r is None for r in rows):
        return None
    a, d, alpha, theta = (np.array(col) for col in zip(*rows, strict=True))
    return StandardDH(arm.joints[0].origin, a, d, alpha, theta)


def _matches(dh: StandardDH | None, alpha: tuple[float, ...], zero_a: tuple[int, ...],
             zero_d: tuple[int, ...], nonzero: tuple[float, ...]) -> bool:
    """dh has these twists, zero a and d at these (0-based) joints and non-zero `nonzero` lengths."""
    return (dh is not None and len(dh.alpha) == len(alpha)
            and np.allclose(wrap_angle(dh.alpha - np.array(alpha)), 0, atol=_MATCH)
            and np.allclose(dh.a[list(zero_a)], 0, atol=_MATCH)
            and np.allclose(dh.d[list(zero_d)], 0, atol=_MATCH)
            and all(abs(v) > _MATCH for v in nonzero))


def rrr_dh(arm: Arm) -> StandardDH | None:
    """The DH form of an rrr-type position arm (see the module docstring), else None."""
    dh = standard_dh(arm)
    ok = (arm.target_dim == 3 and dh is not None
          and _matches(dh, RRR_ALPHA, (0,), (1, 2), (dh.a[1], dh.a[2])))
    return dh if ok else None


def ur_dh(arm: Arm) -> StandardDH | None:
    """The DH form of a UR-type pose arm (see the module docstring), else None."""
    dh = standard_dh(arm)
    ok = (arm.target_dim == 9 and dh is not None
          and _matches(dh, UR_ALPHA, (0, 3, 4, 5), (1, 2), (dh.a[1], dh.a[2], dh.d[5])))
    return dh if ok else None


def has_spatial_closed_form(arm: Arm) -> bool:
    """True for rrr-type position arms and UR-type pose arms."""
    return rrr_dh(arm) is not None or ur_dh(arm) is not None


def _two_link(u: np.ndarray, v: np.ndarray, a2: float, a3: float):
    """Planar two-link angles reaching (u, v) (any shape S): theta2, theta3 (S + (2,)) over the
    elbow branches, reachable (S)."""
    c3 = (u**2 + v**2 - a2**2 - a3**2) / (2 * a2 * a3)
    reachable = np.abs(c3) <= 1 + 1e-12
    t3 = np.arccos(np.clip(c3, -1, 1))[..., None] * np.array([1.0, -1.0])
    t2 = np.arctan2(v, u)[..., None] - np.arctan2(a3 * np.sin(t3), a2 + a3 * np.cos(t3))
    return t2, t3, reachable


def _in_base(dh: StandardDH, points: np.ndarray) -> np.ndarray:
    """Points (N, 3) or poses (N, 4, 4) expressed in the first joint's frame (base^-1 applied)."""
    inv = np.linalg.inv(dh.base)
    if points.ndim == 2:
        return points @ inv[:3, :3].T + inv[:3, 3]
    return inv @ points


def _rrr_ik(dh: StandardDH, x: np.ndarray):
    """DH angles (N, 4, 3) and reachable (N, 4) for positions x (N, 3) of an rrr-type arm."""
    p = _in_base(dh, x)
    rho = np.hypot(p[:, 0], p[:, 1])
    t1 = np.arctan2(p[:, 1], p[:, 0])[:, None] + np.array([0.0, math.pi])   # shoulder front, back
    u = rho[:, None] * np.array([1.0, -1.0])                                # signed reach along x1
    t2, t3, ok = _two_link(u, (p[:, 2] - dh.d[0])[:, None], dh.a[1], dh.a[2])  # (N, 2, 2)
    theta = np.stack(np.broadcast_arrays(t1[:, :, None], t2, t3), axis=-1).reshape(len(x), 4, 3)
    reachable = np.repeat(ok & (rho > _SINGULAR)[:, None], 2, axis=1)
    return theta, reachable


def _dh_batch(a: float, d: float, alpha: float, theta: np.ndarray) -> np.ndarray:
    """Standard-DH transforms (..., 4, 4) for angles theta (...) and constant a, d, alpha."""
    c, s, ca, sa = np.cos(theta), np.sin(theta), math.cos(alpha), math.sin(alpha)
    out = np.zeros(theta.shape + (4, 4))
    out[..., 0, :] = np.stack(np.broadcast_arrays(c, -s * ca, s * sa, a * c), axis=-1)
    out[..., 1, :] = np.stack(np.broadcast_arrays(s, c * ca, -c * sa, a * s), axis=-1)
    out[..., 2, 1:] = sa, ca, d
    out[..., 3, 3] = 1.0
    return out


def _ur_ik(dh: StandardDH, x: np.ndarray):
    """DH angles (N, 8, 6) and reachable (N, 8) for pose targets x (N, 9) of a UR-type arm.

    With z1 = (sin t1, -cos t1, 0) the axis shared by joints 2-4: the wrist centre p5 = p - d6 z6
    has p5 . z1 = d4 (fixes t1, 2 ways), p . z1 = d4 + d6 cos t5 (t5, 2 ways), the hand axes
    give R^T z1 = (sin t5 cos t6, -sin t5 sin t6, cos t5) (t6), and A2 A3 A4 = A1^-1 T (A5 A6)^-1
    is a planar two-link problem (t2, t3 with 2 elbow branches, then t4).
    """
    n = len(x)
    pose = np.zeros((n, 4, 4))
    pose[:, :3, :3], pose[:, :3, 3], pose[:, 3, 3] = sixd_to_matrix(x[:, 3:]), x[:, :3], 1.0
    pose = _in_base(dh, pose)
    rot, p = pose[:, :3, :3], pose[:, :3, 3]
    a2, a3, d1, d4, d6 = dh.a[1], dh.a[2], dh.d[0], dh.d[3], dh.d[5]
    wrist = p - d6 * rot[:, :, 2]
    rho = np.hypot(wrist[:, 0], wrist[:, 1])
    ok1 = np.abs(d4) <= rho * (1 + 1e-12)
    phi = np.arcsin(np.clip(d4 / np.where(rho > 0, rho, 1.0), -1, 1))
    t1 = np.arctan2(wrist[:, 1], wrist[:, 0])[:, None] + np.stack([phi, math.pi - phi], axis=1)  # (N, 2)
    s1, c1 = np.sin(t1), np.cos(t1)
    c5 = (p[:, 0, None] * s1 - p[:, 1, None] * c1 - d4) / d6
    ok5 = np.abs(c5) <= 1 + 1e-12
    t5 = np.arccos(np.clip(c5, -1, 1))[:, :, None] * np.array([1.0, -1.0])     # (N, 2, 2)
    s5 = np.sin(t5)
    along_x = (rot[:, 0, 0, None] * s1 - rot[:, 1, 0, None] * c1)[:, :, None]  # X . z1
    along_y = (rot[:, 0, 1, None] * s1 - rot[:, 1, 1, None] * c1)[:, :, None]  # Y . z1
    sign = np.where(s5 < 0, -1.0, 1.0)
    t6 = np.arctan2(-along_y * sign, along_x * sign)
    t1 = np.broadcast_to(t1[:, :, None], t5.shape)
    a1 = _dh_batch(dh.a[0], d1, dh.alpha[0], t1)
    a56 = _dh_batch(dh.a[4], dh.d[4], dh.alpha[4], t5) @ _dh_batch(dh.a[5], d6, dh.alpha[5], t6)
    t14 = np.linalg.inv(a1) @ pose[:, None, None] @ np.linalg.inv(a56)            # (N, 2, 2, 4, 4)
    t2, t3, ok3 = _two_link(t14[..., 0, 3], t14[..., 1, 3], a2, a3)            # (N, 2, 2, 2)
    t4 = np.arctan2(t14[..., 1, 0], t14[..., 0, 0])[..., None] - t2 - t3
    theta = np.stack(np.broadcast_arrays(t1[..., None], t2, t3, t4, t5[..., None], t6[..., None]), axis=-1)
    reachable = (ok1[:, None, None, None] & ok5[:, :, None, None] & ok3[..., None]
                 & (np.abs(s5) > _SINGULAR)[..., None])
    return theta.reshape(n, 8, 6), np.broadcast_to(reachable, t2.shape).reshape(n, 8)


def _into_limits(arm: Arm, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q (..., dof) shifted by multiples of 2 pi to the representative in [lo, lo + 2 pi), and
    whether that lies within the limits (always, for continuous joints)."""
    lo, hi = arm.joint_limits[:, 0] - 1e-12, arm.joint_limits[:, 1]
    shifted = lo + (q - lo) % TWO_PI
    return shifted, np.all(shifted <= hi + 1e-12, axis=-1)


def spatial_closed_form_ik(arm: Arm, targets) -> tuple[np.ndarray, np.ndarray]:
    """All IK branches: joints (N, B, dof) and valid (N, B) (reachable, in limits, distinct).

    Invalid entries hold NaN. B = 4 for rrr-type arms, 8 for UR-type arms.
    """
    x = as_batch(targets, arm.target_dim, "targets")
    dh = rrr_dh(arm)
    if dh is not None:
        theta, reachable = _rrr_ik(dh, x)
    else:
        dh = ur_dh(arm)
        if dh is None:
            raise IKMDNError(f"arm {arm.name!r} has no closed-form IK oracle")
        theta, reachable = _ur_ik(dh, x)
    # Joint i turns by q_i + theta_i of the DH row after it (the row holds the joint's offset).
    q, in_limits = _into_limits(arm, theta - dh.theta)
    valid = reachable & in_limits
    for b in range(1, q.shape[1]):  # a branch equal to an earlier valid one is not a new solution
        same = np.all(np.abs(wrap_angle(q[:, :b] - q[:, b:b + 1])) < _SAME, axis=-1) & valid[:, :b]
        valid[:, b] &= ~same.any(axis=1)
    return np.where(valid[..., None], q, np.nan), valid
