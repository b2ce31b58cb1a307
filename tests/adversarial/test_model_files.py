"""Adversarial tests of model files (issue 11, class 1, and from classes 6 and 7 the onnxruntime
error at run time, the declared K of `ikmdn info` and URDF limits of inf).

A model file is untrusted input: crafted .onnx files (from the shipped bishop.onnx, edited with
onnx) and crafted model.pt / last.pt files (from a tiny training run) must give one-line
IKMDNErrors, and a file that must be refused is refused before any InferenceSession exists.
"""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from ikmdn import runtime
from ikmdn.arms import arm_from_spec, get_arm, list_arms, parse_urdf
from ikmdn.cli import cli
from ikmdn.errors import IKMDNError, JobFailedError
from ikmdn.runtime import OnnxModel
from ikmdn.solve import IKSolver

try:
    import torch
except ImportError:  # the .onnx tests need no torch; the checkpoint tests do
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="checkpoints need torch (ikmdn[train])")

ROOT = Path(__file__).resolve().parents[2]
BISHOP = ROOT / "exported_models" / "bishop.onnx"
SECRET = np.arange(10, dtype=np.float32).tobytes()  # what an attacker wants read as weights


def bishop_proto() -> onnx.ModelProto:
    return onnx.load_from_string(BISHOP.read_bytes())


