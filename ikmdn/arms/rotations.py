"""Rotation helpers in numpy float64, batched over a leading axis N.

Conventions, fixed once for the whole package:

- quaternions are (w, x, y, z), scalar first, unit; `matrix_to_quat` returns w >= 0.
  (scipy.spatial.transform.Rotation uses (x, y, z, w): reorder when comparing.)
- rotation matrices are (N, 3, 3) and act on column vectors: v_base = R @ v_local.
- the 6-D encoding of a rotation is its first two columns, [r11, r21, r31, r12, r22, r32]
  (Zhou et al. 2019, "On the continuity of rotation representations"); Gram-Schmidt maps any
  6-vector with independent halves back to a rotation.
- the log map returns the axis-angle (rotation) vector in radians, |w| in [0, pi].
- angles between rotations are reported in degrees.

The log map also has a matrix-leading variant (`log_map_t`, matrices (3, 3, M)) for the
component-major layout of refinement, where every operation runs over contiguous rows of M.
"""

from __future__ import annotations

import numpy as np

from ikmdn.errors import IKMDNError

# Below this sin(angle) the log map uses its series, above it the closed form: the series error
# is O(angle^4) ~ 1e-20 here, the closed form's relative error eps / angle ~ 1e-11 at worst.
_SMALL_SIN = 1e-4


def _unit_quats(quats) -> np.ndarray:
    """Quaternions (N, 4) float64 scaled to unit length; zero or non-finite rows are errors."""
    q = np.asarray(quats, dtype=np.float64)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != 4:
        raise IKMDNError(f"quaternions must have shape (N, 4) as (w, x, y, z), got {q.shape}")
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    if not np.all(np.isfinite(norm)) or np.any(norm < 1e-12):
        raise IKMDNError("quaternions must be finite and non-zero")
    return q / norm


def quat_to_matrix(quats) -> np.ndarray:
    """Rotation matrices (N, 3, 3) from quaternions (N, 4) in (w, x, y, z) order (normalised first)."""
    w, x, y, z = _unit_quats(quats).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=-2)


def matrix_to_quat(rotations: np.ndarray) -> np.ndarray:
    """Unit quaternions (N, 4) in (w, x, y, z) order with w >= 0 from rotation matrices (N, 3, 3).

    Shepperd's method: each row is computed from the largest of w^2, x^2, y^2, z^2, so no
    division by a small number occurs.
    """
    r = np.asarray(rotations, dtype=np.float64)
    trace = r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]
    # 4 w^2 - 1 = trace, 4 x^2 - 1 = 2 r00 - trace, ...: pick the largest component per row.
    squares = np.stack([trace, 2 * r[:, 0, 0] - trace, 2 * r[:, 1, 1] - trace,
                        2 * r[:, 2, 2] - trace], axis=1)
    pick = np.argmax(squares, axis=1)
    big = 0.5 * np.sqrt(1.0 + np.take_along_axis(squares, pick[:, None], axis=1)[:, 0])
    # Products 4 w x = r21 - r12 etc.: the other components from the chosen one.
    wx, wy, wz = r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]
    xy, xz, yz = r[:, 0, 1] + r[:, 1, 0], r[:, 0, 2] + r[:, 2, 0], r[:, 1, 2] + r[:, 2, 1]
    sq = 4.0 * big * big
    candidates = np.stack([
        np.stack([sq, wx, wy, wz], axis=1),
        np.stack([wx, sq, xy, xz], axis=1),
        np.stack([wy, xy, sq, yz], axis=1),
        np.stack([wz, xz, yz, sq], axis=1),
    ], axis=1)                                                       # (N, 4 choices, 4)
    q = np.take_along_axis(candidates, pick[:, None, None], axis=1)[:, 0] / (4.0 * big[:, None])
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def matrix_to_6d(rotations: np.ndarray) -> np.ndarray:
    """6-D encodings (N, 6) = [r11, r21, r31, r12, r22, r32] of rotation matrices (N, 3, 3)."""
    r = np.asarray(rotations, dtype=np.float64)
    return np.concatenate([r[:, :, 0], r[:, :, 1]], axis=1)


def sixd_to_matrix_t(v: np.ndarray) -> np.ndarray:
    """Rotations (3, 3, ...) [row, column, batch] by Gram-Schmidt from 6-D encodings (6, ...).

    Component-major variant of `sixd_to_matrix`. Column 1 is the first half normalised, column 2
    the second half made orthogonal to it and normalised, column 3 their cross product.
    Degenerate encodings (a zero half, or parallel halves) give NaN.
    """
    a, b = v[:3], v[3:6]
    with np.errstate(invalid="ignore", divide="ignore"):
        c1 = a / np.sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2])
        b = b - (c1[0] * b[0] + c1[1] * b[1] + c1[2] * b[2]) * c1
        c2 = b / np.sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2])
    c3 = np.stack([c1[1] * c2[2] - c1[2] * c2[1], c1[2] * c2[0] - c1[0] * c2[2],
                   c1[0] * c2[1] - c1[1] * c2[0]])
    return np.stack([c1, c2, c3], axis=1)


