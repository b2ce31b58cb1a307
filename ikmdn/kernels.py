"""Compiled kinematics and the Levenberg-Marquardt refinement kernel (numba, float64).

This module is the only implementation of the LM rules that `ikmdn.refine` documents (read them
there); `ikmdn.refine.refine` is its public entry point. Everything runs one candidate at a time
in scalar loops over the few joints, compiled once per machine: `numba.njit(cache=True)` stores
the machine code in `__pycache__` beside this file (or, where that is read-only, in numba's
user-wide cache directory, or NUMBA_CACHE_DIR), so later processes load it instead of compiling.
No fastmath: every operation is IEEE float64 in the order the numpy code of `ikmdn.arms` (and
the numpy LM this kernel replaced) uses, so fk, Jacobian and projection agree with it bit for bit;
the pose residual differs by an ulp at most where numpy's SIMD arctan2 differs from libm's
(tests/test_refine_kernel.py pins them to 1e-12, and the kernel to its own interpreted source).
error_model="numpy": a division by zero gives inf or NaN (a step that fails is then rejected)
rather than an exception.

An arm enters as two tuples built by `arm_data` from its `kernel_data()`:
- kin = (family, pose, rotation_weight, link_lengths (dof,), joint_offsets (dof,),
  fixed (dof + 1, 3, 4), revolute (dof,) bool): family PLANAR uses the lengths and offsets (pose:
  the target carries the hand angle phi), family SERIAL the fixed transforms and joint types
  (pose: 9-D pose targets and a 6-D residual, else 3-D positions);
- limits = (lo (dof,), hi (dof,), home (dof,), periodic (dof,) bool).
Every arm gives the same argument types, so one compiled kernel serves all of them.
"""

from __future__ import annotations

import math
import warnings
import weakref
from typing import Any

import numpy as np
from numba import config, njit
from numba.extending import intrinsic

from ikmdn.errors import IKMDNError

PLANAR, SERIAL = 0, 1
TWO_PI = 2.0 * math.pi
# Below this sin(angle) the log map uses its series (as ikmdn.arms.rotations.log_map_t does).
SMALL_SIN = 1e-4


# False once numba found no writable cache directory (see _jit).
CACHED = True


def _jit(func=None, **options):
    """njit with an on-disk cache; where no cache directory is writable (numba raises at
    decoration time), compile in memory in every process instead of failing at import."""
    global CACHED
    if func is None:
        return lambda f: _jit(f, **options)
    try:
        return njit(cache=True, error_model="numpy", nogil=True, **options)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        CACHED = False
        return njit(error_model="numpy", nogil=True, **options)(func)


# Helpers are inlined into the kernel (numba IR inlining): at a call boundary every array
# argument costs atomic reference counting, several times a small arm's arithmetic.
_inline = _jit(inline="always")


@intrinsic
def _borrow(typingctx, arr):
    """A view of array arr without reference counting (no meminfo). Inlined helpers still alias
    their array arguments, and numba's pruning leaves ~20 atomic increments and decrements per
    LM iteration (more than half of a planar arm's time); a borrowed view makes them no-ops.
    Only for arrays whose owner outlives every use of the view (arguments of the function)."""
    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        out = context.make_array(sig.return_type)(context, builder)
        context.populate_array(out, data=src.data, shape=src.shape, strides=src.strides,
                               itemsize=src.itemsize, meminfo=None)
        return out._getvalue()
    return arr(arr), codegen


if config.DISABLE_JIT:  # interpreted (tests/test_refine_kernel.py): the array itself
    def _borrow(arr):
        return arr


# -- projection and kinematics, one candidate ---------------------------------------------------
# Helpers take plain arrays and indices, never slices or tuples of arrays: in the hot loop an
# array view or a re-bound array costs reference counting too.

@_inline
def project(lo, hi, home, periodic, q):
    """Project joints q (dof,) onto the limits in place: periodic joints moved by whole turns to
    the in-limit value nearest home (Arm.wrap_joints), the others clipped (Arm.project_to_limits)."""
    for d in range(q.shape[0]):
        v = q[d]
        if periodic[d]:
            ref = home[d]
            v = ref + (v - ref + math.pi) % TWO_PI - math.pi
            if v > hi[d]:
                v = v - TWO_PI
            elif v < lo[d]:
                v = v + TWO_PI
        elif v < lo[d]:
            v = lo[d]
        elif v > hi[d]:
            v = hi[d]
        q[d] = v


