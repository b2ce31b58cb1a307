"""Metrics (defined once, used by training, benchmarks and reports). numpy only.

- error of a candidate: ||fk(q) - x|| (angles compared modulo 2 pi);
- RMS error: sqrt(mean(error^2)) over a test set (Bishop's measure);
- best-mode: the unrefined mean of the heaviest component; min-over-modes: the best of the K;
  sampled: a component drawn by weight, then a joint vector drawn from it;
- coverage: the share of the closed-form in-limit solutions that some refined candidate matches
  within 1e-6 rad (the closed form is the oracle here, never the product's answer); per branch b
  of closed_form_ik, the share of the targets with a valid branch b whose branch b is matched.

Spatial arms (kind "serial", lengths in metres) also get position errors in mm and, for pose
targets, rotation errors in degrees (the unweighted angle between the two orientations).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ikmdn.arms import Arm, wrap_angle
from ikmdn.arms.closed_form import closed_form_ik, has_closed_form
from ikmdn.arms.closed_form_spatial import rrr_dh, ur_dh
from ikmdn.arms.planar import PlanarArm
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


def coverage(arm: Arm, targets: np.ndarray, joints: np.ndarray, tol: float = 1e-6) -> dict:
    """Share of the closed-form in-limit solutions matched by a candidate (N, K, dof) within tol.

    Returns {"coverage", "branches" (total valid closed-form solutions), "targets_fully_covered",
    "per_branch", "branch_order" (see branch_order)}. per_branch has one entry per branch index b
    of closed_form_ik, {"branch": b, "label" (see branch_labels), "valid" (targets whose branch b
    exists: reachable, in limits, not a duplicate of an earlier branch), "matched" (of those, the
    targets where a candidate matches it), "coverage" (matched / valid, None where valid is 0)}.
    """
    branches, valid = closed_form_ik(arm, targets)
    matched = branch_matches(joints, branches, valid, tol)
    total = int(valid.sum())
    labels = branch_labels(arm) or [f"branch {b}" for b in range(valid.shape[1])]
    per_branch = [{"branch": b, "label": labels[b], "valid": int(v), "matched": int(m),
                   "coverage": float(m / v) if v else None}
                  for b, (v, m) in enumerate(zip(valid.sum(axis=0), matched.sum(axis=0), strict=True))]
    return {"coverage": float(matched.sum() / max(total, 1)), "branches": total,
            "targets_fully_covered": float(np.mean((matched == valid).all(axis=1))),
            "per_branch": per_branch, "branch_order": branch_order(arm)}


# Branch b of closed_form_ik, in the oracle's order (ikmdn.arms.closed_form and
# closed_form_spatial). The sign facts (which joint is >= 0) follow from the formulas; "elbow up"
# means the elbow lies above the line from the shoulder to the hand (rrr-type, base upright).
_PLANAR_BRANCHES = ("link 2 counter-clockwise of link 1", "link 2 clockwise of link 1")
_RRR_BRANCHES = ("waist toward target, elbow down, q3 >= 0",
                 "waist toward target, elbow up, q3 <= 0",
                 "waist turned away, elbow up, q3 >= 0",
                 "waist turned away, elbow down, q3 <= 0")
_UR_BRANCHES = tuple(f"shoulder {s}, wrist q5 {w} 0, elbow q3 {e} 0"
                     for s in ("left", "right") for w in (">", "<") for e in (">=", "<="))


_BRANCH_ORDER = {
    "planar": "Branches 0 and 1 are the two elbow configurations of the closed form: link 2 "
              "turned counter-clockwise (relative link angle +acos) or clockwise (-acos) from "
              "link 1.",
    "rrr": "b = 2 x shoulder + elbow. Shoulder 0: the waist faces the target (q1 = atan2(y, x) "
           "in the base frame); shoulder 1: the waist is turned half a turn away and the arm "
           "reaches back over the top. Elbow 0: q3 >= 0; elbow 1: q3 <= 0. With the waist facing "
           "the target q3 >= 0 puts the elbow below the line from the shoulder to the hand "
           "(elbow down), with the waist turned away above it (elbow up).",
    "ur": "b = 4 x shoulder + 2 x wrist + elbow, the order of the analytic solution (Hawkins "
          "2013). Shoulder: the pan angle q1 = atan2(y5, x5) + asin(d4 / r) (left: seen from "
          "above, the vertical plane of the upper arm and forearm passes left of the wrist "
          "centre p5 = p - d6 z6, which lies at distance r from the base axis) or "
          "atan2(y5, x5) + pi - asin(d4 / r) (right). Wrist: q5 > 0 or q5 < 0 (the wrist "
          "flipped). Elbow: q3 >= 0 or q3 <= 0 (which of them is elbow up depends on the "
          "shoulder branch and on where the wrist lies).",
}


def branch_order(arm: Arm) -> str | None:
    """A paragraph describing the branch order of closed_form_ik(arm); None without a closed form.

    A branch is invalid for a target where it is unreachable, out of the joint limits, singular
    (a continuum of solutions), or equal to an earlier branch.
    """
    if not has_closed_form(arm):
        return None
    family = "planar" if isinstance(arm, PlanarArm) else "rrr" if rrr_dh(arm) is not None else "ur"
    singular = "" if family == "planar" else ", singular (a continuum of solutions)"
    return (f"{_BRANCH_ORDER[family]} A branch does not exist for a target where it is "
            f"unreachable, outside the joint limits{singular} or equal to an earlier branch.")


def branch_labels(arm: Arm) -> list[str] | None:
    """A short description of each branch b of closed_form_ik(arm) (B,), None without a closed form.

    Planar arms: the two elbow branches (relative link angle +acos, -acos). rrr-type arms: b =
    2 * shoulder + elbow, the waist facing the target (q1 = atan2(y, x)) or turned half a turn away,
    then q3 >= 0 or <= 0 (which puts the elbow below or above the shoulder-hand line, the other
    way round when the waist is turned away). UR-type arms: b = 4 * shoulder + 2 * wrist + elbow:
    the shoulder pan theta1 = atan2(y5, x5) + asin(d4 / r) (left: seen from the base, the arm's
    plane passes left of the wrist centre) or pi - asin(d4 / r) (right), then the sign of q5
    (wrist), then of q3 (elbow).
    """
    if not has_closed_form(arm):
        return None
    if isinstance(arm, PlanarArm):
        return list(_PLANAR_BRANCHES)
    if rrr_dh(arm) is not None:
        return list(_RRR_BRANCHES)
    if ur_dh(arm) is not None:
        return list(_UR_BRANCHES)
    return None


# -- full evaluation of one model (used by `ikmdn evaluate` and its report) --------------------

METHODS = ("best_mode", "min_over_modes", "sampled", "refined")
METHOD_LABELS = {"best_mode": "best mode (unrefined)", "min_over_modes": "min over modes (unrefined)",
                 "sampled": "sampled (the post's method)", "refined": "refined (best candidate)"}
PERCENTILES = (50, 90, 99)
POSE_METHODS = ("best_mode", "min_over_modes", "refined")  # the pose figures' methods


def in_metres(arm: Arm) -> bool:
    """True for spatial chains (kind "serial"), whose lengths are metres: their reports give
    position errors in mm (and rotation errors in degrees for pose targets)."""
    return arm.kind == "serial"


def spread(values: np.ndarray) -> dict[str, float]:
    """RMS, percentiles (p50, p90, p99) and max of values (N,)."""
    v = np.asarray(values, dtype=np.float64)
    return {"rms": rms(v), **{f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES},
            "max": float(v.max())}


def pose_error_stats(arm: Arm, position: np.ndarray, rotation: np.ndarray) -> dict[str, dict]:
    """{"position_mm": spread of position (N,) m in mm, "rotation_deg": spread of rotation (N,)
    rad in degrees (pose targets only)}."""
    out = {"position_mm": spread(1000.0 * np.asarray(position))}
    if arm.pose_targets:
        out["rotation_deg"] = spread(np.degrees(rotation))
    return out


def mode_pose_errors(arm: Arm, mixture: Mixture, targets: np.ndarray) -> dict[str, dict]:
    """Unrefined per-target errors of the K means: {"best_mode", "min_over_modes"}, each
    {"position" (N,) (target_error), "rotation" (N,) rad (rotation_error)}.

    min_over_modes takes each minimum over the K means on its own: the closest position and the
    closest orientation may come from different modes (each a lower bound for one pick).
    """
    n, k, dof = mixture.means.shape
    reached = arm.fk(mixture.means.reshape(n * k, dof).astype(np.float64)).reshape(n, k, -1)
    position = arm.target_error(reached, targets[:, None, :])
    rotation = arm.rotation_error(reached, targets[:, None, :])
    rows, best = np.arange(n), np.argmax(mixture.weights, axis=1)
    return {"best_mode": {"position": position[rows, best], "rotation": rotation[rows, best]},
            "min_over_modes": {"position": position.min(axis=1), "rotation": rotation.min(axis=1)}}


@dataclass(frozen=True)
class Answers:
    """One joint vector per target from one method.

    joints (N, dof) rad; reached = fk(joints) (N, target_dim); errors (N,) = ||reached - targets||
    (the arm's target_error: Euclidean, angles compared modulo 2 pi; the hand position distance
    for pose targets); rotation_errors (N,) rad, the angle between the reached and the target
    orientation (0 without pose targets).
    """

    joints: np.ndarray
    reached: np.ndarray
    errors: np.ndarray
    rotation_errors: np.ndarray | None = None

    @classmethod
    def of(cls, arm: Arm, joints: np.ndarray, targets: np.ndarray) -> Answers:
        """Forward-check joints (N, dof) against targets (N, target_dim)."""
        joints = np.asarray(joints, dtype=np.float64)
        reached = arm.fk(joints)
        return cls(joints, reached, arm.target_error(reached, targets),
                   arm.rotation_error(reached, targets))


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
    (length units) and the orientation RMS (degrees), each on its own. Spatial arms (in_metres)
    add pose_error_stats: "position_mm" (and "rotation_deg" for pose targets), each a spread.
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
    if in_metres(arm):
        rotation = answers.rotation_errors
        if rotation is None:
            rotation = arm.rotation_error(answers.reached, targets)
        stats.update(pose_error_stats(arm, answers.errors, rotation))
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
    metrics: the JSON-able summary (see evaluate_solver); pose_errors: per POSE_METHODS
    {"position" (N,), "rotation" (N,) rad}, min_over_modes as in mode_pose_errors.
    """

    targets: np.ndarray
    mixture: Mixture
    solutions: object
    answers: dict[str, Answers]
    metrics: dict
    pose_errors: dict[str, dict[str, np.ndarray]] | None = None


