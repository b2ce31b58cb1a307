"""IKSolver: every mixture mode a candidate, forward-checked, refined, deduplicated. No torch."""

from __future__ import annotations

import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from ikmdn.arms import Arm, wrap_angle
from ikmdn.arms.base import as_batch
from ikmdn.errors import IKMDNError
from ikmdn.mixture import Mixture, reorder
from ikmdn.refine import RefineSettings, default_settings, refine, refine_threads, residual_norm

MERGE_TOL = 1e-6  # rad: candidates closer than this (modulo 2 pi) are one solution
MODES = ("all", "best")
BATCH_WORKERS = 2  # batches of one solve() in flight at once (see IKSolver.solve)
# A solve() of more than SPLIT_MIN targets runs in at least two batches, so that two are in
# flight and one's network inference overlaps the other's refinement (1,000 Panda poses: MDN
# 137 -> 126 ms, autoregressive 95 -> 82 ms, 2 threads); SPLIT_MIN keeps tiny batches, whose
# per-batch overhead would outweigh that, whole.
SPLIT_MIN = 512
NEAR_DAMPING = 1e-3  # initial LM damping of a `near` reference seed (see IKSolver.near_settings)
NEAR_ACCEPT = 0.25   # rad: mode "best" keeps the reference's own solution within this of it
NEAR_JITTER, NEAR_JITTER_SEEDS = 0.05, 8   # rad, count: seeds around a reference that stalls


@dataclass(frozen=True)
class Solutions:
    """Candidates for N targets, K per target, heaviest first.

    targets (N, target_dim); joints (N, K, dof) rad; weights (N, K) (a merged duplicate's weight
    moves to the heavier candidate it matches, leaving 0); sigmas (N, K, dof) rad (the network's,
    unchanged by refinement); positions (N, K, target_dim) = fk(joints); errors (N, K) =
    ||positions - targets|| (for pose targets the hand position distance); rotation_errors (N, K)
    rad between reached and target hand orientations (0 for position targets); within_limits
    (N, K); distinct (N, K) False for merged duplicates; reachable (N,) some distinct in-limit
    candidate has error and rotation error <= reach_tol; fallback (N,) True where no mixture mode
    converged and a candidate (a merged duplicate, else the lightest) was replaced by the best of
    the solver's extra seeds: it has weight 0 (the network gave it none; the replaced weight moves
    to the heaviest candidate) and sigma 0. distances (N, K), only when solved `near` a reference:
    each candidate's joint distance to it (see `joint_distance`); candidates are then ordered
    nearest first, and the reference itself, tried as a seed, appears as a candidate of weight 0.
    """

    targets: np.ndarray
    joints: np.ndarray
    weights: np.ndarray
    sigmas: np.ndarray
    positions: np.ndarray
    errors: np.ndarray
    rotation_errors: np.ndarray
    within_limits: np.ndarray
    distinct: np.ndarray
    reachable: np.ndarray
    fallback: np.ndarray
    refined: bool
    reach_tol: float
    pose: bool = False
    fallback_seeds: int = 0
    distances: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def solved(self) -> np.ndarray:
        """(N, K) distinct, in-limit candidates that reach their target within reach_tol."""
        return solved_mask(self.distinct, self.within_limits, self.errors, self.rotation_errors,
                           self.reach_tol)

    @cached_property
    def best_index(self) -> np.ndarray:
        """(N,) index of each target's answer: the solved candidate nearest the reference (when
        solved `near` one), else the heaviest solved one; where none is solved, the closest.
        Unrefined (without `near`), the first: candidates are then ranked by forward-kinematics
        residual, so best() is the best raw candidate after one fk pass."""
        if not self.refined and self.distances is None:
            return np.zeros(len(self), dtype=np.intp)
        if self.distances is not None:
            pick = np.argmin(np.where(self.solved, self.distances, np.inf), axis=1)
        else:
            pick = np.argmax(np.where(self.solved, 2.0 + self.weights, 0.0), axis=1)
        closest = np.argmin(np.where(self.distinct, self.errors, np.inf), axis=1)
        return np.where(self.solved.any(axis=1), pick, closest)

    def best(self) -> np.ndarray:
        """One joint vector per target (N, dof): see best_index."""
        return self.joints[np.arange(len(self)), self.best_index]

    def candidate(self, i: int, k: int) -> dict[str, Any]:
        """Candidate k of target i as a JSON-able dict (the solve JSON's candidate object; pose
        targets add rotation_error_deg)."""
        out = {"joints": self.joints[i, k].tolist(), "weight": float(self.weights[i, k]),
               "sigma": self.sigmas[i, k].tolist(), "position": self.positions[i, k].tolist(),
               "error": float(self.errors[i, k]), "within_limits": bool(self.within_limits[i, k])}
        if self.pose:
            out["rotation_error_deg"] = float(np.degrees(self.rotation_errors[i, k]))
        return out

    def distinct_solutions(self, i: int) -> list[dict[str, Any]]:
        """Target i's distinct candidates, heaviest first, as JSON-able dicts."""
        return [self.candidate(i, int(k)) for k in np.flatnonzero(self.distinct[i])]

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields by name (for .npz output)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    @staticmethod
    def concatenate(parts: Iterable[Solutions], n: int | None = None) -> Solutions:
        """Join per-batch results along N. Given n, their total length, parts may be an iterator:
        each is copied into place as it comes (while later batches are still being solved)."""
        if n is None:
            parts = list(parts)
            n = sum(len(p) for p in parts)
        parts = iter(parts)
        first = next(parts)
        joined = {name: np.empty((n, *a.shape[1:]), a.dtype) for name, a in first.arrays().items()}
        at = 0
        for part in chain([first], parts):
            for name, a in joined.items():
                a[at:at + len(part)] = getattr(part, name)
            at += len(part)
        return replace(first, **joined)

    def take(self, rows: np.ndarray) -> Solutions:
        """The Solutions of targets rows (an index array), in that order."""
        return replace(self, **{name: a[rows] for name, a in self.arrays().items()})


