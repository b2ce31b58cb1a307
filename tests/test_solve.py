"""IKSolver and Solutions (ikmdn.solve), merge_duplicates, and the refinement (ikmdn.refine)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import outside_targets, workspace_targets

from ikmdn.arms import get_arm, wrap_angle
from ikmdn.arms.closed_form import closed_form_ik
from ikmdn.errors import IKMDNError
from ikmdn.mixture import Mixture
from ikmdn.refine import RefineSettings, refine
from ikmdn.runtime import OnnxModel
from ikmdn.solve import IKSolver, merge_duplicates

TWO_PI = 2 * math.pi


def _residual(arm, reached: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """reached - targets with angular target coordinates compared modulo 2 pi."""
    diff = reached - targets
    return np.where(arm.angular_targets, wrap_angle(diff), diff)


@pytest.fixture(scope="module")
def solved(onnx_solver):
    """(solver, targets (300, d), refined Solutions) for each preset arm."""
    x = workspace_targets(onnx_solver.arm, 300, seed=11)
    return onnx_solver, x, onnx_solver.solve(x)


# -- Solutions: shapes and invariants -------------------------------------------------------------

def test_shapes(solved):
    solver, x, sol = solved
    arm, k = solver.arm, solver.model.components
    n, dof, d = len(x), arm.dof, arm.target_dim
    assert len(sol) == n
    assert sol.targets.shape == (n, d)
    assert sol.joints.shape == (n, k, dof)
    assert sol.weights.shape == (n, k)
    assert sol.sigmas.shape == (n, k, dof)
    assert sol.positions.shape == (n, k, d)
    assert sol.errors.shape == sol.rotation_errors.shape == (n, k)
    np.testing.assert_array_equal(sol.rotation_errors, 0.0)  # planar arms: no 3-D orientation
    assert sol.within_limits.shape == sol.distinct.shape == (n, k)
    assert sol.reachable.shape == (n,)
    assert sol.solved.shape == (n, k)
    assert sol.best_index.shape == (n,)
    assert sol.best().shape == (n, dof)
    for name in ("within_limits", "distinct", "reachable"):
        assert getattr(sol, name).dtype == bool, name
    assert sol.refined is True
    assert set(sol.arrays()) == {"targets", "joints", "weights", "sigmas", "positions", "errors",
                                 "rotation_errors", "within_limits", "distinct", "reachable", "fallback"}
    np.testing.assert_array_equal(sol.targets, x)


def test_single_target_is_promoted(onnx_solver):
    x = workspace_targets(onnx_solver.arm, 1, seed=1)[0]
    sol = onnx_solver.solve(x)
    assert len(sol) == 1
    assert sol.joints.shape == (1, onnx_solver.model.components, onnx_solver.arm.dof)


def test_sorted_by_weight_distinct_first(solved):
    _, _, sol = solved
    for i in range(len(sol)):
        distinct = sol.distinct[i]
        n_distinct = int(distinct.sum())
        assert n_distinct >= 1
        assert distinct[:n_distinct].all() and not distinct[n_distinct:].any(), distinct
        w = sol.weights[i, :n_distinct]
        assert np.all(np.diff(w) <= 0), w
        assert np.all(sol.weights[i, n_distinct:] == 0)
    np.testing.assert_allclose(sol.weights.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(sol.sigmas > 0)


def test_positions_are_fk_of_joints(solved):
    solver, _, sol = solved
    arm = solver.arm
    n, k, dof = sol.joints.shape
    expected = arm.fk(sol.joints.reshape(n * k, dof)).reshape(sol.positions.shape)
    np.testing.assert_allclose(sol.positions, expected, rtol=0, atol=1e-12)


def test_errors_are_distances(solved):
    solver, x, sol = solved
    expected = np.linalg.norm(_residual(solver.arm, sol.positions, x[:, None, :]), axis=-1)
    np.testing.assert_allclose(sol.errors, expected, rtol=1e-12, atol=1e-15)


def test_within_limits_and_reachable_flags(solved):
    solver, _, sol = solved
    arm = solver.arm
    n, k, dof = sol.joints.shape
    np.testing.assert_array_equal(sol.within_limits,
                                  arm.within_limits(sol.joints.reshape(n * k, dof)).reshape(n, k))
    solved_flags = sol.distinct & sol.within_limits & (sol.errors <= sol.reach_tol)
    np.testing.assert_array_equal(sol.reachable, solved_flags.any(axis=1))
    # Refined joints stay inside the limits: bounded joints clipped, continuous ones wrapped.
    assert sol.within_limits.all()
    lo, hi = arm.joint_limits.T
    assert np.all(sol.joints >= lo - 1e-12) and np.all(sol.joints <= np.maximum(hi, lo + TWO_PI))


def test_refinement_reaches_most_targets(solved):
    _, _, sol = solved
    best_error = sol.errors[np.arange(len(sol)), sol.best_index]
    assert np.mean(best_error <= 1e-9) >= 0.9
    assert np.mean(sol.reachable) >= 0.9
    # The answer of a reachable target is a solved candidate.
    assert np.all(sol.solved[np.arange(len(sol)), sol.best_index][sol.reachable])


def test_best_is_heaviest_solved_candidate(solved):
    _, _, sol = solved
    for i in np.flatnonzero(sol.reachable):
        candidates = np.flatnonzero(sol.solved[i])
        assert sol.best_index[i] == candidates[np.argmax(sol.weights[i, candidates])]
    np.testing.assert_array_equal(sol.best(), sol.joints[np.arange(len(sol)), sol.best_index])


def test_candidate_dict(solved):
    solver, _, sol = solved
    c = sol.candidate(0, 0)
    assert set(c) == {"joints", "weight", "sigma", "position", "error", "within_limits"}
    assert len(c["joints"]) == len(c["sigma"]) == solver.arm.dof
    assert len(c["position"]) == solver.arm.target_dim
    assert isinstance(c["weight"], float) and isinstance(c["within_limits"], bool)
    listed = sol.distinct_solutions(0)
    assert len(listed) == int(sol.distinct[0].sum())
    assert listed[0] == c


# -- outside the workspace ------------------------------------------------------------------------

def test_outside_workspace_is_not_reachable(onnx_solver):
    arm = onnx_solver.arm
    x = outside_targets(arm, 20, seed=4)
    sol = onnx_solver.solve(x)
    assert not sol.reachable.any()
    reach = float(np.sum(arm.link_lengths))
    lower_bound = np.linalg.norm(x[:, :2], axis=1) - reach  # no joint vector gets closer
    assert np.all(sol.errors >= lower_bound[:, None] - 1e-9)
    assert np.all(np.isfinite(sol.joints)) and sol.within_limits.all()
    # The answer is the closest distinct candidate, and there is at least one.
    closest = np.argmin(np.where(sol.distinct, sol.errors, np.inf), axis=1)
    np.testing.assert_array_equal(sol.best_index, closest)
    assert sol.distinct.any(axis=1).all()


def test_outside_workspace_candidates_are_the_closest_points(planar2):
    solver = IKSolver.load(planar2.onnx_path)
    sol = solver.solve([5.0, 0.0])
    assert not sol.reachable[0]
    best = sol.errors[0, sol.best_index[0]]
    assert 5.0 - 1.6 - 1e-9 <= best <= 1.1 * (5.0 - 1.6)  # the arm stretched towards the target


def test_bishop_inner_hole_is_not_reachable(bishop):
    # |(0.6, 0.4)| = 0.72 < sqrt(0.8^2 + 0.2^2): inside the hole the elbow limits leave.
    sol = IKSolver.load(bishop.onnx_path).solve([0.6, 0.4])
    assert not sol.reachable[0]
    assert sol.errors[0, sol.best_index[0]] > 0.05


# -- closed form oracle ---------------------------------------------------------------------------

def test_refined_candidates_match_closed_form(solved):
    solver, x, sol = solved
    arm = solver.arm
    branches, valid = closed_form_ik(arm, x)
    matched = checked = 0
    for i in range(len(x)):
        good = branches[i][valid[i]]
        if len(good) == 2 and np.abs(wrap_angle(good[0] - good[1])).max() < 0.05:
            continue  # near the workspace boundary both branches coincide: ill-conditioned
        for k in np.flatnonzero(sol.solved[i] & (sol.errors[i] <= 1e-9)):
            checked += 1
            assert len(good), f"target {x[i]} has no closed-form solution but {sol.joints[i, k]}"
            distance = np.abs(wrap_angle(sol.joints[i, k] - good)).max(axis=1).min()
            assert distance <= 1e-6, (x[i], sol.joints[i, k], good)
            matched += 1
    assert checked >= len(x) // 2
    assert matched == checked


def test_reachable_agrees_with_closed_form(solved):
    """Whatever the model proposes, a target it reaches must be reachable in closed form."""
    solver, x, sol = solved
    _, valid = closed_form_ik(solver.arm, x)
    assert np.all(valid.any(axis=1)[sol.reachable])


# -- refine=False ---------------------------------------------------------------------------------

def test_no_refine_leaves_means_ranked_by_forward_kinematics(onnx_solver):
    """Unrefined candidates are the means themselves (periodic joints on their turn nearest the
    middle of the range), ranked by their fk residual, so best() is the best raw candidate."""
    arm = onnx_solver.arm
    x = workspace_targets(arm, 50, seed=21)
    sol = onnx_solver.solve(x, refine=False)
    mixture = onnx_solver.model.predict(x)
    means = mixture.means.astype(np.float64)
    residual = np.linalg.norm(arm.residual(sol.positions, x[:, None, :]), axis=-1)
    assert np.all(np.diff(residual, axis=1) >= 0)                       # ranked, best first
    np.testing.assert_array_equal(sol.best_index, 0)
    cont = arm.continuous_joints
    for i in range(len(x)):   # the same candidates, joint for joint, in another order
        for q in sol.joints[i]:
            diff = means[i] - q
            gap = np.abs(np.where(cont, wrap_angle(diff), diff)).max(axis=1)
            assert gap.min() <= 1e-12
    # Continuous joints are wrapped onto the turn nearest home; bounded ones are exactly the means.
    lo = arm.joint_limits[:, 0]
    assert np.all(sol.joints[..., cont] >= lo[cont]) and np.all(sol.joints[..., cont] < lo[cont] + TWO_PI)
    np.testing.assert_array_equal(np.sort(sol.joints[..., ~cont], axis=1),
                                  np.sort(means[..., ~cont], axis=1))
    np.testing.assert_array_equal(np.sort(sol.weights, axis=1),
                                  np.sort(mixture.weights.astype(np.float64), axis=1))
    np.testing.assert_array_equal(np.sort(sol.sigmas.reshape(len(x), -1), axis=1),
                                  np.sort(mixture.sigmas.astype(np.float64).reshape(len(x), -1), axis=1))
    assert sol.refined is False
    assert sol.distinct.all()
    n, k, dof = sol.joints.shape
    np.testing.assert_allclose(sol.positions, arm.fk(sol.joints.reshape(-1, dof)).reshape(n, k, -1),
                               atol=1e-12)
    np.testing.assert_allclose(
        sol.errors, np.linalg.norm(_residual(arm, sol.positions, x[:, None]), axis=-1), rtol=1e-12)


# -- batching -------------------------------------------------------------------------------------

class _RowByRow:
    """The ONNX model run one target at a time, so its output cannot depend on the batch size."""

    def __init__(self, model: OnnxModel):
        self.model, self.arm, self.components = model, model.arm, model.components

    def predict(self, targets, threads=None) -> Mixture:
        parts = [self.model.predict(row[None]) for row in np.asarray(targets)]
        return Mixture(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("weights", "means", "sigmas")))


def test_batches_equal_one_batch_exactly(trained):
    model = _RowByRow(OnnxModel.load(trained.onnx_path))
    x = np.concatenate([workspace_targets(trained.arm, 40, seed=31),
                        outside_targets(trained.arm, 5, seed=32)])
    whole = IKSolver(model).solve(x)
    for size in (1, 7, 44):
        parts = IKSolver(model, batch_size=size).solve(x)
        for name, a in whole.arrays().items():
            np.testing.assert_array_equal(getattr(parts, name), a, err_msg=f"{name}, batch {size}")
        assert (parts.refined, parts.reach_tol) == (whole.refined, whole.reach_tol)


def test_a_large_solve_runs_as_two_batches_in_flight(trained):
    """More than SPLIT_MIN targets are split in halves (two batches in flight): the bits of
    solving each half alone (workspace targets: no fallback seeds, which are drawn per batch)."""
    from ikmdn.solve import SPLIT_MIN

    class Recording(_RowByRow):
        def predict(self, targets, threads=None) -> Mixture:
            calls.append((len(targets), threads))
            return super().predict(targets)

    calls = []
    model = Recording(OnnxModel.load(trained.onnx_path))
    x = workspace_targets(trained.arm, SPLIT_MIN + 2, seed=35)
    solver = IKSolver(model, threads=2)
    whole, half = solver.solve(x), len(x) // 2
    assert sorted(calls) == [(half, 1), (half, 1)]   # two batches, one thread each
    first, second = solver.solve(x[:half]), solver.solve(x[half:])
    for name, a in whole.arrays().items():
        np.testing.assert_array_equal(np.concatenate([getattr(first, name), getattr(second, name)]),
                                      a, err_msg=name)


def test_batches_equal_one_batch_with_onnxruntime(onnx_solver):
    """With the real session the batch size may change float32 rounding, nothing else."""
    x = workspace_targets(onnx_solver.arm, 60, seed=33)
    whole = onnx_solver.solve(x)
    parts = IKSolver(onnx_solver.model, batch_size=7).solve(x)
    np.testing.assert_array_equal(parts.targets, whole.targets)
    np.testing.assert_allclose(parts.weights, whole.weights, atol=1e-6)
    np.testing.assert_allclose(parts.sigmas, whole.sigmas, atol=1e-5, rtol=1e-5)
    both = (parts.errors <= 1e-9) & (whole.errors <= 1e-9)
    assert both.sum() >= 0.5 * both.size / onnx_solver.model.components
    np.testing.assert_allclose(wrap_angle(parts.joints - whole.joints)[both], 0.0, atol=1e-6)
    assert np.mean(parts.reachable == whole.reachable) >= 0.95


def test_batch_size_dividing_n(onnx_solver):
    x = workspace_targets(onnx_solver.arm, 8, seed=34)
    sol = IKSolver(onnx_solver.model, batch_size=4).solve(x)
    assert len(sol) == 8


def test_empty_batch(bishop):
    solver = IKSolver.load(bishop.onnx_path)
    arm = solver.arm
    sol = solver.solve(np.zeros((0, arm.target_dim)))
    k = solver.model.components
    assert sol.joints.shape == (0, k, arm.dof)
    assert sol.weights.shape == (0, k)
    assert sol.reachable.shape == (0,)


def test_bad_targets(onnx_solver):
    d = onnx_solver.arm.target_dim
    with pytest.raises(IKMDNError, match="shape"):
        onnx_solver.solve(np.zeros((3, d + 1)))
    with pytest.raises(IKMDNError, match="finite"):
        onnx_solver.solve(np.full((2, d), np.nan))


# -- loading --------------------------------------------------------------------------------------

def test_load_onnx_run_folder_and_checkpoint(trained):
    x = workspace_targets(trained.arm, 30, seed=41)
    solvers = [IKSolver.load(p) for p in
               (trained.onnx_path, trained.run_dir, trained.run_dir / "model.pt")]
    assert isinstance(solvers[0].model, OnnxModel)
    results = [s.solve(x, refine=False) for s in solvers]
    for s, r in zip(solvers[1:], results[1:], strict=True):
        assert s.arm.spec() == solvers[0].arm.spec()
        assert s.model.components == solvers[0].model.components
        np.testing.assert_allclose(r.weights, results[0].weights, atol=1e-5)
        np.testing.assert_allclose(wrap_angle(r.joints - results[0].joints), 0.0, atol=1e-4)
    refined = [s.solve(x) for s in solvers]
    both = refined[0].reachable & refined[1].reachable & refined[2].reachable
    assert both.mean() >= 0.8


def test_load_passes_options(bishop):
    settings = RefineSettings(tol=1e-6, max_iter=3)
    solver = IKSolver.load(bishop.onnx_path, threads=1, refine_settings=settings, reach_tol=1e-3,
                           batch_size=5)
    assert solver.refine_settings is settings
    assert (solver.reach_tol, solver.batch_size) == (1e-3, 5)


def test_load_missing(tmp_path):
    with pytest.raises(IKMDNError, match="does not exist"):
        IKSolver.load(tmp_path / "missing.onnx")
    with pytest.raises(IKMDNError, match="does not exist"):
        IKSolver.load(tmp_path / "missing.pt")


# -- merge_duplicates -----------------------------------------------------------------------------

def test_merge_duplicates_by_hand():
    joints = np.array([
        [[0.1, 0.2], [0.1 + TWO_PI, 0.2 - TWO_PI], [1.0, -1.0], [0.1 + 5e-7, 0.2 - 5e-7]],
        [[math.pi - 1e-7, 0.0], [-math.pi + 1e-7, 0.0], [0.5, 0.5], [0.5, 0.5 + 1e-3]],
        [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [1.0, 1.0 - 2 * TWO_PI]],
    ])
    weights = np.array([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.2, 0.1]])
    original = weights.copy()
    merged, distinct = merge_duplicates(joints, weights)
    np.testing.assert_array_equal(distinct, [[True, False, True, False],
                                             [True, False, True, True],
                                             [True, True, True, False]])
    np.testing.assert_allclose(merged, [[0.8, 0.0, 0.2, 0.0],
                                        [0.5, 0.0, 0.25, 0.25],
                                        [0.4, 0.4, 0.2, 0.0]])
    np.testing.assert_allclose(merged.sum(axis=1), original.sum(axis=1))
    np.testing.assert_array_equal(weights, original)  # the input is not modified


def test_merge_duplicates_tolerance():
    joints = np.array([[[0.0, 0.0, 0.0], [0.0, 2e-6, 0.0]]])
    weights = np.array([[0.6, 0.4]])
    _, distinct = merge_duplicates(joints, weights)
    assert distinct.all()
    merged, distinct = merge_duplicates(joints, weights, tol=1e-5)
    np.testing.assert_array_equal(distinct, [[True, False]])
    np.testing.assert_allclose(merged, [[1.0, 0.0]])


def test_merge_duplicates_all_equal():
    joints = np.tile(np.array([0.3, -2.0]), (2, 5, 1)) + TWO_PI * np.arange(5)[None, :, None]
    weights = np.full((2, 5), 0.2)
    merged, distinct = merge_duplicates(joints, weights)
    np.testing.assert_array_equal(distinct, [[True] + [False] * 4] * 2)
    np.testing.assert_allclose(merged[:, 0], 1.0)


def test_solver_merges_duplicates(bishop):
    """Unreachable targets pull several candidates onto the same joint limit: they are merged."""
    sol = IKSolver.load(bishop.onnx_path).solve([[0.0, 0.0]])
    keep = sol.distinct[0]
    assert keep.sum() < len(keep)
    np.testing.assert_allclose(sol.weights[0].sum(), 1.0, atol=1e-6)
    assert np.all(sol.weights[0][~keep] == 0)
    distinct_joints = sol.joints[0][keep]
    for a in range(len(distinct_joints)):
        for b in range(a + 1, len(distinct_joints)):
            assert np.abs(wrap_angle(distinct_joints[a] - distinct_joints[b])).max() > 1e-6


# -- refine (the kernel itself: test_refine_kernel.py) --------------------------------------------

@pytest.mark.parametrize("name", ["bishop", "planar2", "planar3"])
def test_refine_converges_from_perturbed_solution(name):
    arm = get_arm(name)
    rng = np.random.default_rng(8)
    lo, hi = arm.joint_limits.T
    q_true = lo + 0.1 + (hi - lo - 0.2) * rng.random((1000, arm.dof))
    x = arm.fk(q_true)
    q0 = q_true + rng.normal(0.0, 0.05, q_true.shape)
    q, reached, error = refine(arm, q0, x)
    assert q.shape == q0.shape and reached.shape == x.shape and error.shape == (len(x),)
    assert np.mean(error <= 1e-9) >= 0.99
    assert np.mean(np.abs(wrap_angle(q - q_true)).max(axis=1) <= 1e-6) >= 0.95
    np.testing.assert_allclose(reached, arm.fk(q), atol=1e-12)
    np.testing.assert_allclose(error, np.linalg.norm(_residual(arm, reached, x), axis=1), rtol=1e-12)


@pytest.mark.parametrize("name", ["bishop", "planar2", "planar3"])
def test_refine_respects_joint_limits(name):
    arm = get_arm(name)
    rng = np.random.default_rng(9)
    q0 = rng.uniform(-10, 10, (2000, arm.dof))  # many start outside the limits
    x = rng.uniform(-2, 2, (2000, arm.target_dim))  # many targets unreachable
    q, reached, error = refine(arm, q0, x)
    assert arm.within_limits(q).all()
    lo, hi = arm.joint_limits.T
    cont = arm.continuous_joints
    assert np.all(q[:, ~cont] >= lo[~cont]) and np.all(q[:, ~cont] <= hi[~cont])
    assert np.all(q[:, cont] >= lo[cont]) and np.all(q[:, cont] < lo[cont] + TWO_PI)
    np.testing.assert_allclose(reached, arm.fk(q), atol=1e-12)
    assert np.all(np.isfinite(error))
    # Never worse than where it started (after projection onto the limits).
    start = arm.target_error(arm.fk(arm.project_to_limits(q0)), x)
    assert np.all(error <= start + 1e-12)


def test_refine_keeps_bishop_inside_limits_when_solution_is_beyond():
    """A target reachable only with joint 1 beyond its upper limit: the answer stays at the limit."""
    arm = get_arm("bishop")
    beyond = np.array([[1.6, math.pi]])  # joint 1 limit is 1.2
    x = arm.fk(beyond)
    q, _, error = refine(arm, np.array([[1.1, math.pi]]), x)
    assert arm.within_limits(q).all()
    assert q[0, 0] == pytest.approx(1.2)
    assert error[0] > 1e-3


def test_refine_leaves_exact_solutions_alone(trained):
    arm = trained.arm
    q_true = arm.sample_joints(50, np.random.default_rng(10))
    q, _, error = refine(arm, q_true, arm.fk(q_true))
    np.testing.assert_allclose(wrap_angle(q - q_true), 0.0, atol=1e-12)
    assert np.all(error <= 1e-12)


def test_refine_settings_cap_iterations():
    arm = get_arm("planar2")
    rng = np.random.default_rng(12)
    q_true = arm.sample_joints(200, rng)
    q0 = q_true + rng.normal(0.0, 0.3, q_true.shape)
    _, _, error_one = refine(arm, q0, arm.fk(q_true), RefineSettings(max_iter=1))
    _, _, error_full = refine(arm, q0, arm.fk(q_true))
    assert np.mean(error_one <= 1e-9) < np.mean(error_full <= 1e-9)
    assert np.all(error_full <= error_one + 1e-12)