@_inline
def _planar_kinematics(orientation, lengths, offsets, q, reached, jac, work):
    """PlanarArm.kinematics_t for one candidate; work (dof, >= 2) holds L cos a, L sin a."""
    dof = q.shape[0]
    angle = 0.0
    x = 0.0
    y = 0.0
    for j in range(dof):
        angle = angle + (q[j] + offsets[j])
        lc = lengths[j] * math.cos(angle)
        ls = lengths[j] * math.sin(angle)
        work[j, 0] = lc
        work[j, 1] = ls
        x += lc
        y += ls
    reached[0] = x
    reached[1] = y
    if orientation:
        reached[2] = (angle + math.pi) % TWO_PI - math.pi
    for j in range(dof - 1, -1, -1):
        if j == dof - 1:
            jac[0, j] = -work[j, 1]
            jac[1, j] = work[j, 0]
        else:
            jac[0, j] = jac[0, j + 1] - work[j, 1]
            jac[1, j] = jac[1, j + 1] + work[j, 0]
        if orientation:
            jac[2, j] = 1.0


@_inline
def _serial_kinematics(pose, weight, fixed, revolute, q, reached, jac, work, frame):
    """SerialArm.kinematics_t for one candidate (the walk of SerialArm._walk, then _jacobian_t);
    work (dof, >= 6) records each joint's axis z and origin, frame (3, 4) is the moving frame."""
    dof = q.shape[0]
    for i in range(fixed.shape[0]):
        if i == 0:
            for a in range(3):
                for k in range(4):
                    frame[a, k] = fixed[0, a, k]
        else:
            for a in range(3):  # row a of frame @ fixed[i], skipping its zeros as _walk does
                c0, c1, c2 = frame[a, 0], frame[a, 1], frame[a, 2]
                for k in range(4):
                    acc = frame[a, 3] if k == 3 else 0.0
                    if fixed[i, 0, k] != 0.0:
                        acc = acc + c0 * fixed[i, 0, k]
                    if fixed[i, 1, k] != 0.0:
                        acc = acc + c1 * fixed[i, 1, k]
                    if fixed[i, 2, k] != 0.0:
                        acc = acc + c2 * fixed[i, 2, k]
                    frame[a, k] = acc
        if i == dof:
            break
        for a in range(3):
            work[i, a] = frame[a, 2]
            work[i, 3 + a] = frame[a, 3]
        if revolute[i]:
            c, s = math.cos(q[i]), math.sin(q[i])
            for a in range(3):
                c0, c1 = frame[a, 0], frame[a, 1]
                frame[a, 0] = c0 * c + c1 * s
                frame[a, 1] = c1 * c - c0 * s
        else:
            for a in range(3):
                frame[a, 3] = frame[a, 3] + frame[a, 2] * q[i]
    for a in range(3):
        reached[a] = frame[a, 3]
        if pose:
            reached[3 + a] = frame[a, 0]
            reached[6 + a] = frame[a, 1]
    for i in range(dof):
        z0, z1, z2 = work[i, 0], work[i, 1], work[i, 2]
        if revolute[i]:
            d0 = frame[0, 3] - work[i, 3]
            d1 = frame[1, 3] - work[i, 4]
            d2 = frame[2, 3] - work[i, 5]
            jac[0, i] = z1 * d2 - z2 * d1
            jac[1, i] = z2 * d0 - z0 * d2
            jac[2, i] = z0 * d1 - z1 * d0
            if pose:
                jac[3, i] = z0 * weight
                jac[4, i] = z1 * weight
                jac[5, i] = z2 * weight
        else:
            jac[0, i] = z0
            jac[1, i] = z1
            jac[2, i] = z2
            if pose:
                jac[3, i] = 0.0
                jac[4, i] = 0.0
                jac[5, i] = 0.0


@_inline
def _kinematics(family, pose, weight, lengths, offsets, fixed, revolute, q, reached, jac, work,
                frame):
    """Targets reached (target_dim,) and residual Jacobian jac (residual_dim, dof) at joints q."""
    if family == PLANAR:
        _planar_kinematics(pose, lengths, offsets, q, reached, jac, work)
    else:
        _serial_kinematics(pose, weight, fixed, revolute, q, reached, jac, work, frame)


