"""An exported ikmdn model run by ONNX Runtime: numpy in, mixture out. Never imports torch.

A model file is untrusted input. Before any InferenceSession exists, the file's bytes are parsed
with `onnx` (external data never loaded) and refused unless they keep DESIGN.md's contract:

- at most MAX_MODEL_BYTES; no tensor anywhere (initializers, Constant attributes, subgraphs,
  functions) whose data lives in another file, and none whose data disagrees with its dims and
  type; onnx.checker passes;
- the ikmdn metadata present once each, its JSON bounded (`ikmdn.untrusted`: size and nesting)
  and the arm spec valid (finite numbers, right types: `arm_from_spec`);
- the graph's input and outputs those of its ikmdn.format, with their element types and ranks,
  a dynamic batch axis, dof and target_dim those of the arm, a declared K from 1 to MAX_COMPONENTS;
  format 2 adds the metadata ikmdn.refine (the LM settings: RefineSettings fields and "phases").

The session is then made from the checked bytes (never from the path, so nothing can swap the
file or resolve a path beside it), and one probe call reads the real K, which must agree with
every K the file declares. Format 2 (DESIGN.md "ONNX format 2": float64 targets, the network's
outputs, then the refined solutions) gets two sessions: `predict` runs the network-only subgraph
(the nodes its three outputs depend on), so it costs what format 1 costs, and `refined` runs the
whole graph, network and refinement (that session is made, and probed, on its first use).
At predict time targets beyond MAX_TARGET are refused (float32 networks return NaN near 1e36),
and every output is checked (finite, weights >= 0 summing to 1, sigmas > 0; format 2's refined
outputs their shapes and types) before it leaves this module; an ONNX Runtime failure is a
one-line error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from ikmdn.arms import Arm, arm_from_spec
from ikmdn.arms.base import as_batch
from ikmdn.errors import IKMDNError, JobFailedError
from ikmdn.mixture import Mixture
from ikmdn.refine import RefineSettings
from ikmdn.untrusted import MAX_COMPONENTS, parse_json, short

ONNX_FORMAT = 2  # the newest ikmdn.format this runtime reads
INPUT_NAME = "targets"
OUTPUT_NAMES = ("weights", "means", "sigmas")
REFINED_OUTPUT_NAMES = ("joints", "positions", "errors", "rotation_errors", "within_limits",
                        "distinct")
METADATA_KEYS = ("ikmdn.format", "ikmdn.version", "ikmdn.arm", "ikmdn.train", "ikmdn.metrics")
REFINE_KEY = "ikmdn.refine"   # format 2: the LM settings (JSON)
MAX_PHASES = 64
_NETWORK = {"weights": (TensorProto.FLOAT, ("N", "K")),
            "means": (TensorProto.FLOAT, ("N", "K", "dof")),
            "sigmas": (TensorProto.FLOAT, ("N", "K", "dof"))}
# Per ikmdn.format: each input and output in order, with its element type and axes ("N" the
# dynamic batch axis, "K" the mixture components, "dof" and "target_dim" those of the arm).
CONTRACTS: dict[int, dict[str, tuple[int, tuple[str, ...]]]] = {
    1: {"targets": (TensorProto.FLOAT, ("N", "target_dim")), **_NETWORK},
    2: {"targets": (TensorProto.DOUBLE, ("N", "target_dim")), **_NETWORK,
        "joints": (TensorProto.DOUBLE, ("N", "K", "dof")),
        "positions": (TensorProto.DOUBLE, ("N", "K", "target_dim")),
        "errors": (TensorProto.DOUBLE, ("N", "K")),
        "rotation_errors": (TensorProto.DOUBLE, ("N", "K")),
        "within_limits": (TensorProto.BOOL, ("N", "K")),
        "distinct": (TensorProto.BOOL, ("N", "K"))},
}
CONTRACT_INPUTS = {1: (INPUT_NAME,), 2: (INPUT_NAME,)}
_NUMPY = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.BOOL: np.bool_}

MAX_MODEL_BYTES = 512 << 20   # the shipped models are 0.15-1.3 MB
MAX_TARGET = 1e9              # |target coordinate|, the arm's length unit (float32 NaN from ~1e36)
WEIGHT_SUM_ATOL = 1e-3
PROBE_ROWS = 2                # > 1, so a graph that ignores the batch axis shows

# Bits per element of each ONNX tensor type (STRING has none: its values are counted).
_BITS = {TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16,
         TensorProto.INT16: 16, TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.BOOL: 8,
         TensorProto.FLOAT16: 16, TensorProto.DOUBLE: 64, TensorProto.UINT32: 32,
         TensorProto.UINT64: 64, TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128,
         TensorProto.BFLOAT16: 16, 17: 8, 18: 8, 19: 8, 20: 8,  # the float8 types
         21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2}  # uint4, int4, float4e2m1, float8e8m0, (u)int2
# The repeated field a tensor type's values use when they are not in raw_data, and values per element.
_FIELDS = {TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
           TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
           TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
           TensorProto.UINT64: ("uint64_data", 1), TensorProto.STRING: ("string_data", 1)}
_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


SMALL_BATCH = 16   # rows per call up to which predict runs on one intra-op thread


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """Options for a small MLP: sequential execution, full graph optimisation, quiet logs.

    threads: intra-op threads (None lets ONNX Runtime choose, one per physical core).
    spinning: let idle intra-op threads spin-wait for work (onnxruntime's own default). Off by
    default: on a shared machine spinning threads steal the cores other work needs
    (scripts/bench_threads.py).
    """
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise IKMDNError(f"threads must be a positive integer, got {short(threads)}")
        options.intra_op_num_threads = threads
    return options


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def _type_name(elem_type: int) -> str:
    names = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", TensorProto.INT64: "int64",
             TensorProto.INT32: "int32", TensorProto.BOOL: "bool", TensorProto.FLOAT16: "float16"}
    if elem_type in names:
        return names[elem_type]
    try:
        return TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type {elem_type}"


# -- the file, before any session ------------------------------------------------------------------
def read_model_bytes(path: Path) -> bytes:
    """The bytes of a model file, at most MAX_MODEL_BYTES."""
    if not path.is_file():
        raise IKMDNError(f"model file {path} does not exist")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:
        raise IKMDNError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_MODEL_BYTES:
        raise IKMDNError(f"{path} is larger than {MAX_MODEL_BYTES >> 20} MB, the most an ikmdn model "
                         "file may be")
    return data


def _tensors(model: onnx.ModelProto):
    """(where, TensorProto) for every tensor the model holds: graph initializers, sparse
    initializers, node attributes, in the main graph, every subgraph and every function."""
    graphs, node_lists = [("graph", model.graph)], [(f"function {f.name!r}", f.node) for f in model.functions]
    while graphs or node_lists:
        if graphs:
            label, graph = graphs.pop()
            for t in graph.initializer:
                yield f"{label} initializer {t.name!r}", t
            for s in graph.sparse_initializer:
                yield f"{label} sparse initializer {s.values.name!r}", s.values
                yield f"{label} sparse initializer {s.values.name!r} (indices)", s.indices
            node_lists.append((label, graph.node))
            continue
        label, nodes = node_lists.pop()
        for node in nodes:
            for a in node.attribute:
                where = f"{label}: attribute {a.name!r} of {node.op_type} node {node.name!r}"
                if a.HasField("t"):
                    yield where, a.t
                for t in a.tensors:
                    yield where, t
                for s in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
                    yield where, s.values
                    yield f"{where} (indices)", s.indices
                if a.HasField("g"):
                    graphs.append((f"subgraph {a.g.name!r}", a.g))
                graphs.extend((f"subgraph {g.name!r}", g) for g in a.graphs)


def check_tensor(t: TensorProto, where: str) -> None:
    """A tensor must hold its own data, exactly as much as its dims and type say."""
    if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
        location = next((e.value for e in t.external_data if e.key == "location"), "?")
        location = location if len(location) <= 60 else "..." + location[-57:]  # the file name shows
        raise IKMDNError(f"{where} keeps its data in another file ({location!r}); an ikmdn model "
                         "is one self-contained file and never reads others")
    if t.HasField("segment"):
        raise IKMDNError(f"{where} is a segment of a tensor; ikmdn models hold whole tensors")
    if any(d < 0 for d in t.dims):
        raise IKMDNError(f"{where} has negative dims {list(t.dims)[:8]}")
    n = math.prod(t.dims)
    typed = [name for name in _DATA_FIELDS if len(getattr(t, name))]
    if t.data_type == TensorProto.STRING:
        held, expected, unit = len(t.string_data), n, "strings"
    elif t.data_type not in _BITS:
        raise IKMDNError(f"{where} has data type {t.data_type}, which ikmdn does not read")
    elif t.HasField("raw_data"):
        if typed:
            raise IKMDNError(f"{where} holds both raw data and typed values")
        held, expected, unit = len(t.raw_data), -(-n * _BITS[t.data_type] // 8), "bytes"
    else:
        field, per = _FIELDS.get(t.data_type, ("int32_data", 1))
        if typed and typed != [field]:
            raise IKMDNError(f"{where} holds its values in {', '.join(typed)}, not {field}")
        bits = _BITS[t.data_type]
        held = len(getattr(t, field))
        expected = n * per if bits >= 8 else -(-n * bits // 8)
        unit = "values"
    if held != expected:
        raise IKMDNError(f"{where} declares dims {list(t.dims)[:8]} of {_type_name(t.data_type)} "
                         f"({expected:,} {unit}) but holds {held:,}")


def parse_model(data: bytes, source: str) -> onnx.ModelProto:
    """The ModelProto of data after checking every tensor (check_tensor) and onnx.checker."""
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise IKMDNError(f"{source} is not a readable ONNX model: {_first_line(exc)}") from None
    for where, tensor in _tensors(model):
        check_tensor(tensor, f"{source}: {where}")
    seen: set[str] = set()
    for prop in model.metadata_props:  # before the checker, whose message would not name the key
        if prop.key in (*METADATA_KEYS, REFINE_KEY) and prop.key in seen:
            raise IKMDNError(f"{source}: metadata {prop.key} appears more than once")
        seen.add(prop.key)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and others
        raise IKMDNError(f"{source} is not a readable ONNX model: {_first_line(exc)}") from None
    return model


def read_metadata(model: onnx.ModelProto, source: str) -> dict[str, str]:
    """The ikmdn metadata of a model (parse_model refused duplicated keys): each key of
    METADATA_KEYS must be present."""
    meta = {prop.key: prop.value for prop in model.metadata_props}
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        raise IKMDNError(f"{source} is an ONNX model but not an ikmdn model "
                         f"(metadata lacks {', '.join(missing)})")
    return meta


def read_format(meta: dict[str, str], source: str) -> int:
    text = meta["ikmdn.format"]
    if len(text) > 10 or not text.strip().lstrip("+-").isdigit():
        raise IKMDNError(f"{source}: ikmdn.format {short(text)} is not an integer")
    fmt = int(text)
    if fmt > ONNX_FORMAT:
        raise IKMDNError(f"{source} has ikmdn.format {fmt}; this ikmdn reads format "
                         f"{ONNX_FORMAT} or older: upgrade ikmdn")
    if fmt < 1:
        raise IKMDNError(f"{source}: ikmdn.format must be 1 to {ONNX_FORMAT}, got {fmt}")
    return fmt


def check_interface(graph: onnx.GraphProto, fmt: int, arm: Arm, source: str) -> int | None:
    """The graph's inputs and outputs against format fmt's contract and the arm; returns the K
    the graph declares (None when symbolic)."""
    contract = CONTRACTS[fmt]
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    wanted_in = list(CONTRACT_INPUTS[fmt])
    wanted_out = [name for name in contract if name not in wanted_in]
    got_in, got_out = [v.name for v in inputs], [v.name for v in graph.output]
    if got_in != wanted_in or got_out != wanted_out:
        raise IKMDNError(f"{source}: expected input {wanted_in[0]!r} and outputs {wanted_out}, got "
                         f"{short(got_in)} and {short(got_out)}")
    sizes = {"target_dim": arm.target_dim, "dof": arm.dof}
    declared: int | None = None
    for value in (*inputs, *graph.output):
        elem, axes = contract[value.name]
        if not value.type.HasField("tensor_type"):
            raise IKMDNError(f"{source}: {value.name} must be a tensor")
        tensor = value.type.tensor_type
        if tensor.elem_type != elem:
            raise IKMDNError(f"{source}: {value.name} must be {_type_name(elem)}, got "
                             f"{_type_name(tensor.elem_type)}")
        dims = list(tensor.shape.dim) if tensor.HasField("shape") else None
        if dims is None or len(dims) != len(axes):
            rank = "no shape" if dims is None else f"rank {len(dims)}"
            raise IKMDNError(f"{source}: {value.name} must have rank {len(axes)} "
                             f"({', '.join(axes)}), got {rank}")
        for axis, (label, dim) in enumerate(zip(axes, dims, strict=True)):
            if not dim.HasField("dim_value"):
                continue
            size = dim.dim_value
            if label == "N":
                raise IKMDNError(f"{source}: {value.name} has a fixed batch size {size}; the batch "
                                 "axis must be dynamic")
            if label == "K":
                if not 1 <= size <= MAX_COMPONENTS:
                    raise IKMDNError(f"{source}: {value.name} declares K = {size:,} mixture components; "
                                     f"ikmdn reads 1 to {MAX_COMPONENTS}")
                if declared is not None and size != declared:
                    raise IKMDNError(f"{source}: the outputs declare different K ({declared} and {size})")
                declared = size
            elif size != sizes[label]:
                raise IKMDNError(f"{source}: {value.name} has size {size} on axis {axis} but its arm "
                                 f"{arm.name!r} needs {sizes[label]}")
    return declared


def read_refine_settings(meta: dict[str, str], source: str) -> tuple[RefineSettings, tuple[int, ...]]:
    """(RefineSettings, phases) from a format-2 model's metadata ikmdn.refine: a JSON object with
    every RefineSettings field (numbers) and "phases" (positive integers summing to max_iter)."""
    what = f"{source}: metadata {REFINE_KEY}"
    if REFINE_KEY not in meta:
        raise IKMDNError(f"{source} is ikmdn.format 2 but its metadata lacks {REFINE_KEY}")
    value = parse_json(meta[REFINE_KEY], what, dict)
    fields = RefineSettings.__dataclass_fields__
    wanted = [*fields, "phases"]
    missing, unknown = [k for k in wanted if k not in value], [k for k in value if k not in wanted]
    if missing or unknown:
        raise IKMDNError(f"{what} must hold {', '.join(wanted)}; missing {short(missing)}, "
                         f"unknown {short(unknown)}")
    settings = {}
    for key in fields:
        v = value[key]
        integer = key == "max_iter"
        if (isinstance(v, bool) or not isinstance(v, int if integer else (int, float))
                or not math.isfinite(v) or v < 0):
            kind = "a non-negative integer" if integer else "a finite non-negative number"
            raise IKMDNError(f"{what}: {key} must be {kind}, got {short(v)}")
        settings[key] = v if integer else float(v)
    phases = value["phases"]
    if (not isinstance(phases, list) or len(phases) > MAX_PHASES
            or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in phases)
            or sum(phases) != settings["max_iter"]):
        raise IKMDNError(f"{what}: phases must be at most {MAX_PHASES} positive integers summing to "
                         f"max_iter ({settings['max_iter']}), got {short(phases)}")
    return RefineSettings(**settings), tuple(phases)


def network_subgraph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The part of a format-2 model that computes weights, means and sigmas from targets: the
    nodes those outputs depend on (walking back from them, subgraph inputs included), with their
    initializers; metadata left out."""
    graph = model.graph
    needed = set(OUTPUT_NAMES)
    nodes = []

    def used(node) -> set[str]:
        names = set(node.input)
        subgraphs = [a.g for a in node.attribute if a.HasField("g")]
        subgraphs += [g for a in node.attribute for g in a.graphs]
        while subgraphs:
            sub = subgraphs.pop()
            for n in sub.node:
                names.update(n.input)
                subgraphs += [a.g for a in n.attribute if a.HasField("g")]
                subgraphs += [g for a in n.attribute for g in a.graphs]
        return names

    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed |= used(node)
    nodes.reverse()
    out = onnx.helper.make_graph(
        nodes, graph.name, list(graph.input), [v for v in graph.output if v.name in OUTPUT_NAMES],
        initializer=[t for t in graph.initializer if t.name in needed],
        sparse_initializer=[t for t in graph.sparse_initializer if t.values.name in needed],
        value_info=[v for v in graph.value_info if v.name in needed])
    sub = onnx.helper.make_model(out, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    sub.functions.extend(model.functions)
    return sub


@dataclass(frozen=True)
class Refined:
    """The outputs of a format-2 graph for N targets (DESIGN.md "ONNX format 2"), in the network's
    component order: weights (N, K), means, sigmas (N, K, dof) float32; joints (N, K, dof),
    positions (N, K, target_dim), errors (N, K), rotation_errors (N, K) float64; within_limits,
    distinct (N, K) bool."""

    weights: np.ndarray
    means: np.ndarray
    sigmas: np.ndarray
    joints: np.ndarray
    positions: np.ndarray
    errors: np.ndarray
    rotation_errors: np.ndarray
    within_limits: np.ndarray
    distinct: np.ndarray

    def __len__(self) -> int:
        return len(self.weights)


class OnnxModel:
    """One InferenceSession per model, reused for every call.

    Attributes: arm (rebuilt from the metadata), components (K, the graph's real one), format
    (ikmdn.format), train_config and metrics (dicts), version (ikmdn version that exported it),
    source (the file path); for format 2 also refine_settings (RefineSettings) and phases (the
    graph's LM phases), None for format 1.
    """

    def __init__(self, model: str | Path | bytes, threads: int | None = None,
                 source: str | None = None, spinning: bool = False):
        options = session_options(threads, spinning)
        if isinstance(model, bytes):
            self.source = source or "<bytes>"
            if len(model) > MAX_MODEL_BYTES:
                raise IKMDNError(f"{self.source} is larger than {MAX_MODEL_BYTES >> 20} MB, the most "
                                 "an ikmdn model may be")
            data = model
        else:
            path = Path(model)
            self.source = str(path)
            data = read_model_bytes(path)
        proto = parse_model(data, self.source)
        meta = read_metadata(proto, self.source)
        self.format = read_format(meta, self.source)
        self.arm: Arm = self._json(meta, "ikmdn.arm", arm_from_spec)
        self.train_config: dict[str, Any] = self._json(meta, "ikmdn.train")
        self.metrics: dict[str, Any] = self._json(meta, "ikmdn.metrics")
        self.version = meta["ikmdn.version"]
        self.refine_settings: RefineSettings | None = None
        self.phases: tuple[int, ...] | None = None
        if self.format >= 2:
            self.refine_settings, self.phases = read_refine_settings(meta, self.source)
        self._declared = check_interface(proto.graph, self.format, self.arm, self.source)
        self._input_type = np.float64 if self.format >= 2 else np.float32
        self._data, self._options = data, options
        self._graph_session: ort.InferenceSession | None = None
        network = data if self.format == 1 else network_subgraph(proto).SerializeToString()
        del proto
        self.session = self._session(network)
        # batches of at most SMALL_BATCH rows run on one intra-op thread (see predict)
        self._small_session = self.session if threads == 1 else ort.InferenceSession(
            network, session_options(1, spinning), providers=["CPUExecutionProvider"])
        self.components = self._probe(self._declared)

    def _session(self, data: bytes) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(data, self._options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise IKMDNError(f"{self.source} is not a readable ONNX model: {_first_line(exc)}") from None

    def _json(self, meta: dict[str, str], key: str, build=None) -> Any:
        """The JSON object of a metadata key (through build, e.g. arm_from_spec), errors naming it."""
        what = f"{self.source}: metadata {key}"
        value = parse_json(meta[key], what, dict)
        if build is None:
            return value
        try:
            return build(value)
        except IKMDNError as exc:
            raise IKMDNError(f"{what}: {exc}") from None

    def _probe(self, declared: int | None) -> int:
        """The real K, read off one call; it must agree with the K the graph and the training
        config declare."""
        x = np.zeros((PROBE_ROWS, self.arm.target_dim), self._input_type)
        try:
            weights, means, sigmas = self.session.run(OUTPUT_NAMES, {INPUT_NAME: x})
        except Exception as exc:
            raise IKMDNError(f"{self.source}: ONNX Runtime failed on a probe call: "
                             f"{_first_line(exc)}") from None
        k = weights.shape[1] if weights.ndim == 2 else -1
        if not 1 <= k <= MAX_COMPONENTS:
            raise IKMDNError(f"{self.source}: the model returned weights of shape {weights.shape}; "
                             f"expected ({PROBE_ROWS}, K) with K from 1 to {MAX_COMPONENTS}")
        self.components = k
        self._check_shapes(weights, means, sigmas, PROBE_ROWS)
        if declared is not None and declared != k:
            raise IKMDNError(f"{self.source}: its graph declares K = {declared:,} mixture components "
                             f"but returns {k}")
        trained = self.train_config.get("components")
        if isinstance(trained, int) and not isinstance(trained, bool) and trained != k:
            raise IKMDNError(f"{self.source}: metadata ikmdn.train declares K = {trained:,} mixture "
                             f"components but the graph returns {k}")
        return k

    def _check_shapes(self, weights: np.ndarray, means: np.ndarray, sigmas: np.ndarray, n: int) -> None:
        k, dof = self.components, self.arm.dof
        for name, value, shape in (("weights", weights, (n, k)), ("means", means, (n, k, dof)),
                                   ("sigmas", sigmas, (n, k, dof))):
            if value.shape != shape or value.dtype != np.float32:
                raise IKMDNError(f"{self.source}: the model returned {name} {value.dtype} "
                                 f"{value.shape} for {n} targets; expected float32 {shape}")

    def _check_values(self, weights: np.ndarray, means: np.ndarray, sigmas: np.ndarray) -> None:
        """Weights finite, >= 0, rows summing to 1 within WEIGHT_SUM_ATOL; means finite; sigmas
        finite and > 0: else an IKMDNError saying what, for how many targets, and the first row."""
        n = len(weights)
        sums = weights.sum(axis=1, dtype=np.float64)
        if (np.isfinite(sums).all() and weights.min(initial=0.0) >= 0
                and np.abs(sums - 1.0).max(initial=0.0) <= WEIGHT_SUM_ATOL
                and np.isfinite(means).all()
                and np.isfinite(sigmas).all() and sigmas.min(initial=1.0) > 0):
            return
        flat = {"weights": weights, "means": means.reshape(n, -1), "sigmas": sigmas.reshape(n, -1)}
        checks = []
        for name, value in flat.items():
            checks += [(f"NaN {name}", np.isnan(value).any(axis=1)),
                       (f"infinite {name}", np.isinf(value).any(axis=1))]
        checks += [("negative weights", (weights < 0).any(axis=1)),
                   (f"weights that do not sum to 1 (within {WEIGHT_SUM_ATOL:g})",
                    np.abs(sums - 1.0) > WEIGHT_SUM_ATOL),
                   ("sigmas that are not positive", (sigmas.reshape(n, -1) <= 0).any(axis=1))]
        for what, bad in checks:
            count = int(np.count_nonzero(bad))
            if count:
                raise IKMDNError(f"{self.source}: the model returned {what} for {count:,} of {n:,} "
                                 f"targets (first: row {int(np.argmax(bad))})")

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> OnnxModel:
        return cls(path, threads)

    def predict(self, targets, threads: int | None = None) -> Mixture:
        """Mixture over joints (float32) for targets (N, target_dim) in physical units.

        Batches of at most SMALL_BATCH rows run on one intra-op thread whatever the session's
        threads say: waking a second thread for each of a beam search's few hundred tiny nodes
        costs more than it gives (UR5's autoregressive model, one pose: 0.33 ms on 2 threads,
        0.20 ms on 1). So does a call with threads=1: a solve() batch that shares the cores with
        another batch in flight (1,000 Panda poses, autoregressive: 82 -> 78 ms).

        A single target (target_dim,) is promoted to (1, target_dim); an empty batch gives empty
        arrays. Wrong shapes, NaN or infinite values and coordinates beyond +-MAX_TARGET raise
        IKMDNError; so do outputs that break the contract (NaN, negative sigmas, weights not
        summing to 1); an ONNX Runtime failure raises JobFailedError.
        """
        x = self._checked_targets(targets).astype(self._input_type, copy=False)
        k, dof = self.components, self.arm.dof
        if len(x) == 0:
            return Mixture(np.zeros((0, k), np.float32), np.zeros((0, k, dof), np.float32),
                           np.zeros((0, k, dof), np.float32))
        session = self._small_session if len(x) <= SMALL_BATCH or threads == 1 else self.session
        try:
            weights, means, sigmas = session.run(OUTPUT_NAMES, {INPUT_NAME: x})
        except Exception as exc:  # onnxruntime's own types (Fail, RuntimeException, ...), MemoryError
            raise JobFailedError(f"{self.source}: ONNX Runtime failed on {len(x):,} targets: "
                                 f"{_first_line(exc)}") from None
        self._check_shapes(weights, means, sigmas, len(x))
        self._check_values(weights, means, sigmas)
        return Mixture(weights, means, sigmas)

    # -- format 2: the whole graph --------------------------------------------------------------
    @property
    def graph_session(self) -> ort.InferenceSession:
        """The session of the whole format-2 graph (network and refinement), made and probed on
        first use; IKMDNError for a format-1 model."""
        if self.format < 2:
            raise IKMDNError(f"{self.source} is ikmdn.format {self.format}: the network alone, "
                             "without the refinement graph of format 2 (re-export it with `ikmdn "
                             "export`)")
        if self._graph_session is None:
            session = self._session(self._data)
            self._run_graph(session, np.zeros((PROBE_ROWS, self.arm.target_dim)), "a probe call")
            self._graph_session = session
        return self._graph_session

    def refined(self, targets) -> Refined:
        """Every output of a format-2 graph for targets (N, target_dim) (or one (target_dim,)):
        the network's mixture and its K refined candidates per target (see Refined). Inputs are
        checked as in predict; outputs must have the contract's shapes and types, and the
        mixture the values predict requires."""
        x = self._checked_targets(targets)
        return self._run_graph(self.graph_session, x, f"{len(x):,} targets")

    def _checked_targets(self, targets) -> np.ndarray:
        """targets as a finite float64 (N, target_dim) array within +-MAX_TARGET."""
        x = as_batch(targets, self.arm.target_dim, "targets")
        beyond = np.abs(x) > MAX_TARGET
        if beyond.any():
            row, col = (int(i) for i in np.argwhere(beyond)[0])
            raise IKMDNError(f"targets must lie within +-{MAX_TARGET:.0e} (the model computes in "
                             f"float32): row {row} has {self.arm.target_names[col]} = {x[row, col]:.3g}")
        return x

    def _run_graph(self, session: ort.InferenceSession, x: np.ndarray, what: str) -> Refined:
        names = (*OUTPUT_NAMES, *REFINED_OUTPUT_NAMES)
        try:
            values = session.run(names, {INPUT_NAME: x})
        except Exception as exc:
            raise JobFailedError(f"{self.source}: ONNX Runtime failed on {what}: "
                                 f"{_first_line(exc)}") from None
        n, sizes = len(x), {"N": len(x), "K": self.components, "dof": self.arm.dof,
                            "target_dim": self.arm.target_dim}
        contract = CONTRACTS[self.format]
        for name, value in zip(names, values, strict=True):
            elem, axes = contract[name]
            shape = tuple(sizes[a] for a in axes)
            if value.shape != shape or value.dtype != _NUMPY[elem]:
                raise IKMDNError(f"{self.source}: the model returned {name} {value.dtype} "
                                 f"{value.shape} for {n} targets; expected "
                                 f"{_type_name(elem)} {shape}")
        out = Refined(*values)
        self._check_values(out.weights, out.means, out.sigmas)
        return out
