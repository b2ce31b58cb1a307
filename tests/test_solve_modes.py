"""Solve modes: mode="best", near= (checked against the closed-form UR5 oracle), the turn chosen
for multi-turn joints, solve_path continuity, and the CLI's --best, --near, --near-file and --path.

Uses the shipped models (bishop.onnx, ur5.onnx) and a closed-form stand-in model: no training.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import PerturbedOracle

from ikmdn.arms import arm_from_spec, get_arm, wrap_angle
from ikmdn.arms.closed_form import closed_form_ik
from ikmdn.arms.rotations import matrix_to_quat
from ikmdn.arms.serial import poses_to_targets, targets_to_poses
from ikmdn.arms.urdf import load_urdf
from ikmdn.cli import cli, default_model
from ikmdn.errors import IKMDNError
from ikmdn.solve import IKSolver, joint_distance

DATA = Path(__file__).parent / "data"
MODELS = default_model().parent
TWO_PI = 2 * math.pi
N_POSES = 200
ILL_CONDITIONED = 1e-3  # smallest Jacobian singular value below which 1e-6 rad is out of reach
# A UR5 configuration away from its singularities, used as the start of paths.
UR5_START = np.array([0.4, -1.3, 1.5, -1.8, -1.5, 0.3])


# -- helpers ------------------------------------------------------------------------------------
def wrapped_gap(a, b) -> np.ndarray:
    """Largest joint difference (...,), angles compared modulo 2 pi."""
    return np.abs(wrap_angle(np.asarray(a) - np.asarray(b))).max(axis=-1)


def branch_gap(q: np.ndarray, branches: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(N,) wrapped gap from joints q (N, dof) to the nearest valid closed-form branch."""
    return np.where(valid, wrapped_gap(q[:, None], branches), np.inf).min(axis=1)


