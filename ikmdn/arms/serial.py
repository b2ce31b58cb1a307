"""Spatial serial chains (kind "serial"): batched fk, geometric Jacobian and pose targets.

A chain is data: a list of moving joints, each an `origin` (4, 4) that places the joint frame in
the frame before it, a type ("revolute" or "prismatic") and a unit `axis` (3,) in the joint frame,
followed by a fixed `tip` (4, 4) from the last joint frame to the hand. The hand pose is

    T(q) = origin_1 M_1(q_1) origin_2 M_2(q_2) ... origin_n M_n(q_n) tip,

M_i a rotation by q_i (radians) about the axis or a translation by q_i (metres) along it. DH tables
(`ikmdn.arms.dh`) and URDF files (`ikmdn.arms.urdf`) both become this data, which is what the spec
stores, so `arm_from_spec` rebuilds an arm with identical fk.

Conventions: lengths in metres, angles in radians, everything float64 and in the base frame.
- `poses(q)`: hand poses (N, 4, 4).
- `geometric_jacobian(q)`: (N, 6, dof), TRANSLATION ROWS FIRST: rows 0-2 the hand origin's
  linear velocity, rows 3-5 the angular velocity, per unit joint velocity, in the base frame.
- target "position": target (x, y, z) of the hand origin; residual reached - target (m).
- target "pose": target (x, y, z, r11, r21, r31, r12, r22, r32): the position and the first two
  columns of the hand rotation R (the continuous 6-D encoding of `ikmdn.arms.rotations`).
  The residual has 6 rows: the position difference p - p_target (m), then the rotation error
  rotation_weight * log(R R_target^T) (the rotation from target to reached, axis-angle in the base
  frame, equal to R_target log(R_target^T R)). `rotation_weight` (metres per radian, default 0.1)
  sets how many metres of position error one radian of orientation error is worth in the
  refinement's least squares; the Jacobian's rotation rows carry the same factor. The geometric
  Jacobian is the residual's exact derivative at zero rotation error and its first-order
  approximation near it (the inverse left Jacobian of SO(3) is I + O(error)), which is all the
  refinement needs. Reports use `position_error` (m) and `rotation_error_deg` (degrees), which
  are unweighted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ikmdn.arms.base import Arm, as_batch, register_kind, spec_number, spec_numbers, spec_text
from ikmdn.arms.rotations import (
    log_map_t,
    matrix_to_6d,
    quat_to_matrix,
    rotation_angle_t,
    sixd_to_matrix,
    sixd_to_matrix_t,
)
from ikmdn.errors import IKMDNError
from ikmdn.untrusted import short

JOINT_TYPES = ("revolute", "prismatic")
TARGET_MODES = ("position", "pose")
POSITION_NAMES = ("x", "y", "z")
POSE_NAMES = POSITION_NAMES + ("r11", "r21", "r31", "r12", "r22", "r32")
DEFAULT_ROTATION_WEIGHT = 0.1
_SNAP = 1e-15  # entries of the compiled fixed transforms below this are exactly 0


def _transform(values: Any, what: str) -> np.ndarray:
    """A validated rigid transform (4, 4) float64: orthonormal right-handed rotation, last row 0 0 0 1."""
    t = np.array(values, dtype=np.float64)
    if t.shape != (4, 4) or not np.all(np.isfinite(t)):
        raise IKMDNError(f"{what} must be a finite 4 x 4 transform, got shape {t.shape}")
    rot = t[:3, :3]
    if (not np.allclose(t[3], [0, 0, 0, 1], atol=1e-12)
            or not np.allclose(rot.T @ rot, np.eye(3), atol=1e-9) or np.linalg.det(rot) < 0):
        raise IKMDNError(f"{what} must be a rigid transform (rotation and translation), got {t.tolist()}")
    return t


@dataclass(frozen=True, eq=False)
class Joint:
    """A moving joint: `origin` (4, 4) in the previous joint's moved frame (or the base), then a
    rotation about (revolute) or translation along (prismatic) the unit `axis` (3,) by q."""

    type: str
    origin: np.ndarray
    axis: np.ndarray

    @classmethod
    def make(cls, type: str, origin: Any, axis: Any = (0.0, 0.0, 1.0)) -> Joint:
        """A validated joint; the axis is normalised."""
        if type not in JOINT_TYPES:
            raise IKMDNError(f"joint type must be one of {', '.join(JOINT_TYPES)}, got {type!r}")
        a = np.array(axis, dtype=np.float64)
        norm = np.linalg.norm(a) if a.shape == (3,) else 0.0
        if not np.isfinite(norm) or norm < 1e-12:
            raise IKMDNError(f"joint axis must be a non-zero 3-vector, got {axis}")
        return cls(type, _transform(origin, "joint origin"), a / norm)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able {"type", "origin" (4 x 4 rows), "axis"}."""
        return {"type": self.type, "origin": self.origin.tolist(), "axis": self.axis.tolist()}