def solved_mask(distinct, within_limits, errors, rotation_errors, tol: float) -> np.ndarray:
    """Candidates that count as solutions: distinct, in limits, both errors <= tol."""
    return distinct & within_limits & (errors <= tol) & (rotation_errors <= tol)


def joint_distance(arm: Arm, q: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Joint-space distance (...,) between joints q (..., dof) and reference (broadcastable):
    sqrt(sum_j d_j^2) with d_j = q_j - r_j (rad; metres for prismatic joints), wrapped into
    [-pi, pi) for joints that can wrap (`Arm.wrapping_joints`: free-turning and multi-turn
    joints), so whole turns cost nothing; a joint with stops at +-pi is measured the long way."""
    d = joint_delta(arm, q, reference)
    return np.sqrt(np.einsum("...j,...j->...", d, d))


def joint_delta(arm: Arm, q: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Joint changes (..., dof) q - reference, wrapped into [-pi, pi) for joints that can wrap
    (`Arm.wrapping_joints`): the way each joint really travels."""
    d = np.asarray(q, dtype=np.float64) - reference
    return np.where(arm.wrapping_joints, wrap_angle(d), d)


@dataclass(frozen=True)
class PathSolution:
    """A sequence of targets solved in order, each answer nearest the previous one.

    targets (N, target_dim); joints (N, dof); errors (N,) and rotation_errors (N,) as in
    Solutions; reachable (N,); jumps (N,) the largest wrap-aware joint change (rad) from the
    previous answer (the first from `start`); switches (N,) True where the jump exceeds
    switch_threshold: a discontinuity, such as a switch of IK branch.
    """

    targets: np.ndarray
    joints: np.ndarray
    errors: np.ndarray
    rotation_errors: np.ndarray
    reachable: np.ndarray
    jumps: np.ndarray
    switches: np.ndarray
    switch_threshold: float

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def largest_jump(self) -> float:
        """The largest joint change (rad) between consecutive answers."""
        return float(self.jumps.max()) if len(self.jumps) else 0.0


def merge_duplicates(joints: np.ndarray, weights: np.ndarray, tol: float = MERGE_TOL):
    """Merge candidates (N, K, dof), heaviest first, that match a heavier one within tol
    (every joint, modulo 2 pi). Returns (weights (N, K) with merged weight summed, distinct (N, K))."""
    from ikmdn.kernels import merge_kernel  # numba loads here, not on `import ikmdn`

    return merge_kernel(np.require(joints, np.float64, "C"), np.require(weights, np.float64, "C"),
                        float(tol))


class IKSolver:
    """Solve IK for batches of targets with a trained model (.onnx through the runtime, or a
    training checkpoint, which needs torch). A model is anything with `arm`, `components` and
    `predict(targets, threads=None) -> Mixture` (threads: the batch's share, a hint)."""

    def __init__(self, model, refine_settings: RefineSettings | None = None,
                 reach_tol: float = 1e-6, batch_size: int = 16384,
                 fallback_seeds: int | None = None, seed: int = 0, threads: int | None = None):
        """fallback_seeds: extra seeds tried for targets no mode solves (None: 0 for planar arms,
        64 for spatial chains), half drawn around the modes, half uniformly within the limits.
        threads: refinement threads (None: `ikmdn.refine.refine_threads()`). A solve() runs in
        batches of at most batch_size targets, and of at most half its targets when it has more
        than SPLIT_MIN; more than one batch: two in flight, sharing the threads."""
        if threads is not None and threads < 1:
            raise IKMDNError(f"threads must be a positive integer, got {threads}")
        self.model = model
        self.threads = threads
        self.arm: Arm = model.arm
        self.refine_settings = refine_settings or default_settings(self.arm)
        self.reach_tol = reach_tol
        self.batch_size = batch_size
        self.fallback_seeds = (0 if self.arm.kind == "planar" else 64) if fallback_seeds is None \
            else fallback_seeds
        self.seed = seed

    @property
    def near_settings(self) -> RefineSettings:
        """The refinement of a `near` reference seed: the same rules with an initial damping of at
        least NEAR_DAMPING; a shorter first step keeps it on the branch nearest the reference
        (scripts/bench_latency.py: the nearest UR5 solution for 99.9% of references 0.1 rad from
        one, 99.5% with the modes' 1e-6)."""
        return replace(self.refine_settings, damping=max(self.refine_settings.damping, NEAR_DAMPING))

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None, **kwargs) -> IKSolver:
        """An .onnx file runs through onnxruntime; a .pt checkpoint or run folder through torch."""
        path = Path(path)
        if path.suffix == ".onnx":
            from ikmdn.runtime import OnnxModel

            return cls(OnnxModel.load(path, threads), threads=threads, **kwargs)
        if not path.exists():
            raise IKMDNError(f"model {path} does not exist")
        try:
            from ikmdn.checkpoint import CheckpointModel
        except ImportError:
            raise IKMDNError(f"{path} is a training checkpoint, which needs torch; install "
                             "ikmdn[train] or export it to .onnx with `ikmdn export`") from None
        return cls(CheckpointModel.load(path), threads=threads, **kwargs)

    def solve(self, targets, refine: bool = True, mode: str = "all", near=None) -> Solutions:
        """Solutions for targets (N, target_dim) or one target (target_dim,), in batches.

        mode "all": every mixture mode refined, duplicates merged, heaviest first. mode "best":
        one answer per target (K = 1): candidates refined one at a time, heaviest first (nearest
        first with `near`), stopping at the first that solves; the fallback seeds as in "all".
        Without `near` the two can answer differently: "best" takes the heaviest single mode that
        solves, while "all" sums the weights of modes that reach the same solution before
        best() picks the heaviest (e.g. 38% of random UR5 poses). With `near`, "all" answers the
        nearest of all the solutions it finds; "best" stops earlier (see _solve_best), so it can
        miss a nearer solution that only a farther-starting mode reaches.
        near: reference joints (dof,) or (N, dof), e.g. the robot's current joints: candidates are
        ranked by `joint_distance` to it, the reference itself is tried as a seed (first, in
        "best"), best() returns the nearest solution, and joints with more than one turn of
        range are reported on the turn nearest it (else nearest the middle of their range).
        """
        if mode not in MODES:
            raise IKMDNError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        x = as_batch(targets, self.arm.target_dim, "targets")
        ref = None if near is None else self._reference(near, len(x))
        size = self.batch_size if len(x) <= SPLIT_MIN else min(self.batch_size, -(-len(x) // 2))
        if len(x) <= size:
            return self._solve_batch(x, refine, np.random.default_rng([self.seed, 0]), mode, ref,
                                     self.threads)
        # Two batches at a time, sharing the threads: one's serial bookkeeping and network
        # inference overlap the other's refinement. Each batch is computed as it would be alone
        # (fallback seeds are drawn per batch from (seed, first row)), so results are those of
        # one batch after another whatever the threads. (The network's outputs can differ in the
        # last bits with the number of rows per onnxruntime call, so the split itself is not
        # free.)
        starts = range(0, len(x), size)
        threads = self.threads or refine_threads()
        workers = min(BATCH_WORKERS, threads, len(starts))

        def batch(s: int) -> Solutions:
            return self._solve_batch(x[s:s + size], refine,
                                     np.random.default_rng([self.seed, s]), mode,
                                     None if ref is None else ref[s:s + size],
                                     max(1, threads // workers))

        if workers == 1:
            return Solutions.concatenate(map(batch, starts), len(x))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="ikmdn-batch")
        try:
            return Solutions.concatenate(pool.map(batch, starts), len(x))
        finally:
            pool.shutdown(cancel_futures=True)

    def _reference(self, near, n: int, what: str = "near") -> np.ndarray:
        """near as a validated (n, dof) array (one row is repeated)."""
        ref = as_batch(near, self.arm.dof, f"{what} (reference joints)")
        if len(ref) not in (1, n):
            raise IKMDNError(f"{what} must be one joint vector or one per target ({n}), got {len(ref)} rows")
        outside = ~self.arm.within_limits(ref, atol=1e-6)
        if outside.any():
            row = int(np.argmax(outside))
            lo, hi = self.arm.joint_limits.T
            j = int(np.argmax((ref[row] < lo - 1e-6) | (ref[row] > hi + 1e-6)))
            raise IKMDNError(f"{what} joint {self.arm.joint_names[j]} = {ref[row, j]:.6g} (row {row}) "
                             f"is outside its limits [{lo[j]:.6g}, {hi[j]:.6g}]")
        return np.broadcast_to(ref, (n, self.arm.dof)) if len(ref) == 1 else ref

    def solve_path(self, targets, start, switch_threshold: float = 0.5) -> PathSolution:
        """Targets (N, target_dim) solved in order, each with mode "best" near the previous answer
        (the first near `start`, (dof,) joints); switches flags jumps above switch_threshold rad."""
        x = as_batch(targets, self.arm.target_dim, "targets")
        first = self._reference(start, 1, "start")
        previous = first[0]
        if not (math.isfinite(switch_threshold) and switch_threshold > 0):
            raise IKMDNError(f"switch_threshold must be a positive number, got {switch_threshold}")
        steps = []
        for i in range(len(x)):
            sol = self.solve(x[i:i + 1], mode="best", near=previous)
            steps.append(sol)
            previous = sol.joints[0, 0]
        if not steps:
            dof = self.arm.dof
            empty = np.zeros((0,))
            return PathSolution(x, np.zeros((0, dof)), empty, empty, empty.astype(bool), empty,
                                empty.astype(bool), switch_threshold)
        sol = Solutions.concatenate(steps)
        joints = sol.joints[:, 0]
        before = np.concatenate([first, joints[:-1]])
        jumps = np.abs(joint_delta(self.arm, joints, before)).max(axis=1)
        return PathSolution(x, joints, sol.errors[:, 0], sol.rotation_errors[:, 0], sol.reachable,
                            jumps, jumps > switch_threshold, switch_threshold)

    def _extra_seeds(self, x: np.ndarray, mixture: Mixture, rng: np.random.Generator,
                     threads: int | None):
        """Best refined extra seed per target x (M, target_dim), refined on `threads` threads:
        (joints (M, dof), reached targets fk(joints) (M, target_dim), solved (M,))."""
        arm, m, s = self.arm, len(x), self.fallback_seeds
        near = np.stack([mixture.sample(rng) for _ in range((s + 1) // 2)], axis=1)  # (M, s1, dof)
        spread = near + mixture.sigmas.mean(axis=1, keepdims=True) * rng.standard_normal(near.shape)
        uniform = arm.sample_joints(m * (s // 2), rng).reshape(m, s // 2, arm.dof)
        seeds = np.concatenate([spread, uniform], axis=1)
        xs = np.repeat(x, seeds.shape[1], axis=0)
        q, reached, _ = refine(arm, seeds.reshape(-1, arm.dof), xs, self.refine_settings,
                               threads=threads)
        ok = self._solved(q, reached, xs).reshape(m, -1)
        pick, rows = np.argmax(ok, axis=1), np.arange(m)
        return (q.reshape(m, -1, arm.dof)[rows, pick], reached.reshape(m, -1, arm.target_dim)[rows, pick],
                ok.any(axis=1))

    def _fallback(self, x, mixture: Mixture, rng, threads, joints, positions, errors,
                  rotation_errors, within, distinct, weights, sigmas) -> np.ndarray:
        """For targets no candidate solves, put the best solving extra seed in the last slot (the
        arrays, (N, K, ...), are changed in place; mixture is the network's, unsorted); returns
        (N,) True where that happened."""
        arm = self.arm
        fallback = np.zeros(len(x), dtype=bool)
        rows = np.flatnonzero(~solved_mask(distinct, within, errors, rotation_errors,
                                           self.reach_tol).any(axis=1))
        if rows.size == 0:
            return fallback
        subset = Mixture(mixture.weights[rows], mixture.means[rows], mixture.sigmas[rows])
        q, reached, ok = self._extra_seeds(x[rows], subset.sorted_by_weight(), rng, threads)
        fix = rows[ok]
        # The slot of a merged duplicate if there is one (its weight is already 0), else the
        # lightest candidate, whose weight moves to the heaviest (slot 0, always distinct); with
        # K = 1 the fallback takes the only slot and its weight.
        k = distinct.shape[1]
        slot = np.where((~distinct[fix]).any(axis=1), np.argmax(~distinct[fix], axis=1), k - 1)
        moved = distinct[fix, slot] & (slot > 0)
        weights[fix[moved], 0] += weights[fix[moved], slot[moved]]
        weights[fix[slot > 0], slot[slot > 0]] = 0.0
        joints[fix, slot] = q[ok]
        positions[fix, slot] = reached[ok]
        errors[fix, slot] = arm.target_error(reached[ok], x[fix])
        rotation_errors[fix, slot] = arm.rotation_error(reached[ok], x[fix])
        sigmas[fix, slot] = 0.0  # not a mixture component
        within[fix, slot], distinct[fix, slot], fallback[fix] = True, True, True
        return fallback

    def _solved(self, q: np.ndarray, reached: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(M,) candidates q (M, dof) reaching targets x (M, target_dim) within reach_tol, in limits."""
        arm = self.arm
        return solved_mask(True, arm.within_limits(q), arm.target_error(reached, x),
                           arm.rotation_error(reached, x), self.reach_tol)

    def _solve_batch(self, x: np.ndarray, do_refine: bool, rng: np.random.Generator, mode: str,
                     near: np.ndarray | None, threads: int | None) -> Solutions:
        """One batch of solve(), refined on `threads` threads."""
        if mode == "best":
            return self._solve_best(x, do_refine, rng, near, threads)
        arm = self.arm
        mixture: Mixture = self.model.predict(x, threads=threads)
        if do_refine:   # sorted heaviest first, in float64, in one compiled pass
            from ikmdn.kernels import sorted_modes

            weights, means, sigmas = sorted_modes(mixture.weights, mixture.means, mixture.sigmas)
        else:
            ordered = mixture.sorted_by_weight()
            weights, means, sigmas = (a.astype(np.float64) for a in
                                      (ordered.weights, ordered.means, ordered.sigmas))
        if near is not None and do_refine:  # the reference is one more seed, of weight 0
            means = np.concatenate([means, near[:, None]], axis=1)
            weights = np.concatenate([weights, np.zeros((len(x), 1))], axis=1)
            sigmas = np.concatenate([sigmas, np.zeros((len(x), 1, arm.dof))], axis=1)
        n, k = weights.shape
        flat = means.reshape(n * k, arm.dof)
        flat_targets = np.repeat(x, k, axis=0)
        if do_refine and near is not None:   # the modes, then the references (their own damping)
            modes = (k - 1) * n
            order = np.arange(n * k).reshape(n, k)
            pick = np.concatenate([order[:, :-1].ravel(), order[:, -1]])
            q, reached, err = refine(arm, flat[pick[:modes]], flat_targets[pick[:modes]],
                                     self.refine_settings, threads=threads)
            q_ref, reached_ref, err_ref = refine(arm, near, x, self.near_settings,
                                                 threads=threads)
            flat, positions = np.empty_like(flat), np.empty((n * k, arm.target_dim))
            residuals = np.empty(n * k)
            flat[pick] = np.concatenate([q, q_ref])
            positions[pick] = np.concatenate([reached, reached_ref])
            residuals[pick] = np.concatenate([err, err_ref])
        elif do_refine:
            flat, positions, residuals = refine(arm, flat, flat_targets, self.refine_settings,
                                                threads=threads)
        else:
            flat = arm.wrap_joints(flat)
            positions = arm.fk(flat)
            residuals = residual_norm(arm, positions, flat_targets)
        # Without a hand orientation the error is the refinement's own ||r|| (the same numbers).
        errors = arm.target_error(positions, flat_targets) if arm.pose_targets else residuals
        rotation_errors = arm.rotation_error(positions.reshape(n, k, arm.target_dim), x[:, None, :])
        joints = flat.reshape(n, k, arm.dof)
        positions = positions.reshape(n, k, arm.target_dim)
        errors = errors.reshape(n, k)
        within = arm.within_limits(flat).reshape(n, k)
        distinct = np.ones((n, k), dtype=bool)
        fallback = np.zeros(n, dtype=bool)
        if do_refine:
            weights, distinct = merge_duplicates(joints, weights)
            if self.fallback_seeds:
                fallback = self._fallback(x, mixture, rng, threads, joints, positions, errors,
                                          rotation_errors, within, distinct, weights, sigmas)
        distances = None
        if near is not None:
            joints = arm.wrap_joints(joints, reference=near[:, None, :])   # the turn nearest near
            distances = joint_distance(arm, joints, near[:, None, :])
        # Heaviest (nearest with `near`; unrefined: smallest forward-kinematics residual) first,
        # merged duplicates last, rearranged in place.
        if distances is not None:
            key = distances
        elif do_refine:
            key = -weights
        else:
            key = residuals.reshape(n, k)
        order = np.argsort(np.where(distinct, key, np.inf), axis=1, kind="stable")
        reorder(order, joints, positions, sigmas, errors, rotation_errors, within, weights, distinct,
                *(() if distances is None else (distances,)))
        solved = solved_mask(distinct, within, errors, rotation_errors, self.reach_tol)
        return Solutions(x, joints, weights, sigmas, positions, errors, rotation_errors, within,
                         distinct, solved.any(axis=1), fallback, do_refine, self.reach_tol,
                         arm.pose_targets, self.fallback_seeds if do_refine else 0, distances)

    def _solve_best(self, x: np.ndarray, do_refine: bool, rng: np.random.Generator,
                    near: np.ndarray | None, threads: int | None) -> Solutions:
        """One answer per target: candidates refined one at a time in rank order, each target
        stopping at the first candidate that solves. With `near`: the reference is tried first
        and kept when the solution it reaches lies within NEAR_ACCEPT of it; otherwise the modes
        follow nearest first, and a target stops once its nearest solution so far is no farther
        from the reference than the next mode's start (LM rarely ends nearer the reference than
        where it starts)."""
        arm, n, dof = self.arm, len(x), self.arm.dof
        joints = np.zeros((n, dof))
        weights, sigmas = np.zeros(n), np.zeros((n, dof))
        score = np.full(n, np.inf)          # residual of the answer so far (lower is better)
        found = np.full(n, np.inf)          # with near: distance of the nearest solution so far
        done = np.zeros(n, dtype=bool)
        fallback = np.zeros(n, dtype=bool)

        def offer(rows, q, err, w, sig, ok):
            """Keep candidates q for rows where they solve (nearer than the solution so far, with
            near), or, while no candidate solves, where they come closer to the target."""
            if near is None:
                better = ok | (~done[rows] & (err < score[rows]))
                dist = np.zeros(len(rows))
            else:
                dist = joint_distance(arm, q, near[rows])
                better = (ok & (dist < found[rows])) | (~ok & ~np.isfinite(found[rows])
                                                        & (err < score[rows]))
            take = rows[better]
            joints[take], weights[take], sigmas[take] = q[better], w[better], sig[better]
            score[take] = np.where(ok[better], -1.0, err[better])
            found[take] = np.where(ok[better], dist[better], found[take])
            if near is None:
                done[rows[ok]] = True

        if near is not None and do_refine:   # the nearest candidate of all: the reference itself
            q, reached, err = refine(arm, near, x, self.near_settings, threads=threads)
            offer(np.arange(n), q, err, np.zeros(n), np.zeros((n, dof)), self._solved(q, reached, x))
            done |= found <= NEAR_ACCEPT
            # Where it stalls (e.g. at a singular fold the solution lies just across), seeds
            # jittered around the reference, some of them across the fold.
            stalled = np.flatnonzero(~done)
            if stalled.size:
                jitter = np.random.default_rng([self.seed, 1, stalled.size]).standard_normal(
                    (stalled.size, NEAR_JITTER_SEEDS, dof)) * NEAR_JITTER
                seeds = (near[stalled, None, :] + jitter).reshape(-1, dof)
                xs = np.repeat(x[stalled], NEAR_JITTER_SEEDS, axis=0)
                q, reached, err = refine(arm, seeds, xs, self.near_settings, threads=threads)
                ok = self._solved(q, reached, xs).reshape(stalled.size, -1)
                dist = joint_distance(arm, q, np.repeat(near[stalled], NEAR_JITTER_SEEDS, axis=0))
                rank = np.where(ok, dist.reshape(ok.shape), np.inf + err.reshape(ok.shape))
                rank = np.where(ok.any(axis=1, keepdims=True), rank, err.reshape(ok.shape))
                pick = np.argmin(rank, axis=1) + NEAR_JITTER_SEEDS * np.arange(stalled.size)
                offer(stalled, q[pick], err[pick], np.zeros(stalled.size),
                      np.zeros((stalled.size, dof)), ok.ravel()[pick])
                done |= found <= NEAR_ACCEPT
        rows = np.flatnonzero(~done)
        if rows.size:
            mixture = self.model.predict(x[rows], threads=threads).sorted_by_weight()
            means = mixture.means.astype(np.float64)
            k_all = mixture.components
            order = np.arange(k_all)[None].repeat(rows.size, axis=0)
            if near is not None:
                start = joint_distance(arm, means, near[rows, None, :])
                order = np.argsort(start, axis=1, kind="stable")
                start = np.take_along_axis(start, order, axis=1)
                done[rows] = found[rows] <= start[:, 0]
            elif not do_refine:   # the best raw candidate: smallest residual after one fk pass
                flat = arm.wrap_joints(means.reshape(-1, dof))
                residual = residual_norm(arm, arm.fk(flat), np.repeat(x[rows], k_all, axis=0))
                order = np.argsort(residual.reshape(rows.size, k_all), axis=1, kind="stable")
            for r in range(k_all if do_refine else 1):
                left = np.flatnonzero(~done[rows])
                if left.size == 0:
                    break
                k = order[left, r]
                seeds, w = means[left, k], mixture.weights[left, k].astype(np.float64)
                sig = mixture.sigmas[left, k].astype(np.float64)
                if do_refine:
                    q, reached, err = refine(arm, seeds, x[rows[left]], self.refine_settings,
                                             threads=threads)
                    offer(rows[left], q, err, w, sig, self._solved(q, reached, x[rows[left]]))
                else:
                    offer(rows[left], arm.wrap_joints(seeds), np.zeros(left.size), w, sig,
                          np.zeros(left.size, dtype=bool))
                if near is not None and r + 1 < k_all:
                    done[rows[left]] = found[rows[left]] <= start[left, r + 1]
            stuck = rows[~np.isfinite(found[rows])] if near is not None else rows[~done[rows]]
            if do_refine and self.fallback_seeds and stuck.size:
                sub = np.searchsorted(rows, stuck)
                q, _, ok = self._extra_seeds(x[stuck], Mixture(mixture.weights[sub], mixture.means[sub],
                                                            mixture.sigmas[sub]), rng, threads)
                offer(stuck, q, np.full(stuck.size, np.inf), np.zeros(stuck.size),
                      np.zeros((stuck.size, dof)), ok)
                fallback[stuck[ok]] = True
        if near is not None:
            joints = arm.wrap_joints(joints, reference=near)
        positions = arm.fk(joints)
        errors = arm.target_error(positions, x)
        rotation_errors = arm.rotation_error(positions, x)
        within = arm.within_limits(joints)
        solved = solved_mask(True, within, errors, rotation_errors, self.reach_tol)
        distances = None if near is None else joint_distance(arm, joints, near)[:, None]
        return Solutions(x, joints[:, None], weights[:, None], sigmas[:, None], positions[:, None],
                         errors[:, None], rotation_errors[:, None], within[:, None],
                         np.ones((n, 1), dtype=bool), solved, fallback, do_refine, self.reach_tol,
                         arm.pose_targets, self.fallback_seeds if do_refine else 0, distances)
