"""Datasets: IK pairs made by forward kinematics, splits, .npz I/O and Bishop's 1-D toy problems."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ikmdn.arms import get_arm
from ikmdn.data import TOY_PROBLEMS, Dataset, make_ik_dataset, sinusoid_bishop, sinusoid_post
from ikmdn.errors import IKMDNError


@pytest.mark.parametrize("name", ["bishop", "planar2", "planar3"])
def test_ik_dataset_pairs_targets_with_joints(name):
    arm = get_arm(name)
    data = make_ik_dataset(arm, 300, seed=3)
    assert len(data) == 300
    assert data.inputs.shape == (300, arm.target_dim) and data.outputs.shape == (300, arm.dof)
    assert data.inputs.dtype == np.float64 and data.outputs.dtype == np.float64
    np.testing.assert_array_equal(data.inputs, arm.fk(data.outputs))
    lo, hi = arm.joint_limits.T
    assert np.all((data.outputs >= lo) & (data.outputs <= hi))


def test_ik_dataset_reproducible_by_seed():
    arm = get_arm("planar2")
    a, b, c = (make_ik_dataset(arm, 100, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.outputs, b.outputs)
    assert not np.array_equal(a.outputs, c.outputs)


@pytest.mark.parametrize("n", [0, -1, -100])
def test_ik_dataset_rejects_non_positive_n(n):
    with pytest.raises(IKMDNError, match=str(n)):
        make_ik_dataset(get_arm("bishop"), n, seed=0)


def _row_set(a: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(row) for row in a.tolist()}


@pytest.mark.parametrize(("n", "fraction", "n_held"),
                         [(100, 0.2, 20), (101, 0.1, 10), (10, 0.29, 3), (10, 0.01, 1)])
def test_split_sizes_and_disjointness(n, fraction, n_held):
    arm = get_arm("planar2")
    data = make_ik_dataset(arm, n, seed=1)
    rest, held = data.split(fraction, seed=2)
    assert (len(rest), len(held)) == (n - n_held, n_held)
    rest_rows, held_rows = _row_set(rest.outputs), _row_set(held.outputs)
    assert len(rest_rows) == len(rest) and len(held_rows) == len(held)
    assert not rest_rows & held_rows
    assert rest_rows | held_rows == _row_set(data.outputs)
    # pairs stay together
    for part in (rest, held):
        np.testing.assert_array_equal(part.inputs, arm.fk(part.outputs))


def test_split_reproducible_by_seed():
    data = make_ik_dataset(get_arm("bishop"), 50, seed=1)
    a, b, c = (data.split(0.3, seed=s)[1] for s in (4, 4, 5))
    np.testing.assert_array_equal(a.outputs, b.outputs)
    assert not np.array_equal(a.outputs, c.outputs)


def test_dataset_rejects_mismatched_shapes():
    with pytest.raises(IKMDNError):
        Dataset(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(IKMDNError):
        Dataset(np.zeros(3), np.zeros((3, 2)))


def test_save_load_round_trip(tmp_path):
    data = make_ik_dataset(get_arm("planar3"), 40, seed=8)
    path = tmp_path / "data.npz"
    data.save(path)
    loaded = Dataset.load(path)
    np.testing.assert_array_equal(loaded.inputs, data.inputs)
    np.testing.assert_array_equal(loaded.outputs, data.outputs)
    assert loaded.inputs.dtype == np.float64
    loaded_str = Dataset.load(str(path))
    np.testing.assert_array_equal(loaded_str.outputs, data.outputs)


def test_load_errors(tmp_path):
    with pytest.raises(IKMDNError, match="missing.npz"):
        Dataset.load(tmp_path / "missing.npz")
    wrong_keys = tmp_path / "wrong.npz"
    np.savez(wrong_keys, x=np.zeros((2, 2)))
    with pytest.raises(IKMDNError):
        Dataset.load(wrong_keys)
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not an npz file\n")
    with pytest.raises(IKMDNError):
        Dataset.load(garbage)


def test_sinusoid_post():
    data = sinusoid_post(20000, seed=0)
    y, x = data.inputs, data.outputs
    assert y.shape == (20000, 1) and x.shape == (20000, 1)
    assert x.min() >= -10.5 and x.max() <= 10.5
    assert x.min() < -10.4 and x.max() > 10.4
    noise = y - (7.0 * np.sin(0.75 * x) + 0.5 * x)
    assert abs(noise.std() - 1.0) < 0.03
    assert abs(noise.mean()) < 0.03
    again = sinusoid_post(20000, seed=0)
    np.testing.assert_array_equal(again.inputs, y)
    assert not np.array_equal(sinusoid_post(20000, seed=1).inputs, y)


def test_sinusoid_bishop():
    data = sinusoid_bishop(5000, seed=0)
    t, x = data.inputs, data.outputs
    assert t.shape == (5000, 1) and x.shape == (5000, 1)
    assert x.min() >= 0.0 and x.max() <= 1.0
    noise = t - x - 0.3 * np.sin(2 * math.pi * x)
    assert np.abs(noise).max() <= 0.1
    assert noise.min() < -0.09 and noise.max() > 0.09  # uniform over the whole band
    np.testing.assert_array_equal(sinusoid_bishop(5000, seed=0).inputs, t)


def test_toy_problem_registry():
    assert TOY_PROBLEMS["post"] is sinusoid_post
    assert TOY_PROBLEMS["bishop"] is sinusoid_bishop