@_inline
def _sixd_to_matrix(v, start, m, slot):
    """Rotation m[slot] (3, 3) by Gram-Schmidt from the 6-D encoding v[start:start + 6]
    (ikmdn.arms.rotations.sixd_to_matrix_t)."""
    a0, a1, a2 = v[start], v[start + 1], v[start + 2]
    b0, b1, b2 = v[start + 3], v[start + 4], v[start + 5]
    n = np.sqrt(a0 * a0 + a1 * a1 + a2 * a2)
    a0, a1, a2 = a0 / n, a1 / n, a2 / n
    p = a0 * b0 + a1 * b1 + a2 * b2
    b0, b1, b2 = b0 - p * a0, b1 - p * a1, b2 - p * a2
    n = np.sqrt(b0 * b0 + b1 * b1 + b2 * b2)
    b0, b1, b2 = b0 / n, b1 / n, b2 / n
    m[slot, 0, 0], m[slot, 1, 0], m[slot, 2, 0] = a0, a1, a2
    m[slot, 0, 1], m[slot, 1, 1], m[slot, 2, 1] = b0, b1, b2
    m[slot, 0, 2] = a1 * b2 - a2 * b1
    m[slot, 1, 2] = a2 * b0 - a0 * b2
    m[slot, 2, 2] = a0 * b1 - a1 * b0


@_inline
def _log_map(m, slot, out, start, scale):
    """out[start:start + 3] = scale * log(r) for the rotation r = m[slot] (3, 3): the rotation
    vector, robust near 0 and pi (ikmdn.arms.rotations.log_map_t, step by step)."""
    r00, r01, r02 = m[slot, 0, 0], m[slot, 0, 1], m[slot, 0, 2]
    r10, r11, r12 = m[slot, 1, 0], m[slot, 1, 1], m[slot, 1, 2]
    r20, r21, r22 = m[slot, 2, 0], m[slot, 2, 1], m[slot, 2, 2]
    v0 = r21 - r12
    v1 = r02 - r20
    v2 = r10 - r01
    cos = 0.5 * (r00 + r11 + r22 - 1.0)
    if cos < -1.0:
        cos = -1.0
    elif cos > 1.0:
        cos = 1.0
    sin = 0.5 * np.sqrt(v0 * v0 + v1 * v1 + v2 * v2)
    angle = math.atan2(sin, cos)
    if sin < SMALL_SIN:
        factor = 0.5 + angle * angle / 12.0
    else:
        factor = angle / (2.0 * sin)
    w0, w1, w2 = v0 * factor, v1 * factor, v2 * factor
    if cos < 0:  # angle > pi/2: the axis from the symmetric part (R + R^T)/2 - cos I
        s00 = 0.5 * (r00 + r00) - cos
        s11 = 0.5 * (r11 + r11) - cos
        s22 = 0.5 * (r22 + r22) - cos
        s01 = 0.5 * (r01 + r10)
        s02 = 0.5 * (r02 + r20)
        s12 = 0.5 * (r12 + r21)
        if s00 >= s11 and s00 >= s22:  # the largest diagonal entry, the first of equals
            n = np.sqrt(s00 * (1.0 - cos))
            a0, a1, a2 = s00 / n, s01 / n, s02 / n
        elif s11 >= s22:
            n = np.sqrt(s11 * (1.0 - cos))
            a0, a1, a2 = s01 / n, s11 / n, s12 / n
        else:
            n = np.sqrt(s22 * (1.0 - cos))
            a0, a1, a2 = s02 / n, s12 / n, s22 / n
        sa = -angle if a0 * v0 + a1 * v1 + a2 * v2 < 0 else angle
        w0, w1, w2 = sa * a0, sa * a1, sa * a2
    out[start] = scale * w0
    out[start + 1] = scale * w1
    out[start + 2] = scale * w2


@_inline
def _residual(family, pose, weight, reached, x, r, rot):
    """Residual r (residual_dim,) of reached vs target x (target_dim,), as Arm.residual: the
    difference (planar hand angle wrapped into [-pi, pi)); for serial pose targets the position
    difference, then rotation_weight * log(R R_target^T). rot (3, 3, 3) is scratch."""
    if family == SERIAL and pose:
        for a in range(3):
            r[a] = reached[a] - x[a]
        _sixd_to_matrix(reached, 3, rot, 0)
        _sixd_to_matrix(x, 3, rot, 1)
        for i in range(3):
            for j in range(3):
                rot[2, i, j] = (rot[0, i, 0] * rot[1, j, 0] + rot[0, i, 1] * rot[1, j, 1]
                                + rot[0, i, 2] * rot[1, j, 2])
        _log_map(rot, 2, r, 3, weight)
    else:
        for a in range(x.shape[0]):
            d = reached[a] - x[a]
            if family == PLANAR and pose and a == 2:
                d = (d + math.pi) % TWO_PI - math.pi
            r[a] = d


