"""Closed-form IK of the planar arms: the oracle for tests, benchmarks and coverage reports.

It is never the product's answer (that comes from the MDN); it exists to measure the MDN.
"""

from __future__ import annotations

import numpy as np

from ikmdn.arms.base import TWO_PI, Arm, as_batch
from ikmdn.arms.closed_form_spatial import has_spatial_closed_form, spatial_closed_form_ik
from ikmdn.arms.planar import PlanarArm
from ikmdn.errors import IKMDNError


def has_closed_form(arm: Arm) -> bool:
    """True for planar two-link position arms, planar three-link (x, y, phi) arms, and the rrr-type
    and UR-type serial arms of ikmdn.arms.closed_form_spatial."""
    if isinstance(arm, PlanarArm):
        return (arm.dof, arm.orientation) in {(2, False), (3, True)}
    return has_spatial_closed_form(arm)


def _two_link(px: np.ndarray, py: np.ndarray, l1: float, l2: float):
    """Absolute link angles of both elbow branches: (a1, a2) each (N, 2), reachable (N,)."""
    c2 = (px**2 + py**2 - l1**2 - l2**2) / (2 * l1 * l2)
    reachable = np.abs(c2) <= 1 + 1e-12
    rel = np.arccos(np.clip(c2, -1, 1))[:, None] * np.array([1.0, -1.0])  # elbow branches
    a1 = np.arctan2(py, px)[:, None] - np.arctan2(l2 * np.sin(rel), l1 + l2 * np.cos(rel))
    return a1, a1 + rel, reachable


def _into_limits(arm: Arm, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift each joint of q (..., dof) by multiples of 2 pi into its limits where possible."""
    lo, hi = arm.joint_limits[:, 0], arm.joint_limits[:, 1]
    shifted = lo + (q - lo) % TWO_PI          # the representative in [lo, lo + 2 pi)
    shifted = np.where(shifted > hi + 1e-12, shifted - TWO_PI, shifted)  # nearer the lower limit
    ok = np.all((shifted >= lo - 1e-12) & (shifted <= hi + 1e-12), axis=-1)
    return np.where(arm.continuous_joints, arm.wrap_joints(q), shifted), ok


def closed_form_ik(arm: Arm, targets) -> tuple[np.ndarray, np.ndarray]:
    """All IK branches: joints (N, B, dof) and valid (N, B) (reachable, in limits, distinct).

    Invalid entries hold NaN. B = 2 (elbow up and down) for the supported planar arms, 4 for
    rrr-type and 8 for UR-type serial arms.
    """
    if not has_closed_form(arm):
        raise IKMDNError(f"arm {arm.name!r} has no closed-form IK oracle")
    if not isinstance(arm, PlanarArm):
        return spatial_closed_form_ik(arm, targets)
    x = as_batch(targets, arm.target_dim, "targets")
    lengths, offsets = arm.link_lengths, arm.joint_offsets
    px, py = x[:, 0], x[:, 1]
    if arm.orientation:  # the wrist point is fixed by the hand angle
        px = px - lengths[2] * np.cos(x[:, 2])
        py = py - lengths[2] * np.sin(x[:, 2])
    a1, a2, reachable = _two_link(px, py, lengths[0], lengths[1])
    absolute = [a1, a2]
    if arm.orientation:
        absolute.append(np.broadcast_to(x[:, 2:3], a1.shape))
    a = np.stack(absolute, axis=-1)                                     # (N, 2, dof)
    q = np.diff(a, axis=-1, prepend=0.0) - offsets
    q, in_limits = _into_limits(arm, q)
    valid = reachable[:, None] & in_limits
    # At the workspace boundary both branches coincide: keep one.
    same = np.all(np.abs(q[:, 0] - q[:, 1]) < 1e-9, axis=-1)
    valid[:, 1] &= ~(same & valid[:, 0])
    return np.where(valid[..., None], q, np.nan), valid
