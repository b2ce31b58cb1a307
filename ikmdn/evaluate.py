"""Metrics (defined once, used by training, benchmarks and reports). numpy only.

- error of a candidate: ||fk(q) - x|| (angles compared modulo 2 pi);
- RMS error: sqrt(mean(error^2)) over a test set (Bishop's measure);
- best-mode: the unrefined mean of the heaviest component; min-over-modes: the best of the K;
  sampled: a component drawn by weight, then a joint vector drawn from it;
- coverage: the share of the closed-form in-limit solutions that some refined candidate matches
  within 1e-6 rad (the closed form is the oracle here, never the product's answer).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ikmdn.arms import Arm, wrap_angle
from ikmdn.arms.closed_form import closed_form_ik
from ikmdn.data import make_ik_dataset
from ikmdn.mixture import Mixture


def rms(errors: np.ndarray) -> float:
    """Root mean square of errors (any shape): sqrt(mean(e^2))."""
    return float(np.sqrt(np.mean(np.square(errors))))


def candidate_errors(arm: Arm, joints: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Errors (N, K) of candidates joints (N, K, dof) against targets (N, target_dim)."""
    n, k, dof = joints.shape
    reached = arm.fk(joints.reshape(n * k, dof).astype(np.float64)).reshape(n, k, -1)
    return arm.target_error(reached, targets[:, None, :])


def mode_errors(arm: Arm, mixture: Mixture, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per-target unrefined errors (N,): best-mode and min-over-modes."""
    errors = candidate_errors(arm, mixture.means, targets)
    best = np.argmax(mixture.weights, axis=1)
    return {"best_mode": errors[np.arange(len(best)), best], "min_over_modes": errors.min(axis=1)}


def quick_metrics(arm: Arm, predict: Callable[[np.ndarray], Mixture], n: int = 5000,
                  seed: int = 1) -> dict[str, float]:
    """Best-mode and min-over-modes RMS error on n fresh reachable targets (seeded)."""
    targets = make_ik_dataset(arm, n, seed).inputs
    errors = mode_errors(arm, predict(targets), targets)
    return {"test_targets": n, "best_mode_rms": rms(errors["best_mode"]),
            "min_over_modes_rms": rms(errors["min_over_modes"])}


def branch_matches(joints: np.ndarray, branches: np.ndarray, valid: np.ndarray,
                   tol: float = 1e-6) -> np.ndarray:
    """(N, B) True where valid branch b of target n is matched by some candidate.

    joints (N, K, dof) candidates; branches (N, B, dof) closed-form solutions, valid (N, B).
    Match: every joint within tol rad, angles compared modulo 2 pi.
    """
    diff = np.abs(wrap_angle(joints[:, None, :, :] - branches[:, :, None, :])).max(axis=-1)
    return valid & (diff <= tol).any(axis=-1)


def coverage(arm: Arm, targets: np.ndarray, joints: np.ndarray, tol: float = 1e-6) -> dict[str, float]:
    """Share of the closed-form in-limit solutions matched by a candidate (N, K, dof) within tol.

    Returns {"coverage", "branches" (total valid closed-form solutions), "targets_fully_covered"}.
    """
    branches, valid = closed_form_ik(arm, targets)
    matched = branch_matches(joints, branches, valid, tol)
    total = int(valid.sum())
    return {"coverage": float(matched.sum() / max(total, 1)), "branches": total,
            "targets_fully_covered": float(np.mean((matched == valid).all(axis=1)))}