def write(proto: onnx.ModelProto, path: Path) -> Path:
    """Serialize as is (onnx.save would write external data files itself)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return path


def set_meta(proto: onnx.ModelProto, key: str, value: str) -> onnx.ModelProto:
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
    return proto


def meta(proto: onnx.ModelProto, key: str) -> str:
    return next(p.value for p in proto.metadata_props if p.key == key)


def initializer(proto: onnx.ModelProto, name: str = "model.head.bias") -> TensorProto:
    return next(t for t in proto.graph.initializer if t.name == name)


def dims(proto: onnx.ModelProto, name: str):
    value = next(v for v in (*proto.graph.input, *proto.graph.output) if v.name == name)
    return value.type.tensor_type.shape.dim


def one_line(exc: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.fixture
def no_session(monkeypatch):
    """Fail the test if an InferenceSession is created: the file must be refused before one."""
    def refuse(*args, **kwargs):
        raise AssertionError("an InferenceSession was created for a file that must be refused first")

    monkeypatch.setattr(ort, "InferenceSession", refuse)


# -- class 1: external data never read ----------------------------------------------------------

def make_external(tensor: TensorProto, location: str) -> None:
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


@pytest.mark.parametrize("where", ["parent", "beside", "absolute"])
def test_initializer_with_external_data_is_refused_before_a_session(tmp_path, no_session, where):
    models = tmp_path / "models"
    models.mkdir()
    secret = {"parent": tmp_path, "beside": models, "absolute": tmp_path}[where] / "secret.bin"
    secret.write_bytes(SECRET)
    location = {"parent": "../secret.bin", "beside": "secret.bin", "absolute": str(secret)}[where]
    proto = bishop_proto()
    make_external(initializer(proto), location)
    path = write(proto, models / "m.onnx")
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(path)
    one_line(exc, "m.onnx", "model.head.bias", "keeps its data in another file", "secret.bin",
             "self-contained")
    with pytest.raises(IKMDNError, match="keeps its data in another file"):
        OnnxModel(path.read_bytes())


def test_constant_attribute_with_external_data_is_refused(tmp_path, no_session):
    proto = bishop_proto()
    node = next(n for n in proto.graph.node if n.op_type == "Constant")
    tensor = node.attribute[0].t
    make_external(tensor, "secret.bin")
    (tmp_path / "secret.bin").write_bytes(SECRET)
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(proto, tmp_path / "m.onnx"))
    one_line(exc, "attribute 'value'", "keeps its data in another file")


def test_subgraph_and_function_tensors_with_external_data_are_refused(tmp_path, no_session):
    """Tensors inside subgraphs (If, Loop, Scan bodies) and model-local functions are walked too."""
    hidden = helper.make_tensor("hidden", TensorProto.FLOAT, [10], np.zeros(10, np.float32))
    make_external(hidden, "secret.bin")
    body = helper.make_graph([], "then_body", [], [], initializer=[hidden])
    proto = bishop_proto()
    proto.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=body,
                                             else_branch=body))
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(proto, tmp_path / "sub.onnx"))
    one_line(exc, "subgraph 'then_body'", "keeps its data in another file")

    constant = helper.make_node("Constant", [], ["c"], value=hidden)
    function = helper.make_function("custom", "f", [], ["c"], [constant],
                                    [helper.make_opsetid("", 17)])
    proto = bishop_proto()
    proto.functions.append(function)
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(proto, tmp_path / "fn.onnx"))
    one_line(exc, "function 'f'", "keeps its data in another file")


# -- class 1: tensors that disagree with their dims and type -------------------------------------

def _truncated(t):
    t.raw_data = t.raw_data[:-4]


def _padded(t):
    t.raw_data = t.raw_data + b"\0" * 4


def _huge_dims(t):
    t.dims[:] = [50_000_000]   # 200 MB declared, 40 bytes held


def _negative_dims(t):
    t.dims[:] = [-10]


def _raw_and_typed(t):
    t.float_data.extend([1.0])


def _typed_short(t):
    t.ClearField("raw_data")
    t.float_data.extend([0.0] * 9)


def _typed_wrong_field(t):
    t.ClearField("raw_data")
    t.int64_data.extend([0] * 10)


def _unknown_type(t):
    t.data_type = 99


def _no_data(t):
    t.ClearField("raw_data")


@pytest.mark.parametrize("edit, fragment", [
    (_truncated, "(40 bytes) but holds 36"),
    (_padded, "(40 bytes) but holds 44"),
    (_huge_dims, "declares dims [50000000] of float32 (200,000,000 bytes) but holds 40"),
    (_negative_dims, "negative dims"),
    (_raw_and_typed, "both raw data and typed values"),
    (_typed_short, "(10 values) but holds 9"),
    (_typed_wrong_field, "holds its values in int64_data, not float_data"),
    (_unknown_type, "data type 99"),
    (_no_data, "(10 values) but holds 0"),
], ids=["truncated", "padded", "huge-dims", "negative-dims", "raw-and-typed", "typed-short",
        "typed-wrong-field", "unknown-type", "no-data"])
def test_tensor_disagreeing_with_its_dims_is_refused(tmp_path, no_session, edit, fragment):
    proto = bishop_proto()
    edit(initializer(proto))
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(proto, tmp_path / "m.onnx"))
    one_line(exc, "initializer 'model.head.bias'", fragment)


def test_constant_attribute_disagreeing_with_its_dims_is_refused(tmp_path, no_session):
    proto = bishop_proto()
    node = next(n for n in proto.graph.node if n.op_type == "Constant" and n.attribute[0].t.dims)
    node.attribute[0].t.dims[:] = [1 << 40]
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(proto, tmp_path / "m.onnx"))
    one_line(exc, f"attribute 'value' of Constant node {node.name!r}", "but holds 8")


# -- class 1: file and metadata sizes ------------------------------------------------------------

def test_model_file_size_is_capped(tmp_path, monkeypatch, no_session):
    monkeypatch.setattr(runtime, "MAX_MODEL_BYTES", 100_000)  # bishop.onnx is 146 kB
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(BISHOP)
    one_line(exc, "bishop.onnx is larger than")
    with pytest.raises(IKMDNError, match="is larger than"):
        OnnxModel(BISHOP.read_bytes())


def test_default_size_limits_are_sane():
    assert runtime.MAX_MODEL_BYTES == 512 << 20
    assert runtime.MAX_COMPONENTS == 4096
    from ikmdn.untrusted import MAX_JSON_BYTES, MAX_JSON_DEPTH
    assert (MAX_JSON_BYTES, MAX_JSON_DEPTH) == (1 << 20, 32)


def _arm_spec(**changes) -> str:
    spec = {**get_arm("bishop").spec(), **changes}
    return json.dumps({k: v for k, v in spec.items() if v is not ...})


def _arm_text(text_from: str, text_to: str) -> str:
    return json.dumps(get_arm("bishop").spec()).replace(text_from, text_to)


METADATA_CASES = {
    "oversize-json": ("ikmdn.metrics", json.dumps({"pad": "x" * (1 << 20)}),
                      ["ikmdn.metrics", "at most 1,048,576"]),
    "deep-json": ("ikmdn.train", "[" * 40 + "]" * 40, ["ikmdn.train", "nested deeper than 32"]),
    "very-deep-json": ("ikmdn.train", "[" * 100_000 + "]" * 100_000,
                       ["ikmdn.train", "nested deeper than 32"]),
    "huge-integer": ("ikmdn.train", '{"components": ' + "9" * 5000 + "}", ["ikmdn.train", "not valid JSON"]),
    "train-not-object": ("ikmdn.train", "[]", ["ikmdn.train", "must be a JSON object"]),
    "metrics-not-object": ("ikmdn.metrics", '"fine"', ["ikmdn.metrics", "must be a JSON object"]),
    "arm-not-object": ("ikmdn.arm", "[1, 2]", ["ikmdn.arm", "must be a JSON object"]),
    "arm-nan-length": ("ikmdn.arm", _arm_text("[0.8, 0.2]", "[NaN, 0.2]"), ["ikmdn.arm", "link_lengths"]),
    "arm-inf-length": ("ikmdn.arm", _arm_text("[0.8, 0.2]", "[1e999, 0.2]"), ["ikmdn.arm", "link_lengths"]),
    "arm-inf-limit": ("ikmdn.arm", _arm_text("[0.3, 1.2]", "[0.3, Infinity]"),
                      ["ikmdn.arm", "joint_limits", "finite"]),
    "arm-nan-offset": ("ikmdn.arm", _arm_spec(joint_offsets=[0.0, math.nan]),
                       ["ikmdn.arm", "joint_offsets"]),
    "arm-string-length": ("ikmdn.arm", _arm_spec(link_lengths=["0.8", 0.2]), ["ikmdn.arm", "link_lengths"]),
    "arm-bool-length": ("ikmdn.arm", _arm_spec(link_lengths=[True, 0.2]), ["ikmdn.arm", "link_lengths"]),
    "arm-missing-lengths": ("ikmdn.arm", _arm_spec(link_lengths=...), ["ikmdn.arm", "link_lengths"]),
    "arm-missing-limits": ("ikmdn.arm", _arm_spec(joint_limits=...), ["ikmdn.arm", "joint_limits"]),
    "arm-string-dof": ("ikmdn.arm", _arm_spec(dof="2"), ["ikmdn.arm", "dof must be a positive integer"]),
    "arm-ragged-limits": ("ikmdn.arm", _arm_spec(joint_limits=[[0.3, 1.2], [1.6]]),
                          ["ikmdn.arm", "joint_limits"]),
    "arm-orientation": ("ikmdn.arm", _arm_spec(orientation="yes"), ["ikmdn.arm", "orientation"]),
    "arm-kind-list": ("ikmdn.arm", _arm_spec(kind=["planar"]), ["ikmdn.arm", "unknown arm kind"]),
    "arm-name-number": ("ikmdn.arm", _arm_spec(name=5), ["ikmdn.arm", "name must be a string"]),
    "format-float": ("ikmdn.format", "1e3", ["ikmdn.format", "not an integer"]),
}


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_bad_metadata_is_a_one_line_error_naming_the_key(tmp_path, no_session, case):
    key, value, fragments = METADATA_CASES[case]
    path = write(set_meta(bishop_proto(), key, value), tmp_path / "m.onnx")
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(path)
    message = one_line(exc, "m.onnx", *fragments)
    assert len(message) < 400, message  # a bad value is echoed as a short prefix at most


def test_duplicate_metadata_key_is_refused(tmp_path, no_session):
    proto = bishop_proto()
    proto.metadata_props.add(key="ikmdn.arm", value=_arm_spec(link_lengths=[8.0, 2.0]))
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(proto, tmp_path / "m.onnx"))
    one_line(exc, "ikmdn.arm appears more than once")


SERIAL_CASES = {
    "nan-origin": (lambda s: s["joints"][2]["origin"][0].__setitem__(3, math.nan), "joints[2].origin"),
    "short-axis": (lambda s: s["joints"][0].__setitem__("axis", [0, 1]), "joints[0].axis"),
    "missing-type": (lambda s: s["joints"][1].pop("type"), "joints[1] lacks 'type'"),
    "joint-not-object": (lambda s: s["joints"].__setitem__(0, 7), "joints[0] must be an object"),
    "joints-not-list": (lambda s: s.__setitem__("joints", "six"), "joints must be a list"),
    "tip-3x3": (lambda s: s.__setitem__("tip", np.eye(3).tolist()), "tip must be finite numbers"),
    "inf-tool": (lambda s: s["tool"][1].__setitem__(3, math.inf), "tool must be finite numbers"),
    "rotation-weight-string": (lambda s: s.__setitem__("rotation_weight", "0.1"), "rotation_weight"),
    "rotation-weight-nan": (lambda s: s.__setitem__("rotation_weight", math.nan), "rotation_weight"),
    "joint-names-numbers": (lambda s: s.__setitem__("joint_names", [1, 2, 3, 4, 5, 6]), "joint_names"),
    "base-frame-object": (lambda s: s.__setitem__("base_frame", {"a": 1}), "base_frame"),
    "locked-inf": (lambda s: s.__setitem__("locked", {"wrist": math.inf}), "locked['wrist']"),
    "target-list": (lambda s: s.__setitem__("target", ["pose"]), "target must be a string"),
}


@pytest.mark.parametrize("case", sorted(SERIAL_CASES))
def test_serial_arm_spec_fields_are_checked(case):
    spec = json.loads(json.dumps(get_arm("ur5").spec()))
    edit, fragment = SERIAL_CASES[case]
    edit(spec)
    with pytest.raises(IKMDNError) as exc:
        arm_from_spec(spec)
    one_line(exc, "invalid serial arm spec", fragment)


def test_serial_arm_spec_in_model_metadata(tmp_path, no_session):
    """A pose arm's spec with a NaN joint origin, inside a real exported model's metadata."""
    proto = onnx.load_from_string((ROOT / "exported_models" / "ur5.onnx").read_bytes())
    spec = json.loads(meta(proto, "ikmdn.arm"))
    spec["joints"][1]["origin"][2][3] = math.nan
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(set_meta(proto, "ikmdn.arm", json.dumps(spec)), tmp_path / "m.onnx"))
    one_line(exc, "ikmdn.arm", "joints[1].origin", "finite")


def test_valid_specs_still_round_trip():
    for name in list_arms():
        arm = get_arm(name)
        assert arm_from_spec(json.loads(json.dumps(arm.spec()))).spec() == arm.spec()


# -- class 1: the graph's interface against the contract and the arm -----------------------------

def _elem(name, elem_type):
    def edit(proto):
        value = next(v for v in (*proto.graph.input, *proto.graph.output) if v.name == name)
        value.type.tensor_type.elem_type = elem_type
    return edit


def _rank_down(proto):
    del dims(proto, "means")[2]


def _no_shape(proto):
    next(v for v in proto.graph.output if v.name == "sigmas").type.tensor_type.ClearField("shape")


def _rename(proto, old="means", new="mu"):
    for node in proto.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for value in proto.graph.output:
        if value.name == old:
            value.name = new


def _extra_output(proto):
    extra = helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 2])
    proto.graph.node.append(helper.make_node("Identity", ["targets"], ["extra"]))
    proto.graph.output.append(extra)


def _fixed_batch(proto):
    dims(proto, "targets")[0].dim_value = 4


def _size(name, axis, size):
    def edit(proto):
        dims(proto, name)[axis].dim_value = size
    return edit


def _declare_k(*sizes):
    def edit(proto):
        for name, size in zip(("weights", "means", "sigmas"), sizes, strict=True):
            dims(proto, name)[1].dim_value = size
    return edit


# The shipped bishop.onnx is ikmdn.format 2 (float64 targets; the network's outputs, then the
# refined solutions).
INTERFACE_CASES = {
    "float32-targets": (_elem("targets", TensorProto.FLOAT), "targets must be float64, got float32"),
    "int64-weights": (_elem("weights", TensorProto.INT64), "weights must be float32, got int64"),
    "means-rank-2": (_rank_down, "means must have rank 3 (N, K, dof), got rank 2"),
    # onnx.checker refuses it first (ikmdn checks it too, should a checker let it through)
    "sigmas-no-shape": (_no_shape, ("sigmas must have rank 3 (N, K, dof), got no shape",
                                    "Field 'shape' of 'type' is required")),
    "renamed-output": (_rename, "expected input 'targets' and outputs ['weights', 'means', 'sigmas', "
                                "'joints'"),
    "extra-output": (_extra_output, "expected input 'targets' and outputs"),
    "fixed-batch": (_fixed_batch, "fixed batch size 4; the batch axis must be dynamic"),
    "target-dim": (_size("targets", 1, 3), "targets has size 3 on axis 1 but its arm 'bishop' needs 2"),
    "dof": (_size("sigmas", 2, 5), "sigmas has size 5 on axis 2 but its arm 'bishop' needs 2"),
    "k-zero": (_declare_k(0, 0, 0), "declares K = 0 mixture components; ikmdn reads 1 to 4096"),
    "k-huge": (_declare_k(50_000_000, 50_000_000, 50_000_000), "declares K = 50,000,000"),
    "k-inconsistent": (_declare_k(2, 3, 2), "the outputs declare different K (2 and 3)"),
}


@pytest.mark.parametrize("case", sorted(INTERFACE_CASES))
def test_graph_interface_breaking_the_contract_is_refused(tmp_path, no_session, case):
    edit, fragments = INTERFACE_CASES[case]
    proto = bishop_proto()
    edit(proto)
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(proto, tmp_path / "m.onnx"))
    message = one_line(exc, "m.onnx")
    fragments = (fragments,) if isinstance(fragments, str) else fragments
    assert any(f in message for f in fragments), message


def test_newer_format_is_refused_before_its_contract_is_read(tmp_path, no_session):
    """A format this runtime does not know is "upgrade ikmdn", whatever its interface."""
    proto = set_meta(bishop_proto(), "ikmdn.format", "3")
    _elem("targets", TensorProto.FLOAT)(proto)
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(proto, tmp_path / "m.onnx"))
    one_line(exc, "ikmdn.format 3", "upgrade ikmdn")


# -- class 7: components is the graph's real K -----------------------------------------------------

def _declare_k_everywhere(size):
    """Every output's K axis (axis 1) declared as size: the network's and the refined ones."""
    def edit(proto):
        for value in proto.graph.output:
            value.type.tensor_type.shape.dim[1].dim_value = size
    return edit


def test_declared_k_that_differs_from_the_real_one_is_refused(tmp_path):
    path = write(_apply(_declare_k_everywhere(3)), tmp_path / "k3.onnx")
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(path)
    one_line(exc, "declares K = 3 mixture components but returns 2")
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "but returns 2" in errors[0], result.output


def test_training_metadata_k_that_differs_from_the_real_one_is_refused(tmp_path):
    proto = bishop_proto()
    train = {**json.loads(meta(proto, "ikmdn.train")), "components": 50_000_000}
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(set_meta(proto, "ikmdn.train", json.dumps(train)), tmp_path / "m.onnx"))
    one_line(exc, "ikmdn.train declares K = 50,000,000", "returns 2")


def test_symbolic_k_is_read_off_the_graph(tmp_path):
    proto = bishop_proto()
    for name in ("weights", "means", "sigmas"):
        dims(proto, name)[1].dim_param = "K"
    path = write(proto, tmp_path / "m.onnx")
    assert OnnxModel(path).components == 2
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["components"] == 2


# -- class 1: outputs checked at predict time ---------------------------------------------------

def _apply(edit) -> onnx.ModelProto:
    proto = bishop_proto()
    edit(proto)
    return proto


def _post(output: str, make_nodes, constants: dict[str, np.ndarray] | None = None):
    """An edit: the graph's `output` becomes make_nodes(raw) applied to the original value (the
    new nodes right after the one that made it: the refinement graph of format 2 reads it too)."""
    def edit(proto):
        raw = f"{output}_raw"
        nodes = []
        for node in proto.graph.node:
            nodes.append(node)
            if output in node.output:
                node.output[:] = [raw if o == output else o for o in node.output]
                nodes.extend(make_nodes(raw, output))
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        for name, value in (constants or {}).items():
            proto.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    return edit


def _scaled(output, factor):
    return _post(output, lambda raw, out: [helper.make_node("Mul", [raw, "factor"], [out])],
                 {"factor": np.array(factor, np.float32)})


def _nan_means_where_x_is_zero(raw, out):
    """means * (x / x)[:, :, None]: NaN in the rows whose first target coordinate is 0."""
    return [helper.make_node("Gather", ["targets", "col0"], ["x0"], axis=1),
            helper.make_node("Div", ["x0", "x0"], ["ratio64"]),
            helper.make_node("Cast", ["ratio64"], ["ratio"], to=TensorProto.FLOAT),  # f64 targets
            helper.make_node("Unsqueeze", ["ratio", "axis2"], ["ratio3"]),
            helper.make_node("Mul", [raw, "ratio3"], [out])]


OUTPUT_CASES = {
    "nan-means-3-of-10": (_post("means", _nan_means_where_x_is_zero,
                                {"col0": np.array([0], np.int64), "axis2": np.array([2], np.int64)}),
                          "the model returned NaN means for 3 of 10 targets (first: row 2)"),
    "inf-means": (_post("means", lambda raw, out: [helper.make_node("Add", [raw, "inf"], [out])],
                        {"inf": np.array(np.inf, np.float32)}), "infinite means for 10 of 10 targets"),
    "nan-weights": (_scaled("weights", np.nan), "NaN weights for 10 of 10 targets"),
    "negative-weights": (_scaled("weights", -1.0), "negative weights for 10 of 10 targets"),
    "unnormalised-weights": (_scaled("weights", 0.5), "weights that do not sum to 1 (within 0.001)"),
    "negative-sigmas": (_scaled("sigmas", -1.0), "sigmas that are not positive for 10 of 10"),
    "zero-sigmas": (_scaled("sigmas", 0.0), "sigmas that are not positive for 10 of 10"),
    "nan-sigmas": (_scaled("sigmas", np.nan), "NaN sigmas for 10 of 10"),
}


def _ten_targets() -> np.ndarray:
    x = np.tile([[0.6, 0.3]], (10, 1))
    x[[2, 5, 7], 0] = 0.0
    return x


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_outputs_breaking_the_contract_are_refused(tmp_path, case):
    edit, fragment = OUTPUT_CASES[case]
    model = OnnxModel(write(_apply(edit), tmp_path / "m.onnx"))
    with pytest.raises(IKMDNError) as exc:
        model.predict(_ten_targets())
    one_line(exc, "m.onnx: ", fragment)
    with pytest.raises(IKMDNError, match="the model returned"):
        IKSolver(model).solve(_ten_targets())


def test_a_graph_ignoring_the_batch_axis_is_refused_at_load(tmp_path):
    edit = _post("weights", lambda raw, out: [helper.make_node("Concat", [raw, raw], [out], axis=0)])
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(_apply(edit), tmp_path / "m.onnx"))
    one_line(exc, "returned weights float32 (4, 2) for 2 targets; expected float32 (2, 2)")


@pytest.mark.parametrize("value", [1e37, -1e37, 3e38, 1e10])
def test_targets_the_network_cannot_represent_are_refused(value):
    model = OnnxModel(BISHOP)
    with pytest.raises(IKMDNError) as exc:
        model.predict([[0.6, 0.3], [value, 0.3]])
    one_line(exc, "targets must lie within +-1e+09", "float32", "row 1 has x = ")
    with pytest.raises(IKMDNError, match="must lie within"):
        IKSolver(model).solve([[value, value]])


def test_large_representable_targets_still_work():
    mixture = OnnxModel(BISHOP).predict([[1e8, -1e8], [0.6, 0.3]])
    assert np.isfinite(mixture.means).all() and np.isfinite(mixture.weights).all()


# -- class 6: onnxruntime errors at run time ------------------------------------------------------

def _fails_unless_two_rows(rows: int):
    """weights + zeros (rows, K): runs for a batch of `rows` targets only."""
    return _post("weights", lambda raw, out: [helper.make_node("Add", [raw, "pad"], [out])],
                 {"pad": np.zeros((rows, 2), np.float32)})


def test_an_onnxruntime_failure_at_run_time_is_one_line(tmp_path):
    model = OnnxModel(write(_apply(_fails_unless_two_rows(2)), tmp_path / "m.onnx"))
    assert model.predict(np.zeros((2, 2))).weights.shape == (2, 2)
    with pytest.raises(JobFailedError) as exc:
        model.predict(np.zeros((3, 2)))
    one_line(exc, "m.onnx: ONNX Runtime failed on 3 targets: ")


def test_an_onnxruntime_failure_on_the_probe_call_is_one_line(tmp_path):
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(write(_apply(_fails_unless_two_rows(3)), tmp_path / "m.onnx"))
    one_line(exc, "m.onnx: ONNX Runtime failed on a probe call: ")


def test_onnxruntime_floor_is_the_tested_version():
    """pyproject's onnxruntime floor is a version this suite runs with (not 1.17, which read
    external data from any path), and the installed one satisfies it."""
    text = (ROOT / "pyproject.toml").read_text()
    floor = next(line for line in text.splitlines() if line.strip().startswith('"onnxruntime>='))
    wanted = tuple(int(p) for p in floor.split(">=")[1].split('"')[0].split(".")[:2])
    installed = tuple(int(p) for p in ort.__version__.split(".")[:2])
    assert wanted >= (1, 32) and installed >= wanted, (floor, ort.__version__)


# -- class 1: crafted checkpoints (model.pt, last.pt) ---------------------------------------------


def payload_of(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_payload(payload, path: Path) -> Path:
    torch.save(payload, path)
    return path


def _drop(key):
    return lambda p: p.pop(key)


def _put(key, value):
    return lambda p: p.__setitem__(key, value)


def _json_edit(key, **changes):
    def edit(p):
        d = json.loads(p[key])
        d.update(changes)
        p[key] = json.dumps(d)
    return edit


def _state(edit_state):
    return lambda p: edit_state(p["state_dict"])


def _rename_key(state):
    state["body.0.weights"] = state.pop("body.0.weight")


def _arm_nan(p):
    arm = json.loads(p["arm"])
    arm["link_lengths"][0] = math.nan
    p["arm"] = json.dumps(arm)


CHECKPOINT_CASES = {
    "missing-state-dict": (_drop("state_dict"), "is not an ikmdn checkpoint (it lacks state_dict)"),
    "missing-model-config": (_drop("model_config"), "it lacks model_config"),
    "missing-arm": (_drop("arm"), "it lacks arm"),
    "missing-format": (_drop("format"), "it lacks format"),
    "newer-format": (_put("format", 2), "has checkpoint format 2; this ikmdn reads format 1 or older: "
                                        "upgrade ikmdn"),
    "string-format": (_put("format", "1"), "checkpoint format must be an integer"),
    "format-zero": (_put("format", 0), "checkpoint format must be 1 to 1, got 0"),
    "model-config-not-json": (_put("model_config", "{not json"), "model_config is not valid JSON"),
    "model-config-not-string": (_put("model_config", 7), "model_config must be a JSON string"),
    "train-config-not-json": (_put("train_config", "[[["), "train_config is not valid JSON"),
    "train-config-bad-value": (_json_edit("train_config", samples="many"), "train_config"),
    "train-config-unknown-key": (_json_edit("train_config", rockets=3), "unknown training config keys"),
    "metrics-not-object": (_put("metrics", "[1]"), "metrics must be a JSON object"),
    "arm-nan-length": (_arm_nan, "arm", "link_lengths"),
    "arm-deep-json": (_put("arm", "[" * 50 + "]" * 50), "arm is JSON nested deeper than 32"),
    "shape-mismatch": (_state(lambda s: s.__setitem__("body.0.weight", torch.zeros(3, 3))),
                       "state_dict tensor body.0.weight is torch.float32 (3, 3) but its model_config "
                       "needs torch.float32 (32, 2)"),
    "dtype-mismatch": (_state(lambda s: s.__setitem__("head.bias", s["head.bias"].double())),
                       "tensor head.bias is torch.float64"),
    "renamed-key": (_state(_rename_key), "does not match its model_config: it lacks body.0.weight; "
                                         "it has unexpected body.0.weights"),
    "extra-key": (_state(lambda s: s.__setitem__("evil", torch.zeros(1))), "has unexpected evil"),
    "not-a-tensor": (_state(lambda s: s.__setitem__("head.bias", [0.0] * 9)),
                     "entry head.bias must be a tensor"),
    "nan-weight": (_state(lambda s: s["head.weight"].__setitem__((0, 0), math.nan)),
                   "tensor head.weight holds NaN or infinite values"),
    "state-dict-not-dict": (_put("state_dict", [1, 2]), "state_dict must be a dict of tensors"),
    "huge-network": (_json_edit("model_config", hidden=[1 << 20, 1 << 20]),
                     "tensor body.0.weight is torch.float32 (32, 2) but its model_config needs "
                     "torch.float32 (1048576, 2)"),
    "absurd-width": (_json_edit("model_config", hidden=[10 ** 12]), "model_config hidden must be"),
    "absurd-components": (_json_edit("model_config", components=50_000_000),
                          "model_config components must be an integer from 1 to 4096"),
    "wrong-input-dim": (_json_edit("model_config", input_dim=3, angular_inputs=[False] * 3),
                        "model_config maps 3 inputs to 2 outputs but its arm 'bishop' has target_dim 2"),
    "model-config-bad-type": (_json_edit("model_config", activation=["silu"]), "model_config"),
}


@needs_torch
@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_crafted_model_pt_is_a_one_line_error(bishop, tmp_path, case):
    from ikmdn.checkpoint import load_checkpoint

    edit, *fragments = CHECKPOINT_CASES[case]
    payload = payload_of(bishop.run_dir / "model.pt")
    edit(payload)
    path = save_payload(payload, tmp_path / "model.pt")
    with pytest.raises(IKMDNError) as exc:
        load_checkpoint(path)
    one_line(exc, "model.pt", *fragments)


@needs_torch
def test_checkpoint_that_is_not_a_dict(tmp_path):
    from ikmdn.checkpoint import load_checkpoint

    with pytest.raises(IKMDNError) as exc:
        load_checkpoint(save_payload([1, 2, 3], tmp_path / "model.pt"))
    one_line(exc, "is not an ikmdn checkpoint (it holds a list, not a dict)")


@needs_torch
def test_compressed_checkpoint_is_refused_before_torch_reads_it(bishop, tmp_path, monkeypatch):
    """A deflated member can expand ~1000x (a zip bomb); torch.save never compresses."""
    from ikmdn import checkpoint

    source = zipfile.ZipFile(bishop.run_dir / "model.pt")
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))

    def never(*args, **kwargs):
        raise AssertionError("torch.load ran on a compressed archive")

    monkeypatch.setattr(checkpoint.torch, "load", never)
    with pytest.raises(IKMDNError) as exc:
        checkpoint.load_checkpoint(path)
    one_line(exc, "compressed members")


@needs_torch
def test_crafted_checkpoint_through_the_cli_is_one_line(bishop, tmp_path):
    payload = payload_of(bishop.run_dir / "model.pt")
    payload["state_dict"]["head.weight"] = torch.zeros(1, 1)
    path = save_payload(payload, tmp_path / "model.pt")
    for args in (["export", str(path), "-o", str(tmp_path / "m.onnx")],
                 ["solve", "--model", str(path), "0.6", "0.3"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "head.weight" in errors[0], result.output
    assert not (tmp_path / "m.onnx").exists()


@needs_torch
def test_last_pt_loads_as_a_checkpoint(bishop):
    """last.pt has no metrics; load_checkpoint reads it (e.g. `ikmdn export run/last.pt`)."""
    from ikmdn.checkpoint import load_checkpoint

    assert load_checkpoint(bishop.run_dir / "last.pt").metrics == {}


def _optimizer_moment(p):
    state = p["optimizer"]["state"]
    first = next(iter(state))
    state[first]["exp_avg"] = torch.zeros(7)


def _history_record(p):
    p["history"] = json.dumps([{"epoch": 1, "bogus": 2}])


RESUME_CASES = {
    "missing-optimizer": (_drop("optimizer"), "it lacks optimizer"),
    "missing-generator": (_drop("generator"), "it lacks generator"),
    "newer-format": (_put("format", 9), "upgrade ikmdn"),
    "shape-mismatch": (_state(lambda s: s.__setitem__("head.bias", torch.zeros(4))),
                       "state_dict tensor head.bias"),
    "best-state-mismatch": (lambda p: p.__setitem__("best_state", {"head.bias": torch.zeros(1)}),
                            "best_state does not match"),
    "optimizer-not-dict": (_put("optimizer", [1]), "optimizer must be a dict"),
    "optimizer-moment-shape": (_optimizer_moment, "optimizer state exp_avg has shape (7,)"),
    "generator-not-tensor": (_put("generator", "seed"), "generator must be a 1-D uint8 tensor"),
    "generator-wrong-size": (lambda p: p.__setitem__("generator", torch.zeros(3, dtype=torch.uint8)),
                             "training state does not fit this run"),
    "history-not-json": (_put("history", "{"), "history is not valid JSON"),
    "history-bad-record": (_history_record, "training state does not fit this run"),
    "train-config-not-json": (_put("train_config", "nope"), "train_config is not valid JSON"),
}


@needs_torch
@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_crafted_last_pt_is_a_one_line_error(bishop, tmp_path, case):
    from ikmdn.train import resume_run

    edit, fragment = RESUME_CASES[case]
    run = tmp_path / "run"
    shutil.copytree(bishop.run_dir, run)
    payload = payload_of(run / "last.pt")
    edit(payload)
    save_payload(payload, run / "last.pt")
    with pytest.raises(IKMDNError) as exc:
        resume_run(run)
    one_line(exc, "cannot resume", "last.pt", fragment)


# -- class 7: URDF limits ------------------------------------------------------------------------

URDF = """<robot name="r">
  <link name="base"/><link name="tip"/>
  <joint name="j1" type="revolute"><parent link="base"/><child link="tip"/>
    <origin xyz="0 0 0.3"/><axis xyz="0 0 1"/><limit lower="{lower}" upper="{upper}"/></joint>
</robot>"""


@pytest.mark.parametrize("lower, upper", [("-1", "inf"), ("-inf", "1"), ("nan", "1"), ("-1", "NaN"),
                                          ("-INF", "INF")])
def test_urdf_limits_must_be_finite(lower, upper):
    with pytest.raises(IKMDNError) as exc:
        parse_urdf(URDF.format(lower=lower, upper=upper), "tip")
    one_line(exc, "URDF joint 'j1'", "must be finite numbers", 'type="continuous"')


def test_urdf_finite_limits_still_load():
    arm = parse_urdf(URDF.format(lower="-1", upper="1"), "tip")
    assert arm.joint_limits.tolist() == [[-1.0, 1.0]]
