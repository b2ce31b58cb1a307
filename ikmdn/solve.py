"""IKSolver: every mixture mode a candidate, forward-checked, refined, deduplicated. No torch."""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ikmdn.arms import Arm, wrap_angle
from ikmdn.arms.base import as_batch
from ikmdn.errors import IKMDNError
from ikmdn.mixture import Mixture
from ikmdn.refine import RefineSettings, default_settings, refine

MERGE_TOL = 1e-6  # rad: candidates closer than this (modulo 2 pi) are one solution


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
    to the heaviest candidate) and sigma 0.
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

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def solved(self) -> np.ndarray:
        """(N, K) distinct, in-limit candidates that reach their target within reach_tol."""
        return solved_mask(self.distinct, self.within_limits, self.errors, self.rotation_errors,
                           self.reach_tol)

    @cached_property
    def best_index(self) -> np.ndarray:
        """(N,) index of each target's answer: the heaviest solved candidate, else the closest."""
        weight_rank = np.where(self.solved, 2.0 + self.weights, 0.0)
        closest = np.argmin(np.where(self.distinct, self.errors, np.inf), axis=1)
        return np.where(self.solved.any(axis=1), np.argmax(weight_rank, axis=1), closest)

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
    def concatenate(parts: list[Solutions]) -> Solutions:
        """Join per-batch results along N."""
        first = parts[0]
        joined = {name: np.concatenate([getattr(p, name) for p in parts])
                  for name in first.arrays()}
        return Solutions(**joined, refined=first.refined, reach_tol=first.reach_tol, pose=first.pose,
                         fallback_seeds=first.fallback_seeds)


def solved_mask(distinct, within_limits, errors, rotation_errors, tol: float) -> np.ndarray:
    """Candidates that count as solutions: distinct, in limits, both errors <= tol."""
    return distinct & within_limits & (errors <= tol) & (rotation_errors <= tol)


def merge_duplicates(joints: np.ndarray, weights: np.ndarray, tol: float = MERGE_TOL):
    """Merge candidates (N, K, dof), heaviest first, that match a heavier one within tol
    (every joint, modulo 2 pi). Returns (weights (N, K) with merged weight summed, distinct (N, K))."""
    n, k, _ = joints.shape
    weights = weights.copy()
    distinct = np.ones((n, k), dtype=bool)
    rows = np.arange(n)
    for j in range(1, k):
        diff = np.abs(wrap_angle(joints[:, :j] - joints[:, j:j + 1])).max(axis=2)  # (N, j)
        match = (diff <= tol) & distinct[:, :j]
        has = match.any(axis=1)
        into = np.argmax(match, axis=1)
        weights[rows[has], into[has]] += weights[has, j]
        weights[has, j] = 0.0
        distinct[has, j] = False
    return weights, distinct