@_inline
def _norm(r):
    """||r||, summed in order (as refinement always has)."""
    acc = r[0] * r[0]
    for t in range(1, r.shape[0]):
        acc += r[t] * r[t]
    return np.sqrt(acc)


# -- the LM step and loop ------------------------------------------------------------------------

@_inline
def damped_step(jac, r, lam, dq, low):
    """dq (dof,) solving (J^T J + lam I) dq = -J^T r for jac (e, dof), r (e,), by Cholesky
    (low (dof, dof) is scratch for the factor; NaN where J^T J + lam I is not positive definite)."""
    e, d = jac.shape
    for j in range(d):
        acc = jac[0, j] * jac[0, j]
        for t in range(1, e):
            acc += jac[t, j] * jac[t, j]
        diag = acc + lam
        for k in range(j):
            diag -= low[j, k] * low[j, k]
        low[j, j] = np.sqrt(diag)
        for i in range(j + 1, d):
            a = jac[0, i] * jac[0, j]
            for t in range(1, e):
                a += jac[t, i] * jac[t, j]
            for k in range(j):
                a -= low[i, k] * low[j, k]
            low[i, j] = a / low[j, j]
    for i in range(d):  # forward substitution L y = -J^T r (y kept in dq)
        g = jac[0, i] * r[0]
        for t in range(1, e):
            g += jac[t, i] * r[t]
        v = -g
        for k in range(i):
            v = v - low[i, k] * dq[k]
        dq[i] = v / low[i, i]
    for i in range(d - 1, -1, -1):  # back substitution L^T dq = y
        v = dq[i]
        for k in range(i + 1, d):
            v = v - low[k, i] * dq[k]
        dq[i] = v / low[i, i]


@_inline
def _freeze(lo, hi, periodic, q, jac, r):
    """Zero the Jacobian column of each bounded joint at a limit whose gradient (J^T r) would
    push it further out."""
    e = jac.shape[0]
    for d in range(q.shape[0]):
        if periodic[d]:
            continue
        below, above = q[d] <= lo[d], q[d] >= hi[d]
        if below or above:
            g = jac[0, d] * r[0]
            for t in range(1, e):
                g += jac[t, d] * r[t]
            if (below and g > 0) or (above and g < 0):
                for t in range(e):
                    jac[t, d] = 0.0


@_inline
def _copy(src, dst):
    """dst[:] = src for vectors (dof,), element by element."""
    for i in range(src.shape[0]):
        dst[i] = src[i]


@_inline
def _copy2(src, dst):
    """dst[:, :] = src for matrices, element by element."""
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[i, j] = src[i, j]


@_jit
def refine_kernel(kin, limits, settings, q0, x):
    """LM refinement of joints q0 (M, dof) towards targets x (M, target_dim), candidate by
    candidate, by the rules of ikmdn.refine: (q (M, dof), reached (M, target_dim), err (M,)).

    settings = (tol, max_iter, damping, down, up, max_damping, min_damping, stall).
    """
    m, dof = q0.shape
    out = (np.empty((m, dof)), np.empty((m, x.shape[1])), np.empty(m))
    refine_into(kin, limits, settings, q0, x, out)
    return out


@_jit
def refine_into(kin, limits, settings, q0, x, out):
    """refine_kernel writing its result into out = (q (M, dof), reached (M, target_dim), err (M,))
    (e.g. one thread's rows of a larger result)."""
    family, pose = kin[0], kin[1]
    dof = q0.shape[1]
    td = x.shape[1]
    rd = 6 if (family == SERIAL and pose) else td
    # The current state and a trial (copied over it when kept); scratch for kinematics and steps.
    state = (np.empty(dof), np.empty(dof), np.empty(dof), np.empty(td), np.empty(td),
             np.empty(td), np.empty(rd), np.empty(rd))
    matrices = (np.zeros((rd, dof)), np.zeros((rd, dof)), np.zeros((dof, dof)), np.empty((dof, 6)),
                np.empty((3, 4)))
    _refine_candidates(kin, limits, settings, q0, x, out, state, matrices, np.empty((3, 3, 3)))