def sixd_to_matrix(v) -> np.ndarray:
    """Rotation matrices (N, 3, 3) by Gram-Schmidt from 6-D encodings (N, 6) (see `sixd_to_matrix_t`)."""
    v = np.asarray(v, dtype=np.float64)
    return np.moveaxis(sixd_to_matrix_t(v.T), -1, 0)


def exp_map(rotvecs) -> np.ndarray:
    """Rotation matrices (N, 3, 3) from rotation vectors (N, 3) (axis times angle, radians): Rodrigues."""
    w = np.asarray(rotvecs, dtype=np.float64)
    theta = np.linalg.norm(w, axis=1)
    small = theta < 1e-6
    safe = np.where(small, 1.0, theta)
    # sin(t)/t and (1 - cos t)/t^2, with their series near t = 0.
    a = np.where(small, 1.0 - theta**2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    k = np.zeros((len(w), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    k -= k.transpose(0, 2, 1)
    return np.eye(3) + a[:, None, None] * k + b[:, None, None] * (k @ k)


def log_map_t(r: np.ndarray) -> np.ndarray:
    """Rotation vectors (3, ...) in radians, |w| <= pi, from rotations r (3, 3, ...) [row, column, batch].

    Component-major variant of `log_map`. The angle is atan2(sin, cos) from the skew and trace
    parts (accurate everywhere). The axis comes from the skew part, w = angle / (2 sin) *
    vee(R - R^T) (series near 0), when the angle is below pi/2, and from the symmetric part
    (R + R^T)/2 - cos I = (1 - cos) a a^T when above, so it stays accurate up to pi; there the
    sign is chosen to agree with the skew part. At exactly pi either sign is the same rotation.
    """
    batch = r.shape[2:]
    r = r.reshape(3, 3, -1)
    v = np.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])  # 2 sin(angle) axis
    cos = np.clip(0.5 * (r[0, 0] + r[1, 1] + r[2, 2] - 1.0), -1.0, 1.0)
    sin = 0.5 * np.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    angle = np.arctan2(sin, cos)
    small = sin < _SMALL_SIN
    out = v * np.where(small, 0.5 + angle * angle / 12.0, angle / (2.0 * np.where(small, 1.0, sin)))
    wide = np.flatnonzero(cos < 0)   # angle > pi/2: the symmetric part, 1 - cos > 1
    if wide.size:
        rw, cw = r[:, :, wide], cos[wide]
        sym = 0.5 * (rw + rw.transpose(1, 0, 2)) - cw * np.eye(3)[:, :, None]
        diag = np.stack([sym[0, 0], sym[1, 1], sym[2, 2]])
        k = np.argmax(diag, axis=0)
        cols = np.arange(wide.size)
        axis = sym[:, k, cols] / np.sqrt(diag[k, cols] * (1.0 - cw))  # column k of a a^T, over |a_k|
        sign = np.where((axis * v[:, wide]).sum(axis=0) < 0, -1.0, 1.0)
        out[:, wide] = sign * angle[wide] * axis
    return out.reshape((3,) + batch)


def log_map(rotations) -> np.ndarray:
    """Rotation vectors (N, 3) (axis times angle, radians, |w| <= pi) of rotation matrices (N, 3, 3).

    Robust near angle 0 and pi (see `log_map_t`); the inverse of `exp_map` up to the sign of the
    axis at exactly pi.
    """
    r = np.asarray(rotations, dtype=np.float64)
    return log_map_t(np.moveaxis(r, 0, -1)).T


def rotation_angle_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (...,) in radians, in [0, pi], of the rotations a^T b between component-major
    matrices a, b (3, 3, ...) [row, column, batch], from the skew part and the trace of a^T b
    (robust at 0 and pi); nine column dot products, no matrix stack."""
    rel = [[a[0, i] * b[0, j] + a[1, i] * b[1, j] + a[2, i] * b[2, j] for j in range(3)]
           for i in range(3)]
    v0, v1, v2 = rel[2][1] - rel[1][2], rel[0][2] - rel[2][0], rel[1][0] - rel[0][1]
    cos = 0.5 * (rel[0][0] + rel[1][1] + rel[2][2] - 1.0)
    return np.arctan2(0.5 * np.sqrt(v0 * v0 + v1 * v1 + v2 * v2), cos)