class IKSolver:
    """Solve IK for batches of targets with a trained model (.onnx through the runtime, or a
    training checkpoint, which needs torch)."""

    def __init__(self, model, refine_settings: RefineSettings | None = None,
                 reach_tol: float = 1e-6, batch_size: int = 16384, fallback_seeds: int | None = None,
                 seed: int = 0):
        """fallback_seeds: extra seeds tried for targets no mode solves (None: 0 for planar arms,
        64 for spatial chains), half drawn around the modes, half uniformly within the limits."""
        self.model = model
        self.arm: Arm = model.arm
        self.refine_settings = refine_settings or default_settings(self.arm)
        self.reach_tol = reach_tol
        self.batch_size = batch_size
        self.fallback_seeds = (0 if self.arm.kind == "planar" else 64) if fallback_seeds is None \
            else fallback_seeds
        self.seed = seed

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None, **kwargs) -> IKSolver:
        """An .onnx file runs through onnxruntime; a .pt checkpoint or run folder through torch."""
        path = Path(path)
        if path.suffix == ".onnx":
            from ikmdn.runtime import OnnxModel

            return cls(OnnxModel.load(path, threads), **kwargs)
        if not path.exists():
            raise IKMDNError(f"model {path} does not exist")
        try:
            from ikmdn.train import CheckpointModel
        except ImportError:
            raise IKMDNError(f"{path} is a training checkpoint, which needs torch; install "
                             "ikmdn[train] or export it to .onnx with `ikmdn export`") from None
        return cls(CheckpointModel.load(path), **kwargs)

    def solve(self, targets, refine: bool = True) -> Solutions:
        """Solutions for targets (N, target_dim) or one target (target_dim,), in batches."""
        x = as_batch(targets, self.arm.target_dim, "targets")
        if len(x) <= self.batch_size:
            return self._solve_batch(x, refine, np.random.default_rng([self.seed, 0]))
        # Fallback seeds are drawn per batch from (seed, first row): results do not depend on
        # how a caller splits its targets into solve() calls of batch_size rows.
        return Solutions.concatenate([
            self._solve_batch(x[s:s + self.batch_size], refine, np.random.default_rng([self.seed, s]))
            for s in range(0, len(x), self.batch_size)])

    def _extra_seeds(self, x: np.ndarray, mixture: Mixture, rng: np.random.Generator):
        """Best refined extra seed per target x (M, target_dim): (joints (M, dof), solved (M,))."""
        arm, m, s = self.arm, len(x), self.fallback_seeds
        near = np.stack([mixture.sample(rng) for _ in range((s + 1) // 2)], axis=1)  # (M, s1, dof)
        spread = near + mixture.sigmas.mean(axis=1, keepdims=True) * rng.standard_normal(near.shape)
        uniform = arm.sample_joints(m * (s // 2), rng).reshape(m, s // 2, arm.dof)
        seeds = np.concatenate([spread, uniform], axis=1)
        q, reached, _ = refine(arm, seeds.reshape(-1, arm.dof), np.repeat(x, seeds.shape[1], axis=0),
                               self.refine_settings)
        xs = np.repeat(x, seeds.shape[1], axis=0)
        ok = solved_mask(True, arm.within_limits(q), arm.target_error(reached, xs),
                         arm.rotation_error(reached, xs), self.reach_tol).reshape(m, -1)
        pick = np.argmax(ok, axis=1)
        return q.reshape(m, -1, arm.dof)[np.arange(m), pick], ok.any(axis=1)

    def _fallback(self, x, mixture: Mixture, rng, joints, positions, errors, rotation_errors,
                  within, distinct, weights, sigmas) -> np.ndarray:
        """For targets no candidate solves, put the best solving extra seed in the last slot (the
        arrays, (N, K, ...), are changed in place); returns (N,) True where that happened."""
        arm = self.arm
        fallback = np.zeros(len(x), dtype=bool)
        rows = np.flatnonzero(~solved_mask(distinct, within, errors, rotation_errors,
                                           self.reach_tol).any(axis=1))
        if rows.size == 0:
            return fallback
        q, ok = self._extra_seeds(x[rows], Mixture(mixture.weights[rows], mixture.means[rows],
                                                   mixture.sigmas[rows]), rng)
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
        positions[fix, slot] = arm.fk(q[ok])
        errors[fix, slot] = arm.target_error(positions[fix, slot], x[fix])
        rotation_errors[fix, slot] = arm.rotation_error(positions[fix, slot], x[fix])
        sigmas[fix, slot] = 0.0  # not a mixture component
        within[fix, slot], distinct[fix, slot], fallback[fix] = True, True, True
        return fallback

    def _solve_batch(self, x: np.ndarray, do_refine: bool, rng: np.random.Generator) -> Solutions:
        arm = self.arm
        mixture: Mixture = self.model.predict(x).sorted_by_weight()
        n, k = mixture.weights.shape
        flat = mixture.means.reshape(n * k, arm.dof).astype(np.float64)
        flat_targets = np.repeat(x, k, axis=0)
        weights = mixture.weights.astype(np.float64)
        sigmas = mixture.sigmas.astype(np.float64)
        if do_refine:
            flat, positions, _ = refine(arm, flat, flat_targets, self.refine_settings)
        else:
            flat = arm.wrap_joints(flat)
            positions = arm.fk(flat)
        errors = arm.target_error(positions, flat_targets)
        rotation_errors = arm.rotation_error(positions, flat_targets).reshape(n, k)
        joints = flat.reshape(n, k, arm.dof)
        positions = positions.reshape(n, k, arm.target_dim)
        errors = errors.reshape(n, k)
        within = arm.within_limits(flat).reshape(n, k)
        distinct = np.ones((n, k), dtype=bool)
        fallback = np.zeros(n, dtype=bool)
        if do_refine:
            weights, distinct = merge_duplicates(joints, weights)
            if self.fallback_seeds:
                fallback = self._fallback(x, mixture, rng, joints, positions, errors,
                                          rotation_errors, within, distinct, weights, sigmas)
            # Heaviest first, merged duplicates last: one flat gather per array.
            order = np.argsort(np.where(distinct, -weights, 1.0), axis=1, kind="stable")
            pick = (order + k * np.arange(n)[:, None]).ravel()
            joints, positions, sigmas = (a.reshape(n * k, a.shape[-1])[pick].reshape(a.shape)
                                         for a in (joints, positions, sigmas))
            errors, rotation_errors, within, weights, distinct = (
                a.ravel()[pick].reshape(n, k)
                for a in (errors, rotation_errors, within, weights, distinct))
        solved = solved_mask(distinct, within, errors, rotation_errors, self.reach_tol)
        return Solutions(x, joints, weights, sigmas, positions, errors, rotation_errors, within,
                         distinct, solved.any(axis=1), fallback, do_refine, self.reach_tol,
                         arm.pose_targets, self.fallback_seeds if do_refine else 0)