@_jit
def _refine_candidates(kin, limits, settings, q0, x, out, state, matrices, rot):
    """refine_kernel's loop over candidates, writing out = (q, reached, err); state, matrices and
    rot are its scratch. Every array the inlined helpers take is a borrowed view: the caller owns
    them for the whole call."""
    family, pose, weight = kin[0], kin[1], kin[2]
    lengths, offsets, fixed, revolute = (_borrow(kin[3]), _borrow(kin[4]), _borrow(kin[5]),
                                         _borrow(kin[6]))
    lo, hi, home, periodic = (_borrow(limits[0]), _borrow(limits[1]), _borrow(limits[2]),
                              _borrow(limits[3]))
    tol, max_iter, damping, down, up, max_damping, min_damping, stall = settings
    max_iter = max(max_iter, 0)
    q_out, reached_out, err_out = out
    m, dof = q0.shape
    td = x.shape[1]
    q, q_new, dq, xc = _borrow(state[0]), _borrow(state[1]), _borrow(state[2]), _borrow(state[3])
    reached, reached_new = _borrow(state[4]), _borrow(state[5])
    r, r_new = _borrow(state[6]), _borrow(state[7])
    jac, jac_new, low = _borrow(matrices[0]), _borrow(matrices[1]), _borrow(matrices[2])
    work, frame, rot = _borrow(matrices[3]), _borrow(matrices[4]), _borrow(rot)
    for c in range(m):
        for a in range(td):
            xc[a] = x[c, a]
        for d in range(dof):
            q_new[d] = q0[c, d]
        lam = damping
        err = np.inf
        # One evaluation site (the helpers are inlined: compile time grows with every copy):
        # pass 0 evaluates the start, which is always taken; pass i >= 1 the i-th LM trial.
        for i in range(max_iter + 1):
            project(lo, hi, home, periodic, q_new)
            _kinematics(family, pose, weight, lengths, offsets, fixed, revolute, q_new,
                        reached_new, jac_new, work, frame)
            _residual(family, pose, weight, reached_new, xc, r_new, rot)
            err_new = _norm(r_new)
            better = i == 0 or err_new < err
            stalled = i > 0 and better and err - err_new <= stall * err
            if better:
                _copy(q_new, q)
                _copy(reached_new, reached)
                _copy(r_new, r)
                _copy2(jac_new, jac)
                err = err_new
            if i == 0:
                done = not err > tol
            else:
                lam = max(lam * (down if better else up), min_damping)
                done = not (err > tol and lam < max_damping) or stalled
            if done or i == max_iter:
                break
            _freeze(lo, hi, periodic, q, jac, r)
            damped_step(jac, r, lam, dq, low)
            for d in range(dof):
                q_new[d] = q[d] + dq[d]
        for d in range(dof):
            q_out[c, d] = q[d]
        for a in range(td):
            reached_out[c, a] = reached[a]
        err_out[c] = err


@_jit
def sorted_modes(weights, means, sigmas):
    """Mixture components heaviest first (stable for ties, as Mixture.sorted_by_weight), in
    float64: weights (N, K), means and sigmas (N, K, dof) -> the same shapes, sorted."""
    n, k = weights.shape
    dof = means.shape[2]
    w, mu, sd = np.empty((n, k)), np.empty((n, k, dof)), np.empty((n, k, dof))
    order = np.empty(k, dtype=np.int64)
    for i in range(n):
        for j in range(k):  # insertion sort: j goes after every earlier one at least as heavy
            p = j
            while p > 0 and weights[i, order[p - 1]] < weights[i, j]:
                order[p] = order[p - 1]
                p -= 1
            order[p] = j
        for j in range(k):
            c = order[j]
            w[i, j] = weights[i, c]
            for d in range(dof):
                mu[i, j, d] = means[i, c, d]
                sd[i, j, d] = sigmas[i, c, d]
    return w, mu, sd