def _z_onto(axis: np.ndarray) -> np.ndarray:
    """Rotation (4, 4) C with C e_z = axis (unit): the identity when axis is z."""
    cross = np.array([-axis[1], axis[0], 0.0])     # e_z x axis
    s, c = np.linalg.norm(cross), axis[2]
    out = np.eye(4)
    if s < 1e-12:
        if c < 0:
            out[1, 1] = out[2, 2] = -1.0
        return out
    k = cross / s
    skew = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    out[:3, :3] = np.eye(3) + s * skew + (1.0 - c) * (skew @ skew)
    return out


@register_kind
class SerialArm(Arm):
    """A spatial serial chain of revolute and prismatic joints; position or pose targets."""

    kind = "serial"

    def __init__(self, name: str, joints: Sequence[Joint], joint_limits: Any, tip: Any = None,
                 target: str = "pose", rotation_weight: float = DEFAULT_ROTATION_WEIGHT,
                 joint_names: Sequence[str] | None = None, base_frame: str | None = None,
                 tip_frame: str | None = None, tool: Any = None,
                 locked: dict[str, float] | None = None, continuous: Sequence[bool] | None = None):
        """joints, joint_limits (dof, 2) and tip (4, 4, from the last joint frame to tip_frame)
        define the chain; tool (4, 4) is a fixed TCP transform after tip_frame (the hand pose is
        that of the tool point); base_frame, tip_frame and locked (joint name -> value, joints of
        the description held fixed and folded into the chain) record where the chain came from;
        continuous (per joint, from a URDF) marks joints without hard stops: a revolute joint
        whose limits span exactly one turn keeps its stops (see Arm.wrapping_joints)."""
        if target not in TARGET_MODES:
            raise IKMDNError(f"target must be one of {', '.join(TARGET_MODES)}, got {target!r}")
        if not (math.isfinite(rotation_weight) and rotation_weight > 0):
            raise IKMDNError(f"rotation_weight must be a positive number, got {rotation_weight}")
        joints = tuple(joints)
        if not joints:
            raise IKMDNError("a serial chain needs at least one moving joint")
        names = POSE_NAMES if target == "pose" else POSITION_NAMES
        super().__init__(name, joint_limits, names, (False,) * len(names))
        if self.dof != len(joints):
            raise IKMDNError(f"{len(joints)} joints need {len(joints)} joint limits, got {self.dof}")
        self.joints = joints
        self.tip = np.eye(4) if tip is None else _transform(tip, "tip")
        self.tool = np.eye(4) if tool is None else _transform(tool, "tool")
        self.base_frame = None if base_frame is None else str(base_frame)
        self.tip_frame = None if tip_frame is None else str(tip_frame)
        self.locked = {str(k): float(v) for k, v in (locked or {}).items()}
        if continuous is not None:
            self.free_turning = continuous
        if not all(math.isfinite(v) for v in self.locked.values()):
            raise IKMDNError(f"locked joint values must be finite, got {self.locked}")
        self.target = target
        self.rotation_weight = float(rotation_weight)
        self.joint_names = (tuple(f"joint{i + 1}" for i in range(self.dof)) if joint_names is None
                            else tuple(str(n) for n in joint_names))
        if len(self.joint_names) != self.dof:
            raise IKMDNError(f"{self.dof} joints need {self.dof} joint names, got {len(self.joint_names)}")
        self._revolute = [j.type == "revolute" for j in joints]
        # Each joint axis turned onto z (axis = C e_z, so M(axis, q) = C M(z, q) C^T): the fixed
        # transforms become C_{i-1}^T origin_i C_i and C_n^T tip, and every joint acts on z.
        fixed, prev = [], np.eye(4)
        for joint in joints:
            c = _z_onto(joint.axis)
            fixed.append(prev.T @ joint.origin @ c)
            prev = c
        fixed.append(prev.T @ self.tip @ self.tool)
        # Rounding residue such as cos(pi / 2) = 6e-17 becomes 0, so the walk skips those terms;
        # Python floats scale numpy arrays and torch tensors alike.
        self._fixed = [np.where(np.abs(f) < _SNAP, 0.0, f).tolist() for f in fixed]

    @property
    def residual_dim(self) -> int:
        """6 for pose targets (position difference, weighted rotation log), 3 for positions."""
        return 6 if self.target == "pose" else 3

    # -- the chain walk, shared by numpy and torch ------------------------------------------
    def _walk(self, qt, cos: Callable, sin: Callable, const: Callable, record: bool):
        """Walk the chain in the component-major layout for joints qt (dof, M).

        Returns (columns [x, y, z] of the hand rotation, each (3, M); hand position (3, M);
        joint frames [(axis z_i (3, M), origin p_i (3, M))] if record else []), in the base frame.
        Works for numpy arrays and torch tensors alike: cos, sin and const (a Python list -> a
        (3, 1) array) come from the caller.
        """
        cols, pos, frames = None, None, []
        for i, f in enumerate(self._fixed):
            if cols is None:  # the first fixed transform, from the base
                cols = [const([f[0][k], f[1][k], f[2][k]]) for k in range(3)]
                pos = const([f[0][3], f[1][3], f[2][3]])
            else:
                new = []
                for k in range(4):
                    acc = pos if k == 3 else None
                    for j in range(3):
                        v = f[j][k]
                        if v == 0.0:
                            continue
                        term = cols[j] if v == 1.0 else -cols[j] if v == -1.0 else cols[j] * v
                        acc = term if acc is None else acc + term
                    new.append(acc)
                cols, pos = new[:3], new[3]
            if i == self.dof:
                break
            if record:
                frames.append((cols[2], pos))
            if self._revolute[i]:
                c, s = cos(qt[i]), sin(qt[i])
                cols = [cols[0] * c + cols[1] * s, cols[1] * c - cols[0] * s, cols[2]]
            else:
                pos = pos + cols[2] * qt[i]
        return cols, pos, frames

    def _walk_numpy(self, qt: np.ndarray, record: bool):
        return self._walk(qt, np.cos, np.sin, lambda v: np.array(v)[:, None], record)

    def _jacobian_t(self, frames, pos: np.ndarray, rotation_scale: float | None) -> np.ndarray:
        """Geometric Jacobian (3 or 6, dof, M), translation rows first; rotation rows times
        rotation_scale, or left out when it is None."""
        rows = 3 if rotation_scale is None else 6
        jac = np.zeros((rows, self.dof, pos.shape[1]))
        for i, (z, origin) in enumerate(frames):
            if self._revolute[i]:
                d = pos - origin
                jac[0, i] = z[1] * d[2] - z[2] * d[1]
                jac[1, i] = z[2] * d[0] - z[0] * d[2]
                jac[2, i] = z[0] * d[1] - z[1] * d[0]
                if rotation_scale is not None:
                    jac[3:, i] = z * rotation_scale
            else:
                jac[:3, i] = z
        return jac

    def kinematics_t(self, qt: np.ndarray, jacobian: bool):
        """Targets (target_dim, M) and residual Jacobian (residual_dim, dof, M) or None, for joints (dof, M).

        The Jacobian is the geometric one (translation rows first), its rotation rows times
        rotation_weight for pose targets; loops run over the joints only.
        """
        qt = np.asarray(qt, dtype=np.float64)
        cols, pos, frames = self._walk_numpy(qt, jacobian)
        pos = np.broadcast_to(pos, (3, qt.shape[1]))  # constant parts stay (3, 1) until a joint moves them
        parts = [pos, cols[0], cols[1]] if self.target == "pose" else [pos]
        out = np.concatenate([np.broadcast_to(p, pos.shape) for p in parts])
        if not jacobian:
            return out, None
        scale = self.rotation_weight if self.target == "pose" else None
        return out, self._jacobian_t(frames, pos, scale)

    def kernel_data(self) -> dict[str, Any]:
        """The kinematics as plain values for the compiled refinement kernel (`ikmdn.kernels`):
        {"family": "serial", "pose": bool (pose targets, else position), "rotation_weight": float,
        "fixed": (dof + 1, 3, 4) the top rows of the fixed transforms of `_walk` (each joint acting
        on z; entries below 1e-15 snapped to 0), "revolute": (dof,) bool}. The kernel walks the
        chain as `_walk` does and computes what `kinematics_t` and `residual` compute."""
        return {"family": "serial", "pose": self.target == "pose",
                "rotation_weight": self.rotation_weight,
                "fixed": np.array(self._fixed, dtype=np.float64)[:, :3, :],
                "revolute": np.array(self._revolute, dtype=bool)}

    def poses(self, q) -> np.ndarray:
        """Hand poses (N, 4, 4) float64 in the base frame for joints q (N, dof); (dof,) is promoted."""
        q = as_batch(q, self.dof, "joints")
        cols, pos, _ = self._walk_numpy(q.T, False)
        out = np.zeros((len(q), 4, 4))
        for k in range(3):
            out[:, :3, k] = np.broadcast_to(cols[k], (3, len(q))).T
        out[:, :3, 3] = np.broadcast_to(pos, (3, len(q))).T
        out[:, 3, 3] = 1.0
        return out

    def geometric_jacobian(self, q) -> np.ndarray:
        """Geometric Jacobian (N, 6, dof) at joints q (N, dof), translation rows first, base frame,
        unweighted (for pose arms `jacobian` returns it with the rotation rows times rotation_weight)."""
        q = as_batch(q, self.dof, "joints")
        _, pos, frames = self._walk_numpy(q.T, True)
        pos = np.broadcast_to(pos, (3, len(q)))
        return self._jacobian_t(frames, pos, 1.0).transpose(2, 0, 1)

    def fk_torch(self, q):
        """Torch twin of fk: joints (N, dof) tensor -> targets (N, target_dim), differentiable."""
        import torch

        def const(values):
            return torch.tensor(values, dtype=q.dtype, device=q.device)[:, None]

        cols, pos, _ = self._walk(q.T, torch.cos, torch.sin, const, False)
        parts = [pos, cols[0], cols[1]] if self.target == "pose" else [pos]
        n = q.shape[0]  # parts that no joint moves are still (3, 1) constants
        return torch.cat([p if p.shape[1] == n else p.expand(3, n) for p in parts], dim=0).T

    # -- residual and errors -----------------------------------------------------------------
    def residual(self, reached: np.ndarray, targets: np.ndarray, axis: int = -1) -> np.ndarray:
        """Error vector (..., residual_dim) of reached vs targets (both (..., target_dim)); with
        axis=0 the layout is (target_dim, ...) -> (residual_dim, ...).

        Position targets: reached - targets (m). Pose targets: position difference (m), then
        rotation_weight * log(R_reached R_target^T) (rad, base frame), rotations recovered from
        the 6-D encodings by Gram-Schmidt.
        """
        if self.target == "position":
            return super().residual(reached, targets, axis)
        r = np.asarray(reached, dtype=np.float64)
        x = np.asarray(targets, dtype=np.float64)
        if axis != 0:
            r, x = np.moveaxis(r, -1, 0), np.moveaxis(x, -1, 0)
        a, b = sixd_to_matrix_t(r[3:9]), sixd_to_matrix_t(x[3:9])
        rel = np.einsum("ik...,jk...->ij...", a, b)          # R_reached R_target^T (3, 3, ...)
        out = np.concatenate([r[:3] - x[:3], self.rotation_weight * log_map_t(rel)])
        return out if axis == 0 else np.moveaxis(out, 0, -1)

    @property
    def pose_targets(self) -> bool:
        return self.target == "pose"

    def target_error(self, reached: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Hand position distance (...,) in metres between reached and targets (..., target_dim)."""
        diff = np.asarray(reached, dtype=np.float64)[..., :3] - np.asarray(targets)[..., :3]
        return np.linalg.norm(diff, axis=-1)

    def rotation_error(self, reached: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Angle (...,) in radians between reached and target orientations (pose targets; else 0)."""
        if self.target != "pose":
            return super().rotation_error(reached, targets)
        # each side's rotations at its own shape; the angles broadcast (one target, K candidates)
        x, r = (sixd_to_matrix_t(np.moveaxis(np.asarray(v, dtype=np.float64)[..., 3:9], -1, 0).copy())
                for v in (targets, reached))
        return rotation_angle_t(x, r)

    def position_error(self, reached, targets) -> np.ndarray:
        """Hand position errors (N,) in metres between reached and targets (N, target_dim)."""
        return self.target_error(as_batch(reached, self.target_dim, "reached"),
                                 as_batch(targets, self.target_dim, "targets"))

    def rotation_error_deg(self, reached, targets) -> np.ndarray:
        """Hand orientation errors (N,) in degrees between reached and targets (N, 9) (pose arms only)."""
        if self.target != "pose":
            raise IKMDNError(f"arm {self.name!r} has position targets: no orientation to compare")
        return np.degrees(self.rotation_error(as_batch(reached, 9, "reached"),
                                              as_batch(targets, 9, "targets")))

    # -- spec round trip -----------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "rotation_weight": self.rotation_weight,
            "joint_names": list(self.joint_names),
            "joints": [j.to_dict() for j in self.joints],
            "tip": self.tip.tolist(),
            "tool": self.tool.tolist(),
            "base_frame": self.base_frame,
            "tip_frame": self.tip_frame,
            "locked": dict(self.locked),
            "continuous": None if self._free is None else self._free.tolist(),
        }

    @classmethod
    def from_params(cls, name: str, joint_limits: list, params: dict[str, Any]) -> SerialArm:
        """The arm of a spec's fields; each is checked (finite numbers, right types and shapes)."""
        raw_joints = params["joints"]
        if not isinstance(raw_joints, list):
            raise IKMDNError(f"joints must be a list of joints, got {short(raw_joints)}")
        joints = []
        for i, j in enumerate(raw_joints):
            what = f"joints[{i}]"
            if not isinstance(j, dict):
                raise IKMDNError(f"{what} must be an object with type, origin and axis, got {short(j)}")
            for key in ("type", "origin", "axis"):
                if key not in j:
                    raise IKMDNError(f"{what} lacks {key!r}")
            joints.append(Joint.make(spec_text(j["type"], f"{what}.type"),
                                     spec_numbers(j["origin"], f"{what}.origin", (4, 4)),
                                     spec_numbers(j["axis"], f"{what}.axis", (3,))))
        transforms = {key: None if params.get(key) is None else spec_numbers(params[key], key, (4, 4))
                      for key in ("tip", "tool")}
        names = params.get("joint_names")
        if names is not None and (not isinstance(names, list)
                                  or not all(isinstance(n, str) for n in names)):
            raise IKMDNError(f"joint_names must be a list of strings, got {short(names)}")
        locked = params.get("locked")
        if locked is not None:
            if not isinstance(locked, dict):
                raise IKMDNError(f"locked must be an object (joint name -> value), got {short(locked)}")
            locked = {k: spec_number(v, f"locked[{k!r}]") for k, v in locked.items()}
        continuous = params.get("continuous")
        if continuous is not None and (not isinstance(continuous, list)
                                       or not all(isinstance(c, bool) for c in continuous)):
            raise IKMDNError(f"continuous must be a list of true/false, got {short(continuous)}")
        return cls(spec_text(name, "name"), joints, joint_limits, tip=transforms["tip"],
                   target=spec_text(params.get("target", "pose"), "target"),
                   rotation_weight=spec_number(params.get("rotation_weight", DEFAULT_ROTATION_WEIGHT),
                                               "rotation_weight"),
                   joint_names=names,
                   base_frame=spec_text(params.get("base_frame"), "base_frame", optional=True),
                   tip_frame=spec_text(params.get("tip_frame"), "tip_frame", optional=True),
                   tool=transforms["tool"], locked=locked, continuous=continuous)