def nearest_other_branch(arm, q: np.ndarray, branches: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(N,) joint distance from analytic solutions q (N, dof) to the nearest other valid branch."""
    d = np.where(valid, joint_distance(arm, np.nan_to_num(branches), q[:, None]), np.inf)
    return np.where(d < 1e-9, np.inf, d).min(axis=1)


def smallest_singular_value(arm, q: np.ndarray) -> np.ndarray:
    return np.linalg.svd(arm.jacobian(q), compute_uv=False)[:, -1]


def pose_coordinates(target: np.ndarray) -> list[str]:
    """x y z qw qx qy qz of one pose target (9,), as the CLI's --pose takes them."""
    pose = targets_to_poses(target[None])[0]
    return [repr(float(v)) for v in (*pose[:3, 3], *matrix_to_quat(pose[None, :3, :3])[0])]


def line_path(arm, start: np.ndarray, steps: int, length: float = 0.15) -> np.ndarray:
    """Pose targets (steps, 9) along a straight line of `length` metres from fk(start), with the
    hand orientation fixed."""
    first = targets_to_poses(arm.fk(start[None]))[0]
    direction = np.array([0.1, 0.08, -0.08])
    direction *= length / np.linalg.norm(direction)
    poses = np.repeat(first[None], steps, axis=0)
    poses[:, :3, 3] = first[:3, 3] + np.linspace(0.0, 1.0, steps)[:, None] * direction
    return poses_to_targets(poses)


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ur5_solver() -> IKSolver:
    return IKSolver.load(MODELS / "ur5.onnx")


@pytest.fixture(scope="module")
def bishop_solver() -> IKSolver:
    return IKSolver.load(default_model())


@pytest.fixture(scope="module")
def ur5_poses(ur5_solver):
    """200 random reachable UR5 pose targets and their closed-form branches."""
    arm = ur5_solver.arm
    q = arm.sample_joints(N_POSES, np.random.default_rng(0))
    x = arm.fk(q)
    branches, valid = closed_form_ik(arm, x)
    return x, branches, valid


@pytest.fixture(scope="module")
def ur5_near_case(ur5_solver):
    """Poses with one analytic solution each and a reference 0.1 rad (Euclidean, random
    direction) from it. Only poses whose other analytic solutions all lie > 0.3 rad from the
    chosen one (wrap-aware joint distance) are kept: there the chosen solution is, by the
    triangle inequality, the unique nearest to the reference. (Near the elbow and wrist
    singularities two branches can lie closer than 0.2 rad, and the reference may then be
    nearer the other one: no solver could be asked to return the chosen one.)"""
    arm = ur5_solver.arm
    rng = np.random.default_rng(1)
    q = arm.sample_joints(2 * N_POSES, rng)
    x = arm.fk(q)
    branches, valid = closed_form_ik(arm, x)
    pick = np.array([rng.choice(np.flatnonzero(v)) for v in valid])
    chosen = branches[np.arange(len(x)), pick]
    keep = np.flatnonzero(nearest_other_branch(arm, chosen, branches, valid) > 0.3)
    assert keep.size >= N_POSES, "too many ambiguous poses to pick from"
    keep = keep[:N_POSES]
    step = rng.standard_normal((N_POSES, arm.dof))
    step *= 0.1 / np.linalg.norm(step, axis=1, keepdims=True)
    return x[keep], chosen[keep], chosen[keep] + step


# -- mode "best" --------------------------------------------------------------------------------
def test_best_mode_gives_one_solved_closed_form_answer_per_ur5_pose(ur5_solver, ur5_poses):
    x, branches, valid = ur5_poses
    arm = ur5_solver.arm
    sol = ur5_solver.solve(x, mode="best")
    assert sol.joints.shape == (N_POSES, 1, arm.dof)
    assert sol.weights.shape == sol.errors.shape == (N_POSES, 1)
    assert sol.distances is None
    assert sol.reachable.all() and sol.solved.all()
    assert np.all(sol.errors <= 1e-6) and np.all(sol.rotation_errors <= 1e-6)
    assert sol.within_limits.all() and np.all(np.abs(sol.joints) <= math.pi + 1e-12)
    np.testing.assert_array_equal(sol.best(), sol.joints[:, 0])
    # The answer is one of the analytic solutions: within 1e-6 rad where the pose is well
    # conditioned (a residual of 1e-9 then moves joints by < 1e-6 rad), 1e-4 rad elsewhere.
    gap = branch_gap(sol.joints[:, 0], branches, valid)
    ill = smallest_singular_value(arm, sol.joints[:, 0]) < ILL_CONDITIONED
    assert ill.sum() <= N_POSES // 20, f"{ill.sum()} near-singular poses: the check is too weak"
    assert np.all(gap[~ill] <= 1e-6), np.sort(gap[~ill])[-3:]
    assert np.all(gap[ill] <= 1e-4), np.sort(gap[ill])


def test_best_mode_answer_is_a_solved_candidate_of_mode_all(ur5_solver, ur5_poses):
    """Mode "best" stops at the heaviest *single* mode that solves; mode "all" merges modes
    that reach the same solution and sums their weights, so its best() (the heaviest merged
    solution) can be another one. The answer of "best" is always among those of "all"."""
    x = ur5_poses[0]
    all_modes = ur5_solver.solve(x)
    best = ur5_solver.solve(x, mode="best")
    gap = wrapped_gap(best.joints[:, 0][:, None], all_modes.joints)
    assert np.all(np.where(all_modes.solved, gap, np.inf).min(axis=1) <= 1e-6)


def test_best_mode_is_the_heaviest_solved_candidate_for_bishop(bishop_solver):
    arm = bishop_solver.arm
    targets = np.concatenate([[[0.6, 0.7]], arm.fk(arm.sample_joints(100, np.random.default_rng(2)))])
    all_modes = bishop_solver.solve(targets)
    best = bishop_solver.solve(targets, mode="best")
    assert best.joints.shape == (len(targets), 1, arm.dof)
    assert best.reachable.all() and all_modes.reachable.all()
    np.testing.assert_allclose(best.joints[:, 0], all_modes.best(), atol=1e-9)
    # Its weight is the mode's own; "all" adds the weights of modes merged into it.
    merged = all_modes.weights[np.arange(len(targets)), all_modes.best_index]
    assert np.all(best.weights[:, 0] <= merged + 1e-6)
    # (0.6, 0.7) has two solutions; the heavier is the one answered.
    assert all_modes.distinct[0].sum() == 2
    assert all_modes.best_index[0] == np.argmax(all_modes.weights[0])


def test_bad_mode_and_reference_shapes_are_refused(bishop_solver):
    x = np.array([[0.6, 0.7], [0.7, 0.6], [0.5, 0.8]])
    with pytest.raises(IKMDNError, match="mode must be one of all, best"):
        bishop_solver.solve(x, mode="nearest")
    with pytest.raises(IKMDNError, match="one joint vector or one per target"):
        bishop_solver.solve(x, near=np.zeros((2, 2)))
    with pytest.raises(IKMDNError):
        bishop_solver.solve(x, near=[0.1, 0.2, 0.3])


# -- near ---------------------------------------------------------------------------------------
def test_joint_distance_is_wrap_aware_for_periodic_joints_only():
    ur5, bishop = get_arm("ur5"), get_arm("bishop")
    q = np.array([0.1, -0.2, 0.3, 3.0, -3.0, 0.0])
    shifted = q + np.array([TWO_PI, -TWO_PI, 0, 0, 0, 4 * math.pi])
    assert joint_distance(ur5, q, shifted) == pytest.approx(0.0, abs=1e-12)
    # 3.0 and -3.0 are 0.283 rad apart across +-pi, not 6.
    other = q.copy()
    other[3] = -3.0
    assert joint_distance(ur5, q, other) == pytest.approx(TWO_PI - 6.0, abs=1e-12)
    assert joint_distance(bishop, [0.5, 2.0], [0.5, 2.0 + TWO_PI]) == pytest.approx(TWO_PI)
    assert joint_distance(bishop, [0.5, 2.0], [0.8, 2.4]) == pytest.approx(0.5)
    assert joint_distance(ur5, np.zeros((4, 3, 6)), np.zeros(6)).shape == (4, 3)


def test_near_returns_the_analytic_solution_nearest_the_reference(ur5_solver, ur5_near_case):
    x, chosen, ref = ur5_near_case
    arm = ur5_solver.arm
    for mode in ("best", "all"):
        sol = ur5_solver.solve(x, mode=mode, near=ref)
        answer = sol.best()
        assert sol.reachable.all(), mode
        hit = wrapped_gap(answer, chosen) <= 1e-6
        assert hit.mean() >= 0.99, (mode, np.flatnonzero(~hit), wrapped_gap(answer, chosen)[~hit])
        assert np.all(np.abs(answer) <= math.pi + 1e-12)
        np.testing.assert_allclose(sol.distances[np.arange(len(x)), sol.best_index],
                                   joint_distance(arm, answer, ref), atol=1e-12)
    best = ur5_solver.solve(x, mode="best", near=ref)
    assert best.joints.shape == (N_POSES, 1, arm.dof) and best.distances.shape == (N_POSES, 1)


def test_near_ranks_candidates_nearest_first_and_seeds_the_reference(ur5_solver, ur5_near_case):
    x, chosen, ref = ur5_near_case
    arm, k = ur5_solver.arm, ur5_solver.model.components
    sol = ur5_solver.solve(x, near=ref)
    assert sol.joints.shape == (N_POSES, k + 1, arm.dof)   # the K modes and the reference
    assert sol.distances.shape == (N_POSES, k + 1)
    np.testing.assert_allclose(sol.distances, joint_distance(arm, sol.joints, ref[:, None]),
                               atol=1e-12)
    for i in range(N_POSES):
        d = sol.distances[i, sol.distinct[i]]
        assert np.all(np.diff(d) >= 0), (i, d)
        count = sol.distinct[i].sum()   # distinct candidates first, merged duplicates after
        assert sol.distinct[i, :count].all() and not sol.distinct[i, count:].any()
    # The reference seed: the one candidate of weight 0 and sigma 0 (no fallback happened),
    # refined onto the chosen solution (0.1 rad away) for nearly every pose.
    assert not sol.fallback.any()
    seed = np.all(sol.sigmas == 0, axis=2)
    assert np.all(seed.sum(axis=1) == 1)
    assert np.all(sol.weights[seed] == 0)
    from_ref = sol.joints[seed]
    assert np.mean(wrapped_gap(from_ref, chosen) <= 1e-6) >= 0.99
    # A single reference row is the same as that row repeated.
    one = ur5_solver.solve(x[:5], near=ref[0])
    many = ur5_solver.solve(x[:5], near=np.repeat(ref[:1], 5, axis=0))
    np.testing.assert_array_equal(one.joints, many.joints)
    np.testing.assert_array_equal(one.distances, many.distances)


def test_near_on_an_exact_solution_returns_it(ur5_solver, ur5_near_case):
    """The reference is tried first in mode "best": an exact solution is the answer itself."""
    x, chosen, _ = ur5_near_case
    sol = ur5_solver.solve(x[:50], mode="best", near=chosen[:50])
    assert sol.reachable.all()
    assert np.all(wrapped_gap(sol.joints[:, 0], chosen[:50]) <= 1e-9)
    assert np.all(sol.distances <= 1e-9)
    assert np.all(sol.weights == 0)   # it came from the reference, not from a mixture mode


def test_unrefined_near_ranks_the_raw_modes(ur5_solver, ur5_near_case):
    x, _, ref = ur5_near_case
    sol = ur5_solver.solve(x[:20], refine=False, near=ref[:20])
    k = ur5_solver.model.components
    assert sol.joints.shape[1] == k       # no reference seed without refinement
    assert np.all(np.diff(sol.distances, axis=1) >= 0)


# -- multi-turn joints --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ur5_two_turns():
    """The DH-style UR5 URDF: +-2 pi limits on every joint (the closed-form oracle recognises
    it from its chain data), solved by the closed-form stand-in model; poses with joint 0 in
    [-2.6, -2.0], so joint 0 + 2 pi lies around 4 rad."""
    arm = load_urdf(DATA / "ur5.urdf", "tool0")
    assert arm.multi_turn_joints.all()
    np.testing.assert_allclose(arm.joint_limits, [[-TWO_PI, TWO_PI]] * 6)
    rng = np.random.default_rng(3)
    q = rng.uniform(-math.pi, math.pi, (64, arm.dof))
    q[:, 0] = rng.uniform(-2.6, -2.0, len(q))
    x = arm.fk(q)
    # Away from singularities, where another branch could be nearer the reference than q.
    branches, valid = closed_form_ik(arm, x)
    keep = nearest_other_branch(arm, q, branches, valid) > 0.3
    assert keep.sum() >= 50
    return IKSolver(PerturbedOracle(arm, 0.01, seed=4)), q[keep], x[keep]


@pytest.mark.parametrize("mode", ["best", "all"])
def test_multi_turn_joint_is_reported_on_the_turn_nearest_the_reference(ur5_two_turns, mode):
    solver, q, x = ur5_two_turns
    arm = solver.arm
    ref = q + 0.05
    ref[:, 0] += TWO_PI                                  # the robot stands one turn up on joint 0
    sol = solver.solve(x, mode=mode, near=ref)
    answer = sol.best()
    assert sol.reachable.all()
    assert np.all(np.abs(answer[:, 0] - ref[:, 0]) <= math.pi)
    assert np.all(answer[:, 0] > 3.0)                    # the upper turn, around 4 rad
    assert np.all(np.abs(answer) <= TWO_PI) and arm.within_limits(answer).all()
    np.testing.assert_allclose(answer, q + np.array([TWO_PI, 0, 0, 0, 0, 0]), atol=1e-6)
    # Every distinct candidate, on every joint, is on the in-limit turn nearest the reference
    # (a value near 0.4 rad has no turn up at 6.7, beyond 2 pi: it stays 3.7 rad from 4).
    joints, near = sol.joints[sol.distinct], np.repeat(ref, sol.distinct.sum(axis=1), axis=0)
    assert arm.within_limits(joints).all()
    for shift in (TWO_PI, -TWO_PI):
        inside = np.abs(joints + shift) <= TWO_PI
        assert np.all(~inside | (np.abs(joints - near) <= np.abs(joints + shift - near) + 1e-9))
    # Without a reference the turn nearest the middle of the range (0) is reported.
    plain = solver.solve(x, mode=mode)
    assert plain.reachable.all()
    assert np.all(np.abs(plain.joints[plain.distinct]) <= math.pi + 1e-9)
    branches, valid = closed_form_ik(arm, x)
    assert np.all(branch_gap(plain.best(), branches, valid) <= 1e-6)


def test_reference_beyond_the_limit_is_refused(ur5_two_turns):
    """A robot's joints lie within their limits: a reference beyond the +2 pi limit is an error
    (Arm.wrap_joints still maps such a reference to the nearest turn in range)."""
    solver, q, x = ur5_two_turns
    ref = q.copy()
    ref[:, 0] += 2 * TWO_PI                              # about 8 rad: beyond the +2 pi limit
    with pytest.raises(IKMDNError, match="outside its limits"):
        solver.solve(x, mode="best", near=ref)


def test_path_stays_on_the_turn_of_its_start(ur5_two_turns):
    """On +-2 pi joints a path continues on the turn it starts on (each step is solved near
    the previous answer), though the middle of the range would pick the other turn."""
    solver, q, _ = ur5_two_turns
    arm = solver.arm
    start = q[0] + np.array([TWO_PI, 0, 0, 0, 0, 0])
    path = solver.solve_path(line_path(arm, start, 20, length=0.05), start)
    assert path.reachable.all() and not path.switches.any() and path.largest_jump < 0.2
    assert np.all(np.abs(path.joints[:, 0] - start[0]) < 0.5)
    assert arm.within_limits(path.joints).all()


# -- solve_path ---------------------------------------------------------------------------------
def test_straight_line_path_is_continuous(ur5_solver):
    arm = ur5_solver.arm
    targets = line_path(arm, UR5_START, 50)
    path = ur5_solver.solve_path(targets, UR5_START)
    assert len(path) == 50 and path.joints.shape == (50, arm.dof)
    assert path.jumps.shape == path.switches.shape == path.reachable.shape == (50,)
    assert path.reachable.all()
    assert np.all(path.errors <= 1e-6) and np.all(path.rotation_errors <= 1e-6)
    assert not path.switches.any()
    assert path.largest_jump < 0.2
    assert path.largest_jump == pytest.approx(path.jumps.max())
    assert wrapped_gap(path.joints[0], UR5_START) <= 1e-6     # target 0 is fk(start)
    steps = wrapped_gap(path.joints[1:], path.joints[:-1])
    np.testing.assert_allclose(path.jumps[1:], steps, atol=1e-12)
    np.testing.assert_allclose(arm.fk(path.joints), targets, atol=1e-6)


def test_path_discontinuity_is_flagged(ur5_solver):
    arm = ur5_solver.arm
    far = np.array([-2.0, -2.2, -1.4, 1.0, 1.5, -2.0])
    a, b = arm.fk(UR5_START[None]), arm.fk(far[None])
    path = ur5_solver.solve_path(np.concatenate([a, a, b, b, a]), UR5_START)
    assert path.reachable.all()
    np.testing.assert_array_equal(path.switches, [False, False, True, False, True])
    assert path.largest_jump > 1.0
    assert path.switch_threshold == 0.5
    # A looser threshold does not flag the same jumps.
    loose = ur5_solver.solve_path(np.concatenate([a, b]), UR5_START, switch_threshold=10.0)
    assert not loose.switches.any()
    with pytest.raises(IKMDNError, match="switch_threshold"):
        ur5_solver.solve_path(a, UR5_START, switch_threshold=0.0)


# -- the CLI ------------------------------------------------------------------------------------
def invoke(args: list[str]):
    return CliRunner().invoke(cli, args)


def error_line(output: str) -> str:
    """The 'Error: ...' line of a usage error (click prints usage lines before it)."""
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output
    assert output.rstrip().endswith(lines[0]), output   # nothing after it: a one-line message
    return lines[0]


def write_csv_rows(path: Path, header: list[str], rows) -> Path:
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(repr, map(float, r))) + "\n"
                                                       for r in rows))
    return path