def _timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def evaluate_solver(solver, targets: np.ndarray, seed: int) -> Evaluation:
    """Evaluate an IKSolver on targets (N, target_dim); seed drives the sampled method.

    metrics: "model" (source, arm, kind, components, refine_tol, reach_tol), "errors" (per
    METHODS: rms, p50, p90, p99, max, post_mse; for spatial arms also position_mm and, for pose
    targets, rotation_deg, see error_stats; min_over_modes takes the position and the rotation
    minimum over the modes each on its own), "coverage" (against the closed form, with
    per_branch; None without one), "solutions_per_target" (mean count of distinct in-limit
    refined candidates within reach_tol), "solutions_per_target_counts" (entry c: targets with
    c of them), "reachable" (share of targets solved: with one), "fallback" (share of targets
    whose answer came from the solver's fallback seeds), "within_limits" (share of the K raw
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
    errors = {m: error_stats(arm, answers[m], targets) for m in METHODS}
    modes = mode_pose_errors(arm, mixture, targets)
    pose_errors = {**modes, "refined": {"position": answers["refined"].errors,
                                        "rotation": answers["refined"].rotation_errors}}
    if in_metres(arm):  # the rotation minimum over the modes, taken on its own
        errors["min_over_modes"].update(pose_error_stats(arm, **modes["min_over_modes"]))
    counts = np.bincount(solutions.solved.sum(axis=1), minlength=k + 1)
    metrics = {
        "model": {"source": str(getattr(solver.model, "source", "")), "arm": arm.name,
                  "kind": solver.model.train_config.get("kind", "mdn"), "components": k,
                  "refine_tol": solver.refine_settings.tol, "reach_tol": solver.reach_tol},
        "errors": errors,
        "coverage": cover,
        "solutions_per_target": float(solutions.solved.sum(axis=1).mean()),
        "solutions_per_target_counts": counts.tolist(),
        "reachable": float(solutions.reachable.mean()),
        "fallback": float(np.mean(solutions.fallback)),
        "within_limits": {"unrefined_modes": float(raw_within),
                          "refined_candidates": float(solutions.within_limits[solutions.distinct].mean())},
        "throughput": throughput,
    }
    return Evaluation(targets, mixture, solutions, answers, metrics, pose_errors)
