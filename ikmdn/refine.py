"""Damped least squares (Levenberg-Marquardt) IK refinement: the rules, their settings, the entry point.

`refine(arm, q0, targets, settings)` polishes every candidate joint vector on its own, in float64,
by these rules (each constant a field of `RefineSettings`):

1. Projection. The start q0 is projected onto the limits: periodic joints (`arm.continuous_joints`,
   ranges of a full turn or more) move by whole turns to the in-limit value nearest `arm.home`
   (`Arm.wrap_joints`), the others are clipped (`Arm.project_to_limits`). Every trial point below
   is projected the same way, so every result lies within the limits.
2. Residual and error. r = arm.residual(fk(q), x): reached - target (angular target coordinates
   wrapped into [-pi, pi)); for pose targets the position difference, then rotation_weight *
   log(R R_target^T). The error is ||r||; a candidate starting with error <= `tol` is not moved.
3. Step. With the Jacobian J of r (for poses the geometric Jacobian, rotation rows weighted) and
   damping lam (initially `damping`): first the column of each bounded joint that sits at a limit
   (q <= lo or q >= hi) and whose gradient J^T r would push it further out is zeroed (frozen),
   recomputed every iteration from the current J and r (a column frozen before a rejected step
   stays zero until a step is accepted); then (J^T J + lam I) dq = -J^T r is solved by Cholesky and
   the trial point is project(q + dq).
4. Acceptance. The trial is kept only if its error is smaller (err_new < err); then q, fk(q), r
   and J move to it. The damping becomes max(lam * (`down` if kept else `up`), `min_damping`).
5. Stopping, per candidate: err <= `tol` (solved), lam >= `max_damping` (no step helps), a kept
   step that improved the error by at most `stall` * err (err taken before the step: a local
   minimum, e.g. a target outside the workspace or a solution beyond a joint limit), or
   `max_iter` iterations.

The result is (q, fk(q), err) at the last kept point. These rules exist in two media, pinned to
each other candidate by candidate on every arm family: the compiled per-candidate kernel
`ikmdn.kernels.refine_kernel` (numba, float64, no fastmath; the arm's kinematics compiled from
`arm.kernel_data()`; numba is imported on the first refinement), which `IKSolver` runs (as
`refine_into`, each thread writing its rows of one result), and the
torch module `ikmdn.refine_graph.RefineGraph`, exported into format-2 ONNX files
(tests/test_refine_kernel.py pins the kernel to the arms' numpy kinematics,
tests/test_export_format2.py the graph to the kernel).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ikmdn.arms import Arm
from ikmdn.errors import IKMDNError

MAX_ITER = 100_000   # LM iterations per candidate at most (the defaults: 30 and 100)


@dataclass(frozen=True)
class RefineSettings:
    """The constants of the LM rules (see the module docstring).

    tol: stop once the error ||r|| <= tol (target units); max_iter: iteration cap per candidate;
    damping: initial LM damping, multiplied by `down` after a kept step and `up` after a rejected
    one, never below min_damping; max_damping: stop once the damping reaches it; stall: stop when
    a kept step improves the error by at most this fraction (a local minimum, e.g. a target outside
    the workspace or a solution beyond a joint limit)."""

    tol: float = 1e-9
    max_iter: int = 30
    damping: float = 1e-6
    down: float = 0.1
    up: float = 10.0
    max_damping: float = 1e8
    stall: float = 0.1
    min_damping: float = 1e-12

    def __post_init__(self):
        numbers = {f: getattr(self, f) for f in ("tol", "damping", "down", "up", "max_damping",
                                                  "stall", "min_damping")}
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in numbers.values()):
            raise IKMDNError(f"refinement settings must be finite non-negative numbers, got {numbers}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) \
                or not 0 <= self.max_iter <= MAX_ITER:
            raise IKMDNError(f"max_iter must be an integer from 0 to {MAX_ITER}, got {self.max_iter!r}")

    def kernel_args(self) -> tuple[float, int, float, float, float, float, float, float]:
        """The settings tuple of `ikmdn.kernels.refine_kernel` (fixed types: one compiled kernel)."""
        return (float(self.tol), int(self.max_iter), float(self.damping), float(self.down),
                float(self.up), float(self.max_damping), float(self.min_damping), float(self.stall))


PARALLEL_MIN = 2048   # candidates per thread below which one thread is faster


def refine_threads() -> int:
    """Threads for large refinements: the CPUs this process may use, at most 8 (override with
    the IKMDN_REFINE_THREADS environment variable). The kernel releases the GIL and threads that
    wait sleep, so a busy machine costs no spin-waiting."""
    try:
        return max(1, int(os.environ["IKMDN_REFINE_THREADS"]))
    except (KeyError, ValueError):
        return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 1))


_POOL: ThreadPoolExecutor | None = None


def _pool(threads: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < threads:
        if _POOL is not None:
            _POOL.shutdown(wait=False)
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ikmdn-refine")
    return _POOL


def refine(arm: Arm, q0: np.ndarray, targets: np.ndarray,
           settings: RefineSettings = RefineSettings(), threads: int | None = None):
    """Polish joints q0 (M, dof) towards targets (M, target_dim) by the rules above.

    Returns (q (M, dof) within the limits, reached = fk(q) (M, target_dim), error ||r|| (M,)).
    Large batches are split over `threads` threads (default `refine_threads()`); candidates are
    independent, so the result does not depend on the split.
    """
    from ikmdn import kernels  # numba loads here, not on `import ikmdn`

    q0 = np.require(q0, np.float64, ("C", "W"))
    x = np.require(targets, np.float64, ("C", "W"))
    if q0.ndim != 2 or q0.shape[1] != arm.dof or x.shape != (len(q0), arm.target_dim):
        raise IKMDNError(f"refine needs joints (M, {arm.dof}) and targets (M, {arm.target_dim}), "
                         f"got {q0.shape} and {x.shape}")
    kin, limits = kernels.arm_data(arm)
    args = settings.kernel_args()
    out = (np.empty_like(q0), np.empty_like(x), np.empty(len(q0)))
    parts = min(threads or refine_threads(), len(q0) // PARALLEL_MIN)
    if parts <= 1:
        kernels.refine_into(kin, limits, args, q0, x, out)
        return out
    bounds = np.linspace(0, len(q0), parts + 1).astype(int)
    jobs = [_pool(parts).submit(kernels.refine_into, kin, limits, args, q0[a:b], x[a:b],
                                tuple(o[a:b] for o in out))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for job in jobs:
        job.result()
    return out


def residual_norm(arm: Arm, reached: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The refinement's error ||r|| (...,) of reached vs targets (..., target_dim): for pose
    targets position and weighted rotation together (the error that `tol` bounds)."""
    return np.linalg.norm(arm.residual(reached, targets), axis=-1)


def default_settings(arm: Arm) -> RefineSettings:
    """Refinement defaults for arm: planar arms stop early at local minima (throughput); spatial
    chains get up to 100 iterations and patience (stall 1e-3) near singular configurations."""
    if arm.kind == "planar":
        return RefineSettings()
    return RefineSettings(max_iter=100, stall=1e-3)
