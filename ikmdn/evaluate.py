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
from dataclasses import dataclass

import numpy as np

from ikmdn.arms import Arm, wrap_angle
from ikmdn.arms.closed_form import closed_form_ik, has_closed_form
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


# -- full evaluation of one model (used by `ikmdn evaluate` and its report) --------------------

METHODS = ("best_mode", "min_over_modes", "sampled", "refined")
METHOD_LABELS = {"best_mode": "best mode (unrefined)", "min_over_modes": "min over modes (unrefined)",
                 "sampled": "sampled (the post's method)", "refined": "refined (best candidate)"}
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Answers:
    """One joint vector per target from one method.

    joints (N, dof) rad; reached = fk(joints) (N, target_dim); errors (N,) = ||reached - targets||
    (the arm's target_error: Euclidean, angles compared modulo 2 pi).
    """

    joints: np.ndarray
    reached: np.ndarray
    errors: np.ndarray

    @classmethod
    def of(cls, arm: Arm, joints: np.ndarray, targets: np.ndarray) -> Answers:
        """Forward-check joints (N, dof) against targets (N, target_dim)."""
        joints = np.asarray(joints, dtype=np.float64)
        reached = arm.fk(joints)
        return cls(joints, reached, arm.target_error(reached, targets))


def post_mse(arm: Arm, reached: np.ndarray, targets: np.ndarray) -> float:
    """The blog post's "RMSE": a mean squared error over coordinates, mean((fk(q) - x)^2).

    reached, targets (N, target_dim). It equals rms(errors)^2 / target_dim, not an RMS distance;
    report it only under its own name.
    """
    return float(np.mean(np.square(arm.residual(reached, targets))))


def error_stats(arm: Arm, answers: Answers, targets: np.ndarray) -> dict[str, float]:
    """RMS error, percentiles (p50, p90, p99, max) and the post's MSE of one method's answers.

    For arms with angular target coordinates (poses) also the position RMS (length units) and the
    orientation RMS (degrees), each over its own coordinates.
    """
    e = answers.errors
    stats = {"rms": rms(e), **{f"p{p}": float(np.percentile(e, p)) for p in PERCENTILES},
             "max": float(e.max()), "post_mse": post_mse(arm, answers.reached, targets)}
    if arm.angular_targets.any():
        r = arm.residual(answers.reached, targets)
        stats["position_rms"] = rms(np.linalg.norm(r[:, ~arm.angular_targets], axis=1))
        stats["orientation_rms_deg"] = float(np.degrees(
            rms(np.linalg.norm(r[:, arm.angular_targets], axis=1))))
    return stats


def method_answers(arm: Arm, mixture: Mixture, solutions, targets: np.ndarray,
                   rng: np.random.Generator) -> dict[str, Answers]:
    """Answers per METHODS for targets (N, target_dim).

    best_mode: mean of the heaviest component; min_over_modes: the mean closest to its target
    (an oracle choice); sampled: Mixture.sample with rng; refined: Solutions.best() of the refined
    solutions (heaviest solved candidate, else the closest).
    """
    rows = np.arange(len(targets))
    closest = np.argmin(candidate_errors(arm, mixture.means, targets), axis=1)
    joints = {"best_mode": mixture.best_mode(), "min_over_modes": mixture.means[rows, closest],
              "sampled": mixture.sample(rng), "refined": solutions.best()}
    return {m: Answers.of(arm, joints[m], targets) for m in METHODS}


def position_coordinates(arm: Arm, points: np.ndarray) -> np.ndarray:
    """The length-valued coordinates (N, p) of targets or reached points (N, target_dim)."""
    return np.asarray(points)[:, ~arm.angular_targets]


def outer_reach(arm: Arm, n: int = 200_000, seed: int = 0) -> float:
    """The radius of the outer workspace boundary: the largest distance of the hand from the base.

    Estimated as the maximum over fk of n joint vectors drawn uniformly within the limits
    (seeded); for a two-link arm that can straighten the shortfall is ~1e-10 of the reach.
    """
    joints = arm.sample_joints(n, np.random.default_rng(seed))
    return float(np.linalg.norm(position_coordinates(arm, arm.fk(joints)), axis=1).max())


def averaging_stats(arm: Arm, targets: np.ndarray, answers: Answers, reach: float) -> dict:
    """How far one set of answers sits from the solution branches (Bishop's averaging effect).

    joint_mean and joint_std (dof,) rad; radial_margin: mean of reach - ||hand|| (how far inside
    the outer workspace boundary the hands are; a least-squares network that averages the elbow
    branches straightens the arm and pushes the hand out towards the boundary); where the arm has
    a closed form, over targets with two valid branches: to_nearest_branch, the mean joint-space
    distance (rad, Euclidean over joints, angles modulo 2 pi) to the closer branch, and
    to_branch_midpoint, to the midpoint of the two branches (the least-squares answer).
    """
    radius = np.linalg.norm(position_coordinates(arm, answers.reached), axis=1)
    stats: dict = {"joint_mean": answers.joints.mean(axis=0).tolist(),
                   "joint_std": answers.joints.std(axis=0).tolist(),
                   "radial_margin": float(np.mean(reach - radius)),
                   "to_nearest_branch": None, "to_branch_midpoint": None, "two_branch_targets": 0}
    if not has_closed_form(arm):
        return stats
    branches, valid = closed_form_ik(arm, targets)
    both = valid.all(axis=1)
    if not both.any():
        return stats
    b, q = branches[both], answers.joints[both]
    midpoint = b[:, 0] + 0.5 * wrap_angle(b[:, 1] - b[:, 0])
    to_branch = np.linalg.norm(wrap_angle(q[:, None, :] - b), axis=-1).min(axis=1)
    stats.update(to_nearest_branch=float(to_branch.mean()),
                 to_branch_midpoint=float(np.linalg.norm(wrap_angle(q - midpoint), axis=-1).mean()),
                 two_branch_targets=int(both.sum()))
    return stats
