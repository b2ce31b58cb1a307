"""Batched damped least squares (Levenberg-Marquardt) IK refinement, numpy float64.

Works in the component-major layout (joints (dof, M), Jacobian (target_dim, dof, M)) so every
operation runs over contiguous rows of M candidates; the small dof x dof systems are solved by
an unrolled Cholesky factorisation, vectorised over the candidates. Only candidates still
iterating are computed on; a candidate's result is written back when it stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ikmdn.arms import Arm


@dataclass(frozen=True)
class RefineSettings:
    """tol: stop once ||fk(q) - x|| <= tol (target units); max_iter: iteration cap per candidate;
    damping: initial LM damping, multiplied by `down` after a good step and `up` after a bad one;
    stall: stop when a good step improves the error by less than this fraction (a local minimum,
    e.g. a target outside the workspace or a solution beyond a joint limit)."""

    tol: float = 1e-9
    max_iter: int = 30
    damping: float = 1e-6
    down: float = 0.1
    up: float = 10.0
    max_damping: float = 1e8
    stall: float = 0.1


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum_t a[t] * b[t] for (t, M) arrays, as a loop over the few rows (faster than .sum(0))."""
    acc = a[0] * b[0]
    for t in range(1, len(a)):
        acc += a[t] * b[t]
    return acc


def damped_step(jac: np.ndarray, r: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Solve (J^T J + lam I) dq = -J^T r for every candidate: jac (e, d, M), r (e, M) -> (d, M)."""
    d = jac.shape[1]
    cols = [jac[:, i] for i in range(d)]
    g = [-_dot(c, r) for c in cols]
    # Cholesky factor L of A = J^T J + lam I, entry by entry (A is symmetric positive definite).
    low: dict[tuple[int, int], np.ndarray] = {}
    for j in range(d):
        diag = _dot(cols[j], cols[j]) + lam
        for k in range(j):
            diag -= low[j, k] ** 2
        low[j, j] = np.sqrt(diag)
        for i in range(j + 1, d):
            a = _dot(cols[i], cols[j])
            for k in range(j):
                a -= low[i, k] * low[j, k]
            low[i, j] = a / low[j, j]
    y: list[np.ndarray] = []
    for i in range(d):
        v = g[i]
        for k in range(i):
            v = v - low[i, k] * y[k]
        y.append(v / low[i, i])
    x = np.empty((d, len(lam)))
    for i in reversed(range(d)):
        v = y[i]
        for k in range(i + 1, d):
            v = v - low[k, i] * x[k]
        x[i] = v / low[i, i]
    return x


def refine(arm: Arm, q0: np.ndarray, targets: np.ndarray,
           settings: RefineSettings = RefineSettings()):
    """Polish joints q0 (M, dof) towards targets (M, target_dim).

    Returns (q (M, dof), reached = fk(q) (M, target_dim), error (M,)).

    Each step solves (J^T J + lambda I) dq = -J^T r with the arm's analytic Jacobian (joints held
    at a limit they push against are frozen), projects q + dq onto the limits (wrap or clip) and
    keeps it only if the error drops. Every row stops on its own: at tol, at a local minimum
    (stalled progress or saturated damping), or at max_iter.
    """
    dof, td, rd = arm.dof, arm.target_dim, arm.residual_dim
    # One array of per-candidate rows, so that compacting the active set is a single gather:
    # q (dof), reached (td), residual (rd), error (1), target (td), damping (1).
    rows = np.cumsum([0, dof, td, rd, 1, td, 1])
    state = np.empty((rows[-1], len(q0)))

    def views(a):
        return [a[rows[i]:rows[i + 1]] for i in range(len(rows) - 1)]

    q, reached, r, err, x, lam = views(state)
    q[:] = arm.project_to_limits(np.asarray(q0, dtype=np.float64).T, axis=0)
    x[:] = np.asarray(targets, dtype=np.float64).T
    reached[:], jac = arm.kinematics_t(q, True)
    r[:] = arm.residual(reached, x, axis=0)
    err[0] = np.sqrt(_dot(r, r))
    lam[:] = settings.damping
    lo, hi = arm.joint_limits.T[:, :, None]
    bounded = ~arm.continuous_joints[:, None]
    active = np.flatnonzero(err[0] > settings.tol)
    work = state[:, active]  # the candidates still iterating, compacted
    jac = jac[:, :, active]
    for iteration in range(settings.max_iter):
        if active.size == 0:
            break
        qa, reached_a, ra, err_a, xa, lam_a = views(work)
        # Freeze joints held at a limit that a descent step would push further out.
        at_limit = bounded & ((qa <= lo) | (qa >= hi))
        cols = np.flatnonzero(at_limit.any(axis=0))
        if cols.size:
            qc, gradient = qa[:, cols], np.einsum("tdm,tm->dm", jac[:, :, cols], ra[:, cols])
            pinned = at_limit[:, cols] & (((qc <= lo) & (gradient > 0)) | ((qc >= hi) & (gradient < 0)))
            jac[:, :, cols] *= ~pinned
        q_new = arm.project_to_limits(qa + damped_step(jac, ra, lam_a[0]), axis=0)
        reached_new, jac_new = arm.kinematics_t(q_new, True)
        r_new = arm.residual(reached_new, xa, axis=0)
        err_new = np.sqrt(_dot(r_new, r_new))
        better = err_new < err_a[0]
        stalled = better & (err_a[0] - err_new <= settings.stall * err_a[0])
        for old, new in ((qa, q_new), (reached_a, reached_new), (ra, r_new), (err_a, err_new),
                         (jac, jac_new)):
            np.copyto(old, new, where=better)
        lam_a[0] = np.maximum(lam_a[0] * np.where(better, settings.down, settings.up), 1e-12)
        keep = (err_a[0] > settings.tol) & (lam_a[0] < settings.max_damping) & ~stalled
        if iteration == settings.max_iter - 1:
            keep[:] = False
        if not keep.all():
            state[:, active[~keep]] = work[:, ~keep]
            active, work, jac = active[keep], work[:, keep], jac[:, :, keep]
    return q.T, reached.T, err[0]


def default_settings(arm: Arm) -> RefineSettings:
    """Refinement defaults for arm: planar arms stop early at local minima (throughput); spatial
    chains get up to 100 iterations and patience (stall 1e-3) near singular configurations."""
    if arm.kind == "planar":
        return RefineSettings()
    return RefineSettings(max_iter=100, stall=1e-3)
