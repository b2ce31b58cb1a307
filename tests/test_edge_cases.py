"""Edge cases found in review: fallback weights, non-finite and float32-overflowing input,
graph/arm mismatches, output paths that are folders or sit under files, negative seeds."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import invoke

from ikmdn.arms import arm_from_spec, get_arm
from ikmdn.errors import IKMDNError
from ikmdn.mixture import Mixture
from ikmdn.runtime import OnnxModel
from ikmdn.solve import IKSolver
from ikmdn.train import TrainConfig


def assert_one_line_error(result, text):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and text in result.output, result.output
    assert "Traceback" not in result.output


def rewrite(src, dst, **meta):
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key in meta:
            prop.value = meta[prop.key]
    onnx.save(proto, str(dst))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fallback_keeps_weights_summing_to_one(monkeypatch, k):
    """The fallback candidate takes a merged duplicate's slot, else the lightest candidate's
    (whose weight moves to the heaviest); with K = 1 it takes the only slot and its weight."""
    import ikmdn.solve as solve_module

    arm = get_arm("rrr3")
    targets = arm.fk(arm.sample_joints(30, np.random.default_rng(1)))
    real, calls = solve_module.refine, []

    def modes_fail(arm_, q0, x, settings, threads=None):
        calls.append(1)
        if len(calls) == 1:
            q = np.asarray(q0, dtype=np.float64)
            return q, arm_.fk(q), arm_.target_error(arm_.fk(q), x)
        return real(arm_, q0, x, settings, threads=threads)

    monkeypatch.setattr(solve_module, "refine", modes_fail)

    class FarModes:
        components = k

        def __init__(self):
            self.arm = arm

        def predict(self, x, threads=None):
            n = len(x)
            means = 2.5 + 0.5 * np.arange(k)[None, :, None] * np.ones((n, k, 3))  # all distinct
            weights = np.tile(np.linspace(2, 1, k) / np.linspace(2, 1, k).sum(), (n, 1))
            return Mixture(weights, means, np.full((n, k, 3), 0.2))

    sol = IKSolver(FarModes(), fallback_seeds=16).solve(targets)
    assert sol.fallback.mean() > 0.9
    np.testing.assert_allclose(sol.weights.sum(axis=1), 1.0)
    rows = np.flatnonzero(sol.fallback)
    best = sol.best_index[rows]
    assert np.all(sol.sigmas[rows, best] == 0) and np.all(sol.errors[rows, best] <= 1e-6)
    if k > 1:
        assert np.all(sol.weights[rows, best] == 0)


def test_nan_joints_are_not_within_limits():
    assert not get_arm("planar2").within_limits([[np.nan, np.nan]])[0]
    assert not get_arm("bishop").within_limits([[np.nan, 2.0]])[0]


def test_targets_beyond_float32_are_refused(planar2):
    with pytest.raises(IKMDNError, match="float32"):
        OnnxModel(planar2.onnx_path).predict([[1e39, 0.0]])
    result = invoke("solve", "--model", planar2.onnx_path, "1e308", "1e308")
    assert_one_line_error(result, "float32")


def test_graph_must_match_the_metadata_arm(planar2, tmp_path):
    wrong = json.dumps(get_arm("planar3").spec())  # 3 joints, 3 target coordinates
    rewrite(planar2.onnx_path, tmp_path / "m.onnx", **{"ikmdn.arm": wrong})
    with pytest.raises(IKMDNError, match="needs 3"):
        OnnxModel(tmp_path / "m.onnx")


@pytest.mark.parametrize("fmt", ["0", "-3"])
def test_format_below_one_is_refused(planar2, tmp_path, fmt):
    rewrite(planar2.onnx_path, tmp_path / "m.onnx", **{"ikmdn.format": fmt})
    with pytest.raises(IKMDNError, match="ikmdn.format must be 1"):
        OnnxModel(tmp_path / "m.onnx")


def test_malformed_arm_spec_is_an_ikmdn_error():
    spec = get_arm("planar2").spec()
    with pytest.raises(IKMDNError):
        arm_from_spec({**spec, "link_lengths": [1.0, "a"]})
    with pytest.raises(IKMDNError):
        arm_from_spec({**spec, "joint_limits": [[0, 1], [0]]})


def test_output_paths(planar2, tmp_path):
    folder = tmp_path / "dir.npz"
    folder.mkdir()
    result = invoke("solve", "--model", planar2.onnx_path, "0.5", "0.5", "--output", folder, "--force")
    assert_one_line_error(result, "is a folder")
    a_file = tmp_path / "afile"
    a_file.write_text("mine")
    result = invoke("export", planar2.run_dir, "-o", a_file / "x.onnx")
    assert_one_line_error(result, "not a folder")
    assert a_file.read_text() == "mine"


def test_export_leaves_other_files_alone(planar2, tmp_path):
    mine = tmp_path / "m.onnx.tmp"
    mine.write_text("mine")
    assert invoke("export", planar2.run_dir, "-o", tmp_path / "m.onnx").exit_code == 0
    assert mine.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.tmp"]


@pytest.mark.parametrize("command", [
    ["train", "--out", "{out}", "--seed", "-1"],
    ["demo", "sinusoid", "--out", "{out}", "--seed", "-1"],
])
def test_negative_seed_is_a_usage_error(tmp_path, command):
    out = tmp_path / "run"
    result = invoke(*[c.format(out=out) for c in command])
    assert result.exit_code == 2 and "-1" in result.output
    assert not out.exists()


def test_non_finite_numbers_in_options(planar2, tmp_path):
    result = invoke("solve", "--model", planar2.onnx_path, "0.5", "0.5", "--tol", "nan")
    assert result.exit_code == 2 and "positive number" in result.output
    with pytest.raises(IKMDNError):
        TrainConfig(lr=float("inf"))
    with pytest.raises(IKMDNError):
        TrainConfig(seed=-1)


def test_train_export_name_is_checked_before_training(tmp_path):
    result = invoke("train", "--out", tmp_path / "run", "--export", tmp_path / "m.txt")
    assert result.exit_code == 2 and ".onnx" in result.output
    assert not (tmp_path / "run").exists()


def test_targets_folder_is_named_as_such(planar2, tmp_path):
    (tmp_path / "t.csv").mkdir()
    result = invoke("solve", "--model", planar2.onnx_path, "--targets", tmp_path / "t.csv")
    assert_one_line_error(result, "is a folder")