# -- pose targets from user input ---------------------------------------------------------------
def _rotations(values: Any, what: str) -> np.ndarray:
    """Validated rotation matrices (N, 3, 3): orthonormal within 1e-6 and right-handed."""
    r = np.asarray(values, dtype=np.float64)
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3 or r.shape[1:] != (3, 3) or not np.all(np.isfinite(r)):
        raise IKMDNError(f"{what} must be finite rotation matrices (N, 3, 3), got shape {r.shape}")
    ortho = np.abs(np.swapaxes(r, 1, 2) @ r - np.eye(3)).max(axis=(1, 2))
    if np.any(ortho > 1e-6) or np.any(np.linalg.det(r) < 0):
        raise IKMDNError(f"{what} must be rotation matrices (orthonormal, determinant +1)")
    return r


def pose_targets(position, orientation) -> np.ndarray:
    """Pose targets (N, 9) from positions (N, 3) in metres and orientations: unit quaternions
    (N, 4) in (w, x, y, z) order, or rotation matrices (N, 3, 3). Single poses are promoted."""
    p = as_batch(position, 3, "positions")
    o = np.asarray(orientation, dtype=np.float64)
    rot = quat_to_matrix(o) if o.shape[-1:] == (4,) else _rotations(o, "orientations")
    if len(rot) != len(p):
        raise IKMDNError(f"got {len(p)} positions but {len(rot)} orientations")
    return np.concatenate([p, matrix_to_6d(rot)], axis=1)


def poses_to_targets(poses) -> np.ndarray:
    """Pose targets (N, 9) from homogeneous hand poses (N, 4, 4) (or one (4, 4))."""
    t = np.asarray(poses, dtype=np.float64)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[1:] != (4, 4):
        raise IKMDNError(f"poses must have shape (N, 4, 4), got {t.shape}")
    return np.concatenate([t[:, :3, 3], matrix_to_6d(_rotations(t[:, :3, :3], "pose rotations"))], axis=1)


def targets_to_poses(targets) -> np.ndarray:
    """Homogeneous poses (N, 4, 4) from pose targets (N, 9), rotations by Gram-Schmidt."""
    x = as_batch(targets, 9, "pose targets")
    out = np.zeros((len(x), 4, 4))
    out[:, :3, :3] = sixd_to_matrix(x[:, 3:])
    out[:, :3, 3] = x[:, :3]
    out[:, 3, 3] = 1.0
    return out
