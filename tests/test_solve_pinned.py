"""IKSolver.solve (mode "all") pinned, bit for bit, to a plain numpy statement of its pipeline:
the network's modes sorted heaviest first, refined, forward-checked, merged (the reference merge
below, one vectorised pass per component), fallback seeds where nothing solves, then sorted
heaviest first with merged duplicates last. The solver's fast paths (compiled merge, kernel
errors, no copies of rows already in order, batches written in place) must not change a bit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ikmdn.data import make_ik_dataset
from ikmdn.refine import refine
from ikmdn.solve import IKSolver, Solutions, merge_duplicates, solved_mask

SHIPPED = Path(__file__).resolve().parent.parent / "exported_models"
TWO_PI = 2.0 * math.pi


def reference_merge(joints: np.ndarray, weights: np.ndarray, tol: float = 1e-6):
    """merge_duplicates as numpy: (weights (N, K) merged, distinct (N, K))."""
    n, k, _ = joints.shape
    weights = weights.copy()
    distinct = np.ones((n, k), dtype=bool)
    rows = np.arange(n)
    with np.errstate(invalid="ignore"):
        turns = joints % TWO_PI
    for j in range(1, k):
        d = np.abs(turns[:, :j] - turns[:, j:j + 1])
        match = (np.minimum(d, TWO_PI - d).max(axis=2) <= tol) & distinct[:, :j]
        has = match.any(axis=1)
        into = np.argmax(match, axis=1)
        weights[rows[has], into[has]] += weights[has, j]
        weights[has, j] = 0.0
        distinct[has, j] = False
    return weights, distinct


def reference_solve(solver: IKSolver, x: np.ndarray) -> dict[str, np.ndarray]:
    """The array fields of solver.solve(x) (one batch, no fallback seeds) by the numpy pipeline."""
    arm = solver.arm
    mixture = solver.model.predict(x)
    w, means, sigmas = mixture.weights, mixture.means, mixture.sigmas
    n, k = w.shape
    order = np.argsort(-w, axis=1, kind="stable")
    weights = np.take_along_axis(w, order, axis=1).astype(np.float64)
    means = np.take_along_axis(means, order[..., None], axis=1).astype(np.float64)
    sigmas = np.take_along_axis(sigmas, order[..., None], axis=1).astype(np.float64)
    xs = np.repeat(x, k, axis=0)
    q, reached, _ = refine(arm, means.reshape(n * k, -1), xs, solver.refine_settings)
    joints = q.reshape(n, k, -1)
    errors = arm.target_error(reached, xs).reshape(n, k)
    rotation_errors = arm.rotation_error(reached, xs).reshape(n, k)
    within = arm.within_limits(q).reshape(n, k)
    weights, distinct = reference_merge(joints, weights)
    rank = np.argsort(np.where(distinct, -weights, np.inf), axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, rank.reshape(rank.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa: E731
    out = {"joints": take(joints), "weights": take(weights), "sigmas": take(sigmas),
           "positions": take(reached.reshape(n, k, -1)), "errors": take(errors),
           "rotation_errors": take(rotation_errors), "within_limits": take(within),
           "distinct": take(distinct)}
    out["reachable"] = solved_mask(out["distinct"], out["within_limits"], out["errors"],
                                   out["rotation_errors"], solver.reach_tol).any(axis=1)
    return out


@pytest.mark.parametrize("name", ["bishop", "planar3", "ur5"])
def test_solve_equals_the_numpy_pipeline(name):
    solver = IKSolver.load(SHIPPED / f"{name}.onnx", fallback_seeds=0, batch_size=700)
    x = make_ik_dataset(solver.arm, 2000, seed=11).inputs[: 2000 if solver.arm.kind == "planar" else 300]
    if not solver.arm.pose_targets:
        x = np.concatenate([x, 3.0 * x[:50]])   # some targets out of reach
    sol = solver.solve(x)
    batches = [reference_solve(solver, x[s:s + 700]) for s in range(0, len(x), 700)]
    want = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    for key, value in want.items():
        got = getattr(sol, key)
        assert got.dtype == value.dtype and got.shape == value.shape, key
        np.testing.assert_array_equal(got, value, err_msg=key)
    assert not sol.fallback.any()
    np.testing.assert_array_equal(sol.targets, x)


def test_merge_duplicates_equals_the_numpy_merge():
    rng = np.random.default_rng(5)
    base = rng.uniform(-4, 4, (500, 6, 3))
    # duplicates: copies shifted by whole turns and by less and more than the tolerance
    joints = np.concatenate([base, base[:, :3] + TWO_PI * rng.integers(-1, 2, (500, 3, 3))
                             + rng.choice([0.0, 4e-7, 3e-6], (500, 3, 1))], axis=1)
    joints[7, 2, 1] = np.nan
    joints[9, 4, 0] = np.inf
    weights = rng.dirichlet(np.ones(9), 500)
    got, want = merge_duplicates(joints, weights), reference_merge(joints, weights)
    assert not want[1].all()
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_solutions_concatenate_and_take_keep_fields():
    solver = IKSolver.load(SHIPPED / "bishop.onnx", batch_size=64)
    x = make_ik_dataset(solver.arm, 150, seed=3).inputs
    whole = solver.solve(x)
    parts = [IKSolver.load(SHIPPED / "bishop.onnx").solve(x[s:s + 64]) for s in range(0, 150, 64)]
    joined = Solutions.concatenate(parts)
    for key, value in whole.arrays().items():
        np.testing.assert_array_equal(value, getattr(joined, key), err_msg=key)
    rows = np.array([5, 0, 149])
    for key, value in whole.take(rows).arrays().items():
        np.testing.assert_array_equal(value, getattr(whole, key)[rows], err_msg=key)


@pytest.mark.parametrize("mode, near", [("all", False), ("all", True), ("best", False)])
def test_batches_in_parallel_change_nothing(mode, near):
    """Two batches in flight (threads=2) give the bits of one batch after another (threads=1),
    fallback seeds included (poses out of reach draw them from each batch's generator)."""
    path = SHIPPED / "ur5.onnx"
    one, two = (IKSolver.load(path, threads=t, batch_size=40) for t in (1, 2))
    arm = one.arm
    x = make_ik_dataset(arm, 150, seed=4).inputs
    x[::15, 0] += 2.0   # metres: beyond the reach of a UR5
    ref = arm.sample_joints(len(x), np.random.default_rng(1)) if near else None
    a, b = one.solve(x, mode=mode, near=ref), two.solve(x, mode=mode, near=ref)
    assert not a.reachable[::15].any()
    for key, value in a.arrays().items():
        np.testing.assert_array_equal(value, getattr(b, key), err_msg=key)


def test_sorted_modes_equal_sorted_by_weight():
    """The compiled sort of the refined path against Mixture.sorted_by_weight, ties included."""
    from ikmdn.kernels import sorted_modes
    from ikmdn.mixture import Mixture

    rng = np.random.default_rng(8)
    weights = rng.dirichlet(np.ones(5), 300).astype(np.float32)
    weights[::7, 1] = weights[::7, 3]   # ties keep their order
    weights[::11] = 0.2
    mixture = Mixture(weights, rng.normal(size=(300, 5, 3)).astype(np.float32),
                      rng.uniform(0.1, 1, (300, 5, 3)).astype(np.float32))
    want = mixture.sorted_by_weight()
    for got, value in zip(sorted_modes(mixture.weights, mixture.means, mixture.sigmas),
                          (want.weights, want.means, want.sigmas), strict=True):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, value.astype(np.float64))