@_jit
def merge_kernel(joints, weights, tol):
    """Duplicates among candidates joints (N, K, dof), heaviest first (ikmdn.solve.merge_duplicates):
    candidate j is merged into the first earlier distinct candidate whose every joint lies within
    tol of its own, modulo 2 pi (NaN never matches), which takes its weight. Returns (weights
    (N, K), a merged copy, distinct (N, K) bool)."""
    n, k, dof = joints.shape
    merged = weights.copy()
    distinct = np.ones((n, k), dtype=np.bool_)
    turns = np.empty((k, dof))
    for i in range(n):
        for j in range(k):
            for d in range(dof):
                turns[j, d] = joints[i, j, d] % TWO_PI  # then |wrap(a - b)| = min(g, 2 pi - g)
        for j in range(1, k):
            for a in range(j):
                if not distinct[i, a]:
                    continue
                same = True
                for d in range(dof):
                    gap = abs(turns[a, d] - turns[j, d])
                    if not min(gap, TWO_PI - gap) <= tol:
                        same = False
                        break
                if same:
                    merged[i, a] += merged[i, j]
                    merged[i, j] = 0.0
                    distinct[i, j] = False
                    break
    return merged, distinct


# -- single-candidate helpers for parity tests ------------------------------------------------

@_jit
def kinematics_one(kin, q, target_dim):
    """(reached (target_dim,), residual Jacobian (residual_dim, dof)) at joints q (dof,)."""
    family, pose, weight, lengths, offsets, fixed, revolute = kin
    dof = q.shape[0]
    rd = 6 if (family == SERIAL and pose) else target_dim
    reached, jac = np.empty(target_dim), np.zeros((rd, dof))
    _kinematics(family, pose, weight, lengths, offsets, fixed, revolute, q, reached, jac,
                np.empty((dof, 6)), np.empty((3, 4)))
    return reached, jac


@_jit
def residual_one(kin, reached, x):
    """Residual (residual_dim,) of reached vs target x (both (target_dim,))."""
    family, pose, weight = kin[0], kin[1], kin[2]
    rd = 6 if (family == SERIAL and pose) else x.shape[0]
    r = np.empty(rd)
    _residual(family, pose, weight, reached, x, r, np.empty((3, 3, 3)))
    return r


@_jit
def project_one(limits, q):
    """Joints q (dof,) projected onto the limits (a copy)."""
    out = q.copy()
    project(limits[0], limits[1], limits[2], limits[3], out)
    return out


if not CACHED:
    warnings.warn("ikmdn: no writable cache directory for the compiled refinement kernel (beside "
                  f"{__file__} or numba's user cache directory), so every process compiles it "
                  "again (seconds); set NUMBA_CACHE_DIR to a writable directory",
                  RuntimeWarning, stacklevel=2)


# -- arms as kernel data ------------------------------------------------------------------------

# id(arm) -> (weak reference to the arm, (kin, limits)); an entry leaves with its arm.
_ARM_DATA: dict[int, tuple[weakref.ref, tuple[tuple[Any, ...], tuple[Any, ...]]]] = {}


def _f64(values, shape=None) -> np.ndarray:
    out = np.array(values, dtype=np.float64, order="C")
    return out if shape is None else out.reshape(shape)


def arm_data(arm) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(kin, limits) tuples for the kernels from arm.kernel_data() and its limits, cached per arm
    object (arms do not change after construction)."""
    key = id(arm)
    cached = _ARM_DATA.get(key)
    if cached is not None and cached[0]() is arm:
        return cached[1]
    if not hasattr(arm, "kernel_data"):
        raise IKMDNError(f"arm {arm.name!r} ({type(arm).__name__}) gives no kernel_data(): "
                         "refinement supports planar and serial arms")
    data = arm.kernel_data()
    dof = arm.dof
    empty = np.zeros(0)
    if data["family"] == "planar":
        kin = (PLANAR, bool(data["orientation"]), 1.0, _f64(data["link_lengths"]),
               _f64(data["joint_offsets"]), np.zeros((0, 3, 4)), np.ones(dof, dtype=np.bool_))
    elif data["family"] == "serial":
        kin = (SERIAL, bool(data["pose"]), float(data["rotation_weight"]), empty, empty.copy(),
               _f64(data["fixed"], (dof + 1, 3, 4)),
               np.array(data["revolute"], dtype=np.bool_, order="C"))
    else:
        raise IKMDNError(f"unknown kernel family {data['family']!r} of arm {arm.name!r}; "
                         "expected 'planar' or 'serial'")
    bounds = arm.joint_limits
    limits = (_f64(bounds[:, 0]), _f64(bounds[:, 1]), _f64(arm.home),
              np.array(arm.continuous_joints, dtype=np.bool_, order="C"))
    _ARM_DATA[key] = (weakref.ref(arm, lambda _, key=key: _ARM_DATA.pop(key, None)), (kin, limits))
    return kin, limits
