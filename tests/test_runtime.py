"""The ONNX runtime (ikmdn.runtime.OnnxModel): torch-free, and every bad input an IKMDNError."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import run_python, workspace_targets
from onnx import TensorProto, helper

from ikmdn.errors import IKMDNError
from ikmdn.runtime import OnnxModel

SOLVE_WITHOUT_TORCH = """
import sys
{prelude}
import numpy as np
import ikmdn.runtime
import ikmdn.solve
from ikmdn.runtime import OnnxModel
from ikmdn.solve import IKSolver

model = OnnxModel.load(sys.argv[1])
mixture = model.predict(model.arm.fk(model.arm.sample_joints(5, np.random.default_rng(0))))
assert mixture.weights.shape == (5, model.components), mixture.weights.shape
solver = IKSolver.load(sys.argv[1])
targets = solver.arm.fk(solver.arm.sample_joints(20, np.random.default_rng(1)))
solutions = solver.solve(targets)
assert solutions.joints.shape == (20, model.components, solver.arm.dof)
assert solutions.reachable.mean() >= 0.8, solutions.errors
{check}
print("OK", sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""

BLOCK_TORCH = """
import importlib.abc

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"import of {name} blocked by the test")
        return None

sys.meta_path.insert(0, _NoTorch())
"""

CHECK_BLOCKED = """
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the torch blocker did not work")
"""


# -- no torch -------------------------------------------------------------------------------------

def test_runtime_and_solve_never_import_torch(planar2):
    code = SOLVE_WITHOUT_TORCH.format(prelude="", check="assert 'torch' not in sys.modules")
    result = run_python(code, str(planar2.onnx_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK []"


def test_runtime_and_solve_work_with_torch_blocked(bishop):
    code = SOLVE_WITHOUT_TORCH.format(prelude=BLOCK_TORCH, check=CHECK_BLOCKED)
    result = run_python(code, str(bishop.onnx_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK []"


def test_checkpoint_without_torch_is_a_clear_error(bishop):
    code = BLOCK_TORCH.replace("import importlib.abc", "import sys\nimport importlib.abc") + """
from ikmdn.errors import IKMDNError
from ikmdn.solve import IKSolver
try:
    IKSolver.load(sys.argv[1])
except IKMDNError as exc:
    print(exc)
else:
    raise SystemExit("loading a checkpoint without torch should fail")
"""
    result = run_python(code, str(bishop.run_dir))
    assert result.returncode == 0, result.stderr
    assert "needs torch" in result.stdout
    assert "export" in result.stdout


# -- loading --------------------------------------------------------------------------------------

def test_load_attributes(trained):
    model = OnnxModel.load(trained.onnx_path, threads=1)
    assert model.arm.name == trained.name
    assert model.components == trained.checkpoint.config.components
    assert model.source == str(trained.onnx_path)


def test_load_from_bytes(bishop):
    model = OnnxModel(bishop.onnx_path.read_bytes())
    assert model.arm.name == "bishop"
    assert model.source == "<bytes>"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(IKMDNError, match=r"nope\.onnx does not exist"):
        OnnxModel.load(path)


def test_folder_is_not_a_model(tmp_path):
    with pytest.raises(IKMDNError, match="does not exist"):
        OnnxModel.load(tmp_path)


def test_random_bytes(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(IKMDNError, match=r"garbage\.onnx is not a readable ONNX model") as info:
        OnnxModel.load(path)
    assert "\n" not in str(info.value)
    with pytest.raises(IKMDNError, match="not a readable ONNX model"):
        OnnxModel(path.read_bytes())


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(IKMDNError, match="empty.onnx"):
        OnnxModel.load(path)


def _identity_model(metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("targets", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("weights", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["targets"], ["weights"])], "id", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def test_onnx_model_without_ikmdn_metadata(tmp_path):
    path = tmp_path / "identity.onnx"
    onnx.save(_identity_model(), str(path))
    with pytest.raises(IKMDNError, match="not an ikmdn model") as info:
        OnnxModel.load(path)
    assert "ikmdn.format" in str(info.value) and "ikmdn.arm" in str(info.value)


def test_onnx_model_with_metadata_but_wrong_interface(bishop, tmp_path):
    meta = {p.key: p.value for p in onnx.load(str(bishop.onnx_path)).metadata_props}
    path = tmp_path / "identity.onnx"
    onnx.save(_identity_model(meta), str(path))
    with pytest.raises(IKMDNError, match="expected input 'targets' and outputs"):
        OnnxModel.load(path)


def _rewrite_metadata(src, dst, **changes: str) -> None:
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save(proto, str(dst))


def test_newer_format_is_refused(bishop, tmp_path):
    path = tmp_path / "future.onnx"
    _rewrite_metadata(bishop.onnx_path, path, **{"ikmdn.format": "3"})
    with pytest.raises(IKMDNError, match="ikmdn.format 3.*upgrade ikmdn"):
        OnnxModel.load(path)


def test_non_integer_format_is_refused(bishop, tmp_path):
    path = tmp_path / "odd.onnx"
    _rewrite_metadata(bishop.onnx_path, path, **{"ikmdn.format": "one"})
    with pytest.raises(IKMDNError, match="not an integer"):
        OnnxModel.load(path)


def test_bad_arm_json_is_refused(bishop, tmp_path):
    path = tmp_path / "odd.onnx"
    _rewrite_metadata(bishop.onnx_path, path, **{"ikmdn.arm": "{not json"})
    with pytest.raises(IKMDNError, match="ikmdn.arm is not valid JSON"):
        OnnxModel.load(path)


def test_unknown_arm_kind_is_refused(bishop, tmp_path):
    spec = {**bishop.arm.spec(), "kind": "hexapod"}
    path = tmp_path / "odd.onnx"
    _rewrite_metadata(bishop.onnx_path, path, **{"ikmdn.arm": json.dumps(spec)})
    with pytest.raises(IKMDNError, match="unknown arm kind 'hexapod'"):
        OnnxModel.load(path)


def test_bad_thread_count(bishop):
    with pytest.raises(IKMDNError, match="threads"):
        OnnxModel.load(bishop.onnx_path, threads=0)


# -- predict --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(trained_models):
    return OnnxModel.load(trained_models("planar3").onnx_path)


def test_predict_shapes(trained):
    model = OnnxModel.load(trained.onnx_path)
    k, dof, d = model.components, model.arm.dof, model.arm.target_dim
    x = workspace_targets(model.arm, 9, seed=0)
    mixture = model.predict(x)
    assert mixture.weights.shape == (9, k)
    assert mixture.means.shape == mixture.sigmas.shape == (9, k, dof)
    np.testing.assert_allclose(mixture.weights.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(mixture.sigmas > 0)
    single = model.predict(x[0])
    assert single.weights.shape == (1, k)
    np.testing.assert_allclose(single.means[0], mixture.means[0], atol=1e-5)
    as_list = model.predict(x[:2].tolist())
    np.testing.assert_allclose(as_list.means, mixture.means[:2], atol=1e-5)
    assert model.predict(np.zeros((3, d), dtype=np.float32)).weights.shape == (3, k)


def test_empty_batch(trained):
    model = OnnxModel.load(trained.onnx_path)
    k, dof = model.components, model.arm.dof
    mixture = model.predict(np.zeros((0, model.arm.target_dim)))
    assert mixture.weights.shape == (0, k)
    assert mixture.means.shape == (0, k, dof)
    assert mixture.sigmas.shape == (0, k, dof)
    for a in (mixture.weights, mixture.means, mixture.sigmas):
        assert a.dtype == np.float32


@pytest.mark.parametrize("shape", [(4, 2), (4, 4), (2,), (4,), (2, 3, 1), (2, 3, 3), ()])
def test_wrong_width_or_rank(model, shape):
    with pytest.raises(IKMDNError, match=r"targets must have shape \(N, 3\)"):
        model.predict(np.zeros(shape))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_targets(model, bad):
    x = np.zeros((5, 3))
    x[3, 1] = bad
    with pytest.raises(IKMDNError, match="finite"):
        model.predict(x)


def test_non_numeric_targets(model):
    with pytest.raises(IKMDNError, match="targets must be numbers"):
        model.predict([["a", "b", "c"]])
    with pytest.raises(IKMDNError, match="targets"):
        model.predict([[1.0, 2.0], [1.0, 2.0, 3.0]])  # ragged


def test_session_is_reused(model):
    session = model.session
    model.predict(np.zeros((2, 3)))
    model.predict(np.zeros((5, 3)))
    assert model.session is session