def test_cli_best_prints_one_candidate_per_target(tmp_path):
    result = invoke(["solve", "0.6", "0.7", "--best", "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert len(out["solutions"]) == 1 and len(out["solutions"][0]["candidates"]) == 1
    targets = write_csv_rows(tmp_path / "t.csv", ["x", "y"], [[0.6, 0.7], [0.7, 0.6], [0.5, 0.8]])
    result = invoke(["solve", "--targets", str(targets), "--best", "--format", "json"])
    assert result.exit_code == 0, result.output
    solutions = json.loads(result.output)["solutions"]
    assert len(solutions) == 3 and all(len(s["candidates"]) == 1 for s in solutions)
    assert all(s["reachable"] for s in solutions)
    result = invoke(["solve", "--targets", str(targets), "--best", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["target"] for r in rows] == ["0", "1", "2"] and {r["rank"] for r in rows} == {"1"}


def test_cli_best_pose(ur5_solver):
    arm = ur5_solver.arm
    target = arm.fk(arm.sample_joints(1, np.random.default_rng(5)))[0]
    model = str(MODELS / "ur5.onnx")
    result = invoke(["solve", "--model", model, "--pose", *pose_coordinates(target), "--best",
                     "--format", "json"])
    assert result.exit_code == 0, result.output
    solution = json.loads(result.output)["solutions"][0]
    assert solution["reachable"] and len(solution["candidates"]) == 1
    assert solution["candidates"][0]["error"] <= 1e-6
    assert solution["candidates"][0]["rotation_error_deg"] <= 1e-4


def test_cli_near_ranks_pose_candidates_by_distance(ur5_solver, ur5_near_case):
    x, chosen, ref = ur5_near_case
    model = str(MODELS / "ur5.onnx")
    near = ",".join(repr(float(v)) for v in ref[0])
    for extra in ([], ["--best"]):
        result = invoke(["solve", "--model", model, "--pose", *pose_coordinates(x[0]),
                         "--near", near, "--format", "json", *extra])
        assert result.exit_code == 0, result.output
        candidates = json.loads(result.output)["solutions"][0]["candidates"]
        joints = np.array([c["joints"] for c in candidates])
        assert len(candidates) == (1 if extra else len(joints))
        assert wrapped_gap(joints[0], chosen[0]) <= 1e-6
        d = joint_distance(ur5_solver.arm, joints, ref[0])
        assert np.all(np.diff(d) >= 0)


@pytest.mark.parametrize("value, expected", [
    ("0.1,0.2,0.3", "arm bishop has 2 joints (q1, q2): expected 2 finite numbers"),
    ("0.1", "arm bishop has 2 joints"),
    ("a,b", "expected 2 comma-separated numbers, got 'a,b'"),
    ("0.1,nan", "expected 2 finite numbers"),
])
def test_cli_near_bad_values(value, expected):
    result = invoke(["solve", "0.6", "0.7", "--near", value])
    assert result.exit_code == 2, result.output
    line = error_line(result.output)
    assert "--near" in line and expected in line


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_cli_near_file_one_row_or_one_per_target(tmp_path, bishop_solver, suffix):
    targets = np.array([[0.6, 0.7], [0.7, 0.6], [0.5, 0.8]])
    targets_file = write_csv_rows(tmp_path / "t.csv", ["x", "y"], targets)
    all_modes = bishop_solver.solve(targets)
    # Per target: the lighter distinct solution, nudged; the answer must then be the lighter one.
    lighter = np.array([all_modes.joints[i, all_modes.distinct[i]][-1] for i in range(3)])
    assert all(all_modes.distinct[i].sum() == 2 for i in range(3))

    def near_file(rows):
        path = tmp_path / f"near{len(rows)}{suffix}"
        if suffix == ".npy":
            np.save(path, np.asarray(rows, dtype=np.float64))
        else:
            write_csv_rows(path, ["q1", "q2"], rows)
        return str(path)

    per_target = near_file(lighter + 0.01)
    result = invoke(["solve", "--targets", str(targets_file), "--near-file", per_target, "--best",
                     "--format", "json"])
    assert result.exit_code == 0, result.output
    answers = np.array([s["candidates"][0]["joints"] for s in json.loads(result.output)["solutions"]])
    np.testing.assert_allclose(answers, lighter, atol=1e-6)

    one_row = near_file(lighter[:1] + 0.01)
    result = invoke(["solve", "--targets", str(targets_file), "--near-file", one_row,
                     "--format", "json"])
    assert result.exit_code == 0, result.output
    solutions = json.loads(result.output)["solutions"]
    assert len(solutions) == 3
    for s in solutions:   # all candidates, nearest the one reference first
        joints = np.array([c["joints"] for c in s["candidates"]])
        d = joint_distance(bishop_solver.arm, joints, lighter[0] + 0.01)
        assert np.all(np.diff(d) >= 0)

    two_rows = near_file(lighter[:2])
    result = invoke(["solve", "--targets", str(targets_file), "--near-file", two_rows])
    assert result.exit_code == 2, result.output
    line = error_line(result.output)
    assert "--near-file" in line and "one row of 2 joints or one per target (3), got 2" in line


def test_cli_near_file_errors_name_the_option(tmp_path):
    """A missing or malformed --near-file is a parameter error about --near-file, not about a
    "targets file" (the message TargetsFile writes for --targets)."""
    bad_width = write_csv_rows(tmp_path / "near.csv", ["q1", "q2", "q3"], [[0.6, 2.0, 0.1]])
    for path in (tmp_path / "missing.csv", bad_width):
        result = invoke(["solve", "0.6", "0.7", "--near-file", str(path)])
        assert result.exit_code == 2, result.output
        line = error_line(result.output)
        assert "--near-file" in line and "targets file" not in line, line


def test_cli_near_and_near_file_together(tmp_path):
    near = write_csv_rows(tmp_path / "near.csv", ["q1", "q2"], [[0.6, 2.0]])
    result = invoke(["solve", "0.6", "0.7", "--near", "0.6,2.0", "--near-file", str(near)])
    assert result.exit_code == 2
    assert error_line(result.output) == "Error: give --near or --near-file, not both"


@pytest.mark.parametrize("args, expected", [
    (["0.6", "0.7", "--path", "--start", "0.6,2.0"], "--path needs --targets FILE and --start"),
    (["--targets", "{targets}", "--path"], "--path needs --targets FILE and --start"),
    (["0.6", "0.7", "--start", "0.6,2.0"], "--start goes only with --path"),
    (["--targets", "{targets}", "--path", "--start", "0.6,2.0", "--best"], "drop --best"),
    (["--targets", "{targets}", "--path", "--start", "0.6,2.0", "--near", "0.6,2.0"],
     "drop --near"),
    (["--targets", "{targets}", "--path", "--start", "0.6"], "arm bishop has 2 joints"),
])
def test_cli_path_usage_errors(tmp_path, args, expected):
    targets = write_csv_rows(tmp_path / "t.csv", ["x", "y"], [[0.6, 0.7], [0.62, 0.7]])
    result = invoke(["solve", *(a.format(targets=targets) for a in args)])
    assert result.exit_code == 2, result.output
    assert expected in error_line(result.output)


@pytest.fixture(scope="module")
def ur5_line_file(tmp_path_factory, ur5_solver):
    """A 10-step straight-line path for the UR5, as x y z qw qx qy qz rows."""
    targets = line_path(ur5_solver.arm, UR5_START, 10, length=0.05)
    rows = [[float(v) for v in pose_coordinates(t)] for t in targets]
    path = tmp_path_factory.mktemp("path") / "line.csv"
    return write_csv_rows(path, ["x", "y", "z", "qw", "qx", "qy", "qz"], rows), targets


def test_cli_path_json(ur5_solver, ur5_line_file):
    path_file, targets = ur5_line_file
    start = ",".join(repr(float(v)) for v in UR5_START)
    result = invoke(["solve", "--model", str(MODELS / "ur5.onnx"), "--path", "--targets",
                     str(path_file), "--start", start, "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["arm"] == "ur5" and out["joint_names"] == list(ur5_solver.arm.joint_names)
    assert len(out["path"]) == len(targets)
    assert out["switches"] == 0 and 0 < out["largest_jump"] < 0.2
    joints = np.array([step["joints"] for step in out["path"]])
    assert wrapped_gap(joints[0], UR5_START) <= 1e-6
    assert all(step["reachable"] and not step["switch"] for step in out["path"])
    assert max(step["jump"] for step in out["path"]) == pytest.approx(out["largest_jump"])
    np.testing.assert_allclose([step["target"] for step in out["path"]], targets, atol=1e-9)


def test_cli_path_csv_and_table(ur5_solver, ur5_line_file):
    path_file, targets = ur5_line_file
    start = ",".join(repr(float(v)) for v in UR5_START)
    base = ["solve", "--model", str(MODELS / "ur5.onnx"), "--path", "--targets", str(path_file),
            "--start", start]
    result = invoke([*base, "--format", "csv"])
    assert result.exit_code == 0, result.output
    reader = csv.DictReader(io.StringIO(result.output))
    rows = list(reader)
    names = list(ur5_solver.arm.joint_names)
    assert set(names) <= set(reader.fieldnames) and "jump" in reader.fieldnames
    assert len(rows) == len(targets) and [r["step"] for r in rows] == [str(i) for i in range(10)]
    joints = np.array([[float(r[n]) for n in names] for r in rows])
    np.testing.assert_allclose(ur5_solver.arm.fk(joints), targets, atol=1e-6)
    assert all(r["switch"] == "false" for r in rows)
    result = invoke(base)
    assert result.exit_code == 0, result.output
    assert "path of 10 targets" in result.output and "0 discontinuities" in result.output


def test_best_near_far_reference_returns_a_nearer_solution_than_the_seed_reaches():
    """A reference far from every solution: mode "best" does not stop at wherever LM carries the
    reference; its answer is never farther than the nearest solution mode "all" finds by more
    than a little (it may miss one that only a far-starting mode reaches)."""
    solver = IKSolver.load(MODELS / "ur5.onnx")
    arm = solver.arm
    rng = np.random.default_rng(3)
    x = arm.fk(arm.sample_joints(100, rng))
    reference = arm.sample_joints(100, rng)
    best = solver.solve(x, mode="best", near=reference)
    every = solver.solve(x, near=reference)
    d_best = joint_distance(arm, best.best(), reference)
    d_all = joint_distance(arm, every.best(), reference)
    assert best.reachable.all()
    assert np.mean(d_best <= d_all + 1e-9) >= 0.9
    assert np.median(d_best - d_all) <= 1e-9


def test_reference_outside_the_limits_is_refused():
    solver = IKSolver.load(MODELS / "panda.onnx")
    x = solver.arm.fk(solver.arm.home)
    with pytest.raises(IKMDNError, match="near joint panda_joint2 = 1e.300 .row 0. is outside its limits"):
        solver.solve(x, near=[0, 1e300, 0, -1.5, 0, 1.5, 0])
    with pytest.raises(IKMDNError, match="start joint panda_joint1 = 10 .row 0. is outside"):
        solver.solve_path(x, start=[10.0, 0, 0, -1.5, 0, 1.5, 0])


def test_joints_with_stops_at_pi_do_not_wrap():
    """The ROS UR5's elbow is a revolute joint limited to [-pi, pi]: from 3.1 to -3.1 it must
    turn 6.2 rad, while the preset's free-turning elbow wraps (0.083 rad)."""
    urdf = load_urdf(DATA / "ur5_ros.urdf", "tool0", base_link="base")
    assert urdf.wrapping_joints.tolist() == [True, True, False, True, True, True]
    q, r = np.zeros(6), np.zeros(6)
    q[2], r[2] = 3.1, -3.1
    assert joint_distance(urdf, q, r) == pytest.approx(6.2)
    assert joint_distance(get_arm("ur5"), q, r) == pytest.approx(2 * np.pi - 6.2)
    assert arm_from_spec(urdf.spec()).wrapping_joints.tolist() == urdf.wrapping_joints.tolist()


def test_max_iter_is_bounded():
    result = invoke(["solve", "0.6", "0.7", "--max-iter", str(2**63)])
    assert result.exit_code == 2 and "--max-iter" in result.output
