"""ONNX export: the file contract (DESIGN.md "Contracts") and PyTorch vs ONNX Runtime parity."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from conftest import outside_targets, workspace_targets

import ikmdn
from ikmdn.arms import arm_from_spec, get_arm
from ikmdn.errors import IKMDNError
from ikmdn.export import export_onnx
from ikmdn.runtime import OnnxModel
from ikmdn.train import TrainConfig


def _meta(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _dims(value_info) -> list:
    """Each dimension as its int size or its symbolic name."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value_info.type.tensor_type.shape.dim]


# -- the file -------------------------------------------------------------------------------------

def test_single_self_contained_file(trained):
    path = trained.onnx_path
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no external data, no .tmp
    proto = onnx.load(str(path), load_external_data=False)
    tensors = list(proto.graph.initializer)
    assert tensors, "the weights must live inside the graph"
    for t in tensors:
        assert t.data_location != onnx.TensorProto.EXTERNAL, t.name
        assert not t.external_data, t.name


def test_opset_and_checker(trained):
    proto = onnx.load(str(trained.onnx_path))
    default = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    assert default and default[0] >= 17
    onnx.checker.check_model(proto, full_check=True)
    onnx.checker.check_model(str(trained.onnx_path), full_check=True)


def test_inputs_and_outputs(trained):
    arm = trained.arm
    k = trained.checkpoint.config.components
    graph = onnx.load(str(trained.onnx_path)).graph
    float32 = onnx.TensorProto.FLOAT

    assert [i.name for i in graph.input] == ["targets"]
    (x,) = graph.input
    assert x.type.tensor_type.elem_type == float32
    batch, width = _dims(x)
    assert isinstance(batch, str) and batch, "the batch dimension must be symbolic (dynamic)"
    assert width == arm.target_dim

    outputs = {o.name: o for o in graph.output}
    assert [o.name for o in graph.output] == ["weights", "means", "sigmas"]
    for o in graph.output:
        assert o.type.tensor_type.elem_type == float32, o.name
    assert _dims(outputs["weights"]) == [batch, k]
    assert _dims(outputs["means"]) == [batch, k, arm.dof]
    assert _dims(outputs["sigmas"]) == [batch, k, arm.dof]


def test_metadata(trained):
    proto = onnx.load(str(trained.onnx_path))
    meta = _meta(proto)
    assert {"ikmdn.format", "ikmdn.version", "ikmdn.arm", "ikmdn.train", "ikmdn.metrics"} <= set(meta)
    assert meta["ikmdn.format"] == "1"
    assert meta["ikmdn.version"] == ikmdn.__version__
    assert proto.producer_name == "ikmdn"
    assert proto.doc_string.strip()
    assert "targets" in proto.doc_string

    spec = json.loads(meta["ikmdn.arm"])
    assert spec == trained.arm.spec()
    rebuilt = arm_from_spec(spec)
    original = get_arm(trained.name)
    q = original.sample_joints(200, np.random.default_rng(3))
    np.testing.assert_array_equal(rebuilt.fk(q), original.fk(q))
    np.testing.assert_array_equal(rebuilt.joint_limits, original.joint_limits)
    assert (rebuilt.dof, rebuilt.target_dim) == (original.dof, original.target_dim)

    train = json.loads(meta["ikmdn.train"])
    assert train == trained.checkpoint.config.to_dict()
    assert TrainConfig.from_dict(train) == trained.checkpoint.config

    metrics = json.loads(meta["ikmdn.metrics"])
    for key in ("val_nll", "best_mode_rms"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["best_mode_rms"] >= 0


def test_runtime_reads_metadata(trained):
    model = OnnxModel.load(trained.onnx_path)
    assert model.arm.spec() == trained.arm.spec()
    assert model.components == trained.checkpoint.config.components
    assert model.train_config == trained.checkpoint.config.to_dict()
    assert model.metrics == json.loads(json.dumps(trained.checkpoint.metrics))
    assert model.version == ikmdn.__version__


# -- overwriting ----------------------------------------------------------------------------------

def test_refuses_to_overwrite_without_force(bishop, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"precious")
    with pytest.raises(IKMDNError, match="already exists.*--force"):
        export_onnx(bishop.checkpoint, path)
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_force_overwrites(bishop, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    report = export_onnx(bishop.checkpoint, path, force=True)
    assert report.ok
    assert OnnxModel.load(path).arm.name == "bishop"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_folder_as_target_is_refused(bishop, tmp_path):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    with pytest.raises(IKMDNError, match="folder"):
        export_onnx(bishop.checkpoint, folder, force=True)
    assert folder.is_dir() and not any(folder.iterdir())


def test_export_creates_parent_folders(bishop, tmp_path):
    path = tmp_path / "a" / "b" / "m.onnx"
    export_onnx(bishop.checkpoint, path)
    assert path.is_file()


# -- parity ---------------------------------------------------------------------------------------

def _check_parity(trained, targets: np.ndarray) -> None:
    x = np.asarray(targets, dtype=np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in trained.checkpoint.model(torch.from_numpy(x))]
    got = OnnxModel.load(trained.onnx_path).predict(x)
    k, dof = trained.checkpoint.config.components, trained.arm.dof
    assert got.weights.shape == (len(x), k)
    assert got.means.shape == got.sigmas.shape == (len(x), k, dof)
    for a in (got.weights, got.means, got.sigmas):
        assert a.dtype == np.float32
    assert np.max(np.abs(got.weights - expected[0])) <= 1e-5
    assert np.allclose(got.means, expected[1], atol=1e-4, rtol=1e-5)
    assert np.allclose(got.sigmas, expected[2], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(got.weights.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(got.weights >= 0)
    assert np.all(got.sigmas > 0)
    assert np.all(np.isfinite(got.means))


@pytest.mark.parametrize("n", [1, 7, 4096])
def test_parity_inside_workspace(trained, n):
    _check_parity(trained, workspace_targets(trained.arm, n, seed=n))


@pytest.mark.parametrize("n", [1, 7, 4096])
def test_parity_outside_workspace(trained, n):
    _check_parity(trained, outside_targets(trained.arm, n, seed=100 + n))


def test_parity_report_is_ok(trained, tmp_path):
    report = export_onnx(trained.checkpoint, tmp_path / "again.onnx", seed=5)
    assert report.ok
    assert report.targets > 0
    assert report.weights_abs <= 1e-5
    assert report.means_tol <= 1 and report.sigmas_tol <= 1
    assert report.summary().startswith("parity PyTorch vs ONNX Runtime")


def test_export_is_deterministic(bishop, tmp_path):
    """Same checkpoint, same bytes: exported files can be diffed and cached."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(bishop.checkpoint, a)
    export_onnx(bishop.checkpoint, b)
    assert a.read_bytes() == b.read_bytes()


def test_least_squares_baseline_exports(tmp_path):
    """Bishop's least-squares network (one component) goes through the same ONNX contract."""
    from ikmdn.export import export_onnx
    from ikmdn.runtime import OnnxModel
    from ikmdn.train import TrainConfig, train_run

    checkpoint = train_run(TrainConfig(samples=2000, epochs=1, hidden=(8,), kind="least_squares"),
                           tmp_path / "run")
    assert checkpoint.config.components == 1
    assert export_onnx(checkpoint, tmp_path / "ls.onnx").ok
    model = OnnxModel(tmp_path / "ls.onnx")
    assert model.components == 1
    mix = model.predict(np.array([[0.6, 0.4], [0.5, 0.5]]))
    assert mix.weights.shape == (2, 1) and np.all(mix.weights == 1)
    assert np.all(mix.sigmas > 0)
