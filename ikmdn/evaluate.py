"""Metrics (defined once, used by training, benchmarks and reports). numpy only.

- error of a candidate: ||fk(q) - x|| (angles compared modulo 2 pi);
- RMS error: sqrt(mean(error^2)) over a test set (Bishop's measure);
- best-mode: the unrefined mean of the heaviest component; min-over-modes: the best of the K;
  sampled: a component drawn by weight, then a joint vector drawn from it;
- coverage: the share of the closed-form in-limit solutions that some refined candidate matches
  within 1e-6 rad (the closed form is the oracle here, never the product's answer).
"""

from __future__ import annotations

import time
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


def error_vector(arm: Arm, reached: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The vector (N, d) whose norm is the error of DESIGN.md: reached - targets (angles wrapped)
    for plain targets, the hand position difference (N, 3) for pose targets."""
    if arm.pose_targets:
        return np.asarray(reached, dtype=np.float64)[:, :3] - np.asarray(targets)[:, :3]
    return arm.residual(reached, targets)


def post_mse(arm: Arm, reached: np.ndarray, targets: np.ndarray) -> float:
    """The blog post's "RMSE": a mean squared error over coordinates, mean((fk(q) - x)^2).

    reached, targets (N, target_dim); the coordinates are those of error_vector. It equals
    rms(errors)^2 / d (d = 2 on a planar position arm), not an RMS distance: report it only under
    its own name.
    """
    return float(np.mean(np.square(error_vector(arm, reached, targets))))


def error_stats(arm: Arm, answers: Answers, targets: np.ndarray) -> dict[str, float]:
    """RMS error, percentiles (p50, p90, p99, max) and the post's MSE of one method's answers.

    Where targets carry an orientation (a hand angle, or a 3-D pose) also the position RMS
    (length units) and the orientation RMS (degrees), each on its own.
    """
    e = answers.errors
    stats = {"rms": rms(e), **{f"p{p}": float(np.percentile(e, p)) for p in PERCENTILES},
             "max": float(e.max()), "post_mse": post_mse(arm, answers.reached, targets)}
    if arm.pose_targets:
        stats["position_rms"] = stats["rms"]  # for poses the error is the position distance
        stats["orientation_rms_deg"] = float(np.degrees(rms(arm.rotation_error(answers.reached,
                                                                                targets))))
    elif arm.angular_targets.any():
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
    """The hand position (N, p) of targets or reached points (N, target_dim): x, y(, z)."""
    points = np.asarray(points)
    return points[:, :3] if arm.pose_targets else points[:, ~arm.angular_targets]


def outer_reach(arm: Arm, n: int = 200_000, seed: int = 0) -> float:
    """The radius of the outer workspace boundary: the largest distance of the hand from the base.

    Estimated as the maximum over fk of n joint vectors drawn uniformly within the limits
    (seeded); for a two-link arm that can straighten the shortfall is ~1e-10 of the reach.
    """
    joints = arm.sample_joints(n, np.random.default_rng(seed))
    return float(np.linalg.norm(position_coordinates(arm, arm.fk(joints)), axis=1).max())


def averaging_stats(arm: Arm, targets: np.ndarray, answers: Answers, reach: float) -> dict:
    """How far one set of answers (N targets) sits from the solution branches: Bishop's
    averaging effect.

    joint_mean, joint_std (dof,) rad; radial_margin: mean of reach - ||hand|| (how far inside the
    outer workspace boundary the hands lie: a least-squares network that averages the elbow
    branches straightens the arm and pushes the hand out). Where the arm has a closed form:
    to_nearest_branch, the mean joint-space distance (rad, Euclidean over joints, angles modulo
    2 pi) to the nearest valid branch; over the targets with exactly two valid branches
    (two_branch_targets of them), midpoint_gap (dof,), the mean |q_j - midpoint_j| per joint, and
    to_branch_midpoint, the mean joint-space distance to the midpoint of the two (where a
    least-squares answer lands; on Bishop's arm the midpoint has theta2 = pi, the straight arm),
    and radial_margin_two_branch, the radial margin over those targets.
    """
    radius = np.linalg.norm(position_coordinates(arm, answers.reached), axis=1)
    stats: dict = {"joint_mean": answers.joints.mean(axis=0).tolist(),
                   "joint_std": answers.joints.std(axis=0).tolist(),
                   "radial_margin": float(np.mean(reach - radius)),
                   "to_nearest_branch": None, "to_branch_midpoint": None, "midpoint_gap": None,
                   "two_branch_targets": 0, "radial_margin_two_branch": None}
    if not has_closed_form(arm):
        return stats
    branches, valid = closed_form_ik(arm, targets)
    q = answers.joints
    distance = np.linalg.norm(wrap_angle(q[:, None, :] - np.nan_to_num(branches)), axis=-1)
    some = valid.any(axis=1)
    if some.any():
        stats["to_nearest_branch"] = float(np.where(valid, distance, np.inf)[some].min(axis=1).mean())
    two = valid.sum(axis=1) == 2
    if two.any():
        pair = branches[two][valid[two]].reshape(-1, 2, arm.dof)
        midpoint = pair[:, 0] + 0.5 * wrap_angle(pair[:, 1] - pair[:, 0])
        gap = np.abs(wrap_angle(q[two] - midpoint))
        stats.update(to_branch_midpoint=float(np.linalg.norm(gap, axis=1).mean()),
                     midpoint_gap=gap.mean(axis=0).tolist(), two_branch_targets=int(two.sum()),
                     radial_margin_two_branch=float(np.mean(reach - radius[two])))
    return stats


@dataclass(frozen=True)
class Evaluation:
    """One model evaluated on one test set.

    targets (N, target_dim); mixture: the model's prediction for the targets (float32, sorted
    heaviest first); solutions: the refined Solutions (N, K); answers: one Answers per METHODS;
    metrics: the JSON-able summary (see evaluate_solver).
    """

    targets: np.ndarray
    mixture: Mixture
    solutions: object
    answers: dict[str, Answers]
    metrics: dict


def _timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def evaluate_solver(solver, targets: np.ndarray, seed: int) -> Evaluation:
    """Evaluate an IKSolver on targets (N, target_dim); seed drives the sampled method.

    metrics: "model" (source, arm, kind, components, refine_tol, reach_tol), "errors" (per
    METHODS: rms, p50, p90, p99, max, post_mse), "coverage" (against the closed form; None
    without one),
    "solutions_per_target" (mean count of distinct in-limit refined candidates within
    reach_tol), "reachable" (share of targets with one), "within_limits" (share of the K raw
    means, and of the distinct refined candidates), "throughput" (targets per second: refined and
    unrefined solve, and the closed form where it exists, each timed once after a warm-up).
    """
    arm = solver.arm
    n = len(targets)
    solver.solve(targets[:64])  # warm-up: sessions, caches
    mixture = solver.model.predict(targets).sorted_by_weight()
    _, unrefined_s = _timed(lambda: solver.solve(targets, refine=False))
    solutions, refined_s = _timed(lambda: solver.solve(targets))
    answers = method_answers(arm, mixture, solutions, targets, np.random.default_rng(seed))
    throughput = {"refined_targets_per_s": n / refined_s, "unrefined_targets_per_s": n / unrefined_s}
    cover = None
    if has_closed_form(arm):
        _, closed_s = _timed(lambda: closed_form_ik(arm, targets))
        throughput.update(closed_form_targets_per_s=n / closed_s,
                          refined_over_closed_form=closed_s / refined_s)
        cover = coverage(arm, targets, solutions.joints)
    k = mixture.weights.shape[1]
    raw_within = arm.within_limits(mixture.means.reshape(n * k, arm.dof)).mean()
    metrics = {
        "model": {"source": str(getattr(solver.model, "source", "")), "arm": arm.name,
                  "kind": solver.model.train_config.get("kind", "mdn"), "components": k,
                  "refine_tol": solver.refine_settings.tol, "reach_tol": solver.reach_tol},
        "errors": {m: error_stats(arm, answers[m], targets) for m in METHODS},
        "coverage": cover,
        "solutions_per_target": float(solutions.solved.sum(axis=1).mean()),
        "reachable": float(solutions.reachable.mean()),
        "within_limits": {"unrefined_modes": float(raw_within),
                          "refined_candidates": float(solutions.within_limits[solutions.distinct].mean())},
        "throughput": throughput,
    }
    return Evaluation(targets, mixture, solutions, answers, metrics)
