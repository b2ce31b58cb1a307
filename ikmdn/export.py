"""Export a trained MDN to one self-contained ONNX file with ikmdn metadata, parity-checked.

Format 1 (`onnx_bytes`) is the network: float32 targets in, the mixture out. Format 2
(`format2_bytes`, DESIGN.md "ONNX format 2") wraps a format-1 network, unchanged, in one graph
with the refinement: float64 targets are cast for the network, and `ikmdn.refine_graph`'s LM
(exported by torch.onnx, each LM phase an ONNX Loop over one exported iteration) refines its
means in float64 and merges duplicates. `format1_bytes` takes the network back out. A format-2
export is checked twice: the network against PyTorch (`parity`) and the refinement against the
Python refinement (`refine_check`).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from ikmdn import __version__
from ikmdn.checkpoint import Checkpoint
from ikmdn.errors import IKMDNError, JobFailedError
from ikmdn.outdir import check_output_file, write_atomically
from ikmdn.refine import RefineSettings, default_settings, refine, residual_norm
from ikmdn.runtime import (
    INPUT_NAME,
    OUTPUT_NAMES,
    REFINED_OUTPUT_NAMES,
    OnnxModel,
    parse_model,
    read_format,
    read_metadata,
)

OPSET = 17
NETWORK_INPUT = "targets_float32"   # the network's own input inside a format-2 graph
REFINE_PREFIX = "refine/"            # prefix of every name the refinement part adds
# Format-2 export check: converged flags of graph and kernel agree on this share of candidates,
# and their joints within JOINTS_ATOL rad where both converged (rounding gives ~1e-12).
CONVERGED_AGREEMENT = 0.99
JOINTS_ATOL = 1e-6
# Parity tolerances (max absolute difference, and relative for means and sigmas).
WEIGHTS_ATOL = 1e-5
PARAMS_ATOL = 1e-4
PARAMS_RTOL = 1e-5
BEAM_TIE = 1e-4     # nats: beam scores this close may be kept or ordered differently by ONNX Runtime

DOC_STRING = (
    "ikmdn mixture density network for inverse kinematics. Input 'targets': float32 (N, "
    "target_dim), hand targets in physical units (the arm's length unit; radians for angles). "
    "Outputs, one Gaussian mixture over joint angles per target: 'weights' float32 (N, K), "
    "mixing coefficients summing to 1; 'means' float32 (N, K, dof), component means in radians; "
    "'sigmas' float32 (N, K, dof), per-joint standard deviations in radians, all > 0. "
    "Normalisation happens inside the graph. Metadata ikmdn.arm holds the arm spec (JSON)."
)
DOC_STRING_2 = (
    "ikmdn refined inverse kinematics (ikmdn.format 2): a mixture density network proposes K "
    "candidate joint vectors per target, each refined by Levenberg-Marquardt against the arm's "
    "forward kinematics in float64. Input 'targets': float64 (N, target_dim), hand targets in "
    "physical units (the arm's length unit; radians for angles). Outputs: the network's 'weights' "
    "float32 (N, K), 'means' and 'sigmas' float32 (N, K, dof); 'joints' float64 (N, K, dof) refined "
    "joints in radians within the limits; 'positions' float64 (N, K, target_dim) = fk(joints); "
    "'errors' float64 (N, K) hand position distance; 'rotation_errors' float64 (N, K) radians; "
    "'within_limits' bool (N, K); 'distinct' bool (N, K), False for a duplicate of a heavier "
    "candidate (within 1e-6 rad, modulo 2 pi), whose weight a client adds to the heaviest distinct "
    "candidate it matches. Metadata: ikmdn.arm (arm spec), ikmdn.refine (LM settings)."
)


@dataclass(frozen=True)
class ParityReport:
    """Largest PyTorch-vs-ONNX Runtime differences over the checked targets.

    Means and sigmas pass when every |diff| <= PARAMS_ATOL + PARAMS_RTOL * s, s the largest
    |torch value| of that target's means and sigmas: float32 rounding grows with the magnitudes
    flowing through the network (an autoregressive model's later means are computed from
    activations as large as its sigmas), and targets far outside the workspace (half of the
    checked ones) drive extrapolated means and sigmas into the hundreds or thousands. Weights
    pass when every |diff| <= WEIGHTS_ATOL * max(1, s / 10) (the logits behind the weights grow
    with the same magnitudes: 7e-7 inside the UR5 workspace, 2e-5 where s is 260). `*_tol` are
    the largest |diff| / bound.

    An autoregressive model's beam search is discontinuous: where two beam scores tie within
    float rounding, another runtime may keep or order the beams differently. Targets whose torch
    beam margin (AutoregressiveMixture.beam_margins) is at most BEAM_TIE x max(1, s / 10) nats (s as
    above: logits grow with it) are left out of the comparison and counted in beam_ties; every
    other target must match.
    """

    targets: int
    weights_abs: float
    means_abs: float
    sigmas_abs: float
    means_tol: float
    sigmas_tol: float
    weights_tol: float
    refine: RefineCheck | None = None   # format 2: the refinement graph against Python
    beam_ties: int = 0                  # targets left out: beam scores tied within BEAM_TIE

    @property
    def ok(self) -> bool:
        return (self.weights_tol <= 1 and self.means_tol <= 1 and self.sigmas_tol <= 1
                and (self.refine is None or self.refine.ok))

    def summary(self) -> str:
        more = "" if self.refine is None else f"; {self.refine.summary()}"
        return self._network_summary() + more

    def _network_summary(self) -> str:
        return (f"parity PyTorch vs ONNX Runtime on {self.targets} targets: max |diff| weights "
                f"{self.weights_abs:.1e} (limit {WEIGHTS_ATOL:.0e} x max(1, target's largest "
                f"|value| / 10): {self.weights_tol:.0%} of it used), means {self.means_abs:.1e}, "
                f"sigmas {self.sigmas_abs:.1e} (limit {PARAMS_ATOL:.0e} + {PARAMS_RTOL:.0e} x "
                f"target's largest |mean| or sigma: {max(self.means_tol, self.sigmas_tol):.0%} of "
                "it used)"
                + (f"; {self.beam_ties} targets with beam scores tied within {BEAM_TIE:.0e} x max(1, "
                   "s / 10) left out"
                   if self.beam_ties else ""))


def parity(checkpoint: Checkpoint, onnx_model: OnnxModel, targets: np.ndarray) -> ParityReport:
    """Compare the checkpoint's torch forward with the ONNX model on targets (N, target_dim)."""
    x = np.asarray(targets, dtype=np.float32)
    model = checkpoint.model
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(x))]
        margins = (model.beam_margins(torch.from_numpy(x)).numpy()
                   if hasattr(model, "beam_margins") else np.full(len(x), np.inf))
    got = onnx_model.predict(x)
    size = np.maximum(np.abs(expected[1]).reshape(len(x), -1).max(1, initial=0.0),
                      np.abs(expected[2]).reshape(len(x), -1).max(1, initial=0.0))
    tied = margins <= BEAM_TIE * np.maximum(1.0, size / 10)
    keep = ~tied
    expected = [e[keep] for e in expected]
    diffs = [np.abs(g[keep] - e) for g, e in zip((got.weights, got.means, got.sigmas), expected,
                                                  strict=True)]

    def row_max(e):
        """The largest |value| per target, shaped (N, 1, 1) to broadcast against (N, K, dof)."""
        return np.abs(e).reshape(len(e), -1).max(axis=1, initial=0.0)[:, None, None]

    def used(d, bound):
        return float(np.max(d / bound, initial=0.0))

    scale = np.maximum(row_max(expected[1]), row_max(expected[2]))
    return ParityReport(len(x), *(float(d.max(initial=0.0)) for d in diffs),
                        used(diffs[1], PARAMS_ATOL + PARAMS_RTOL * scale),
                        used(diffs[2], PARAMS_ATOL + PARAMS_RTOL * scale),
                        used(diffs[0], WEIGHTS_ATOL * np.maximum(1.0, scale[:, :, 0] / 10)),
                        beam_ties=int(tied.sum()))


def parity_targets(checkpoint: Checkpoint, n: int, seed: int) -> np.ndarray:
    """Targets (2n, target_dim): n inside the workspace (fk of random joints) and n well outside."""
    rng = np.random.default_rng(seed)
    arm = checkpoint.arm
    inside = arm.fk(arm.sample_joints(n, rng))
    scale = np.abs(inside).max(axis=0) + 1.0
    outside = rng.uniform(-3, 3, size=inside.shape) * scale
    return np.concatenate([inside, outside])


class _Exportable(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, targets):
        return self.model(targets)


def onnx_bytes(checkpoint: Checkpoint) -> bytes:
    """The serialized ONNX model (graph + metadata), checked with onnx.checker full_check."""
    model = checkpoint.model.cpu().eval()
    arm = checkpoint.arm
    example = torch.zeros(4, arm.target_dim)  # batch >= 2 keeps the batch axis dynamic
    buffer = io.BytesIO()
    batch_axis = {0: "N"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Exportable(model), (example,), buffer, dynamo=False,
                          opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES),
                          dynamic_axes={name: batch_axis for name in (INPUT_NAME, *OUTPUT_NAMES)})
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = "ikmdn"
    proto.producer_version = __version__
    proto.doc_string = DOC_STRING
    meta = {
        "ikmdn.format": "1",
        "ikmdn.version": __version__,
        "ikmdn.arm": json.dumps(arm.spec()),
        "ikmdn.train": json.dumps(checkpoint.config.to_dict()),
        "ikmdn.metrics": json.dumps(checkpoint.metrics),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def export_onnx(checkpoint: Checkpoint, path: str | Path, force: bool = False,
                seed: int = 0, onnx_format: int = 1) -> ParityReport:
    """Write checkpoint as one .onnx file after verifying parity; returns the parity report.

    onnx_format 1 is the network alone (`ikmdn export --raw`); 2 adds the refinement graph
    (DESIGN.md "ONNX format 2"; the default of `ikmdn export` and `ikmdn train --export`), checked
    against the Python refinement as well (`refine_check`). Refuses to overwrite an existing file
    unless force; writes nothing if a check fails.
    """
    if onnx_format not in (1, 2):
        raise IKMDNError(f"onnx_format must be 1 or 2, got {onnx_format!r}")
    path = check_output_file(path, force)
    data = onnx_bytes(checkpoint)
    if onnx_format == 2:
        data = format2_bytes(data)
    model = OnnxModel(data, source=str(path))
    report = parity(checkpoint, model, parity_targets(checkpoint, 512, seed))
    if report.ok and onnx_format == 2:
        report = replace(report, refine=refine_check(model, seed))
    if not report.ok:
        raise JobFailedError(f"export aborted, nothing written: {report.summary()}")
    write_atomically(path, lambda tmp: tmp.write_bytes(data))
    return report


# -- format 2: the network and the refinement in one graph ------------------------------------------

def _torch_onnx(module: torch.nn.Module, args: tuple, input_names: list[str],
                output_names: list[str], dynamic: dict[str, dict[int, str]],
                custom_opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=OPSET,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic,
                          custom_opsets=custom_opsets or {})
    return onnx.load_from_string(buffer.getvalue())


class _Step(torch.nn.Module):
    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def forward(self, *state):
        return self.graph.step(*state)


def refine_graph_proto(arm, components: int, settings: RefineSettings,
                       phases=None) -> onnx.ModelProto:
    """The refinement part of a format-2 graph: RefineGraph exported by torch.onnx (inputs targets
    f64, weights and means f32; outputs REFINED_OUTPUT_NAMES), each LM phase an ONNX Loop whose
    body is one exported iteration (RefineGraph.step) and whose condition stops it once no
    candidate is active."""
    from ikmdn.refine_graph import PHASE_DOMAIN, PHASE_OP, RefineGraph

    module = RefineGraph(arm, settings, phases).eval()
    rng = np.random.default_rng(0)
    n = 4   # batch >= 2 keeps the batch axis dynamic
    joints = arm.sample_joints(n * components, rng)
    targets = torch.from_numpy(arm.fk(arm.sample_joints(n, rng)))
    weights = torch.from_numpy(rng.dirichlet(np.ones(components), n).astype(np.float32))
    means = torch.from_numpy(joints.reshape(n, components, arm.dof).astype(np.float32))
    names = ["targets", "weights", "means"]
    outer = _torch_onnx(module, (targets, weights, means), names, list(REFINED_OUTPUT_NAMES),
                        {name: {0: "N"} for name in (*names, *REFINED_OUTPUT_NAMES)},
                        {PHASE_DOMAIN: 1})
    # One LM iteration on an example state (the initial state of the first phase).
    with torch.no_grad():
        flat = targets[:, None, :].expand(-1, components, -1).reshape(-1, arm.target_dim)
        state, active = module.initial_state(means.to(torch.float64).reshape(-1, arm.dof), flat)
        values = (*state, torch.ones_like(active))
    state_in = [f"in_{i}" for i in range(len(values))]
    state_out = [f"out_{i}" for i in range(len(values))]
    step = _torch_onnx(_Step(module), values, state_in, ["cond", *state_out],
                       {v: {0: "M"} for v in (*state_in, *state_out)})
    _phases_as_loops(outer, step, PHASE_DOMAIN, PHASE_OP)
    _short_names(outer.graph, keep={*names, *REFINED_OUTPUT_NAMES}, prefix="")
    return outer


def _short_names(graph: onnx.GraphProto, keep: set[str], prefix: str) -> None:
    """Rename graph's values and nodes (in place) to short names (prefix + a counter, in base 36)
    but those in keep; each subgraph gets a prefix of its own. torch.onnx's names are ~50
    characters, four fifths of a refinement graph's bytes."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"

    def short(i: int) -> str:
        out = ""
        while True:
            i, r = divmod(i, 36)
            out = digits[r] + out
            if i == 0:
                return out

    names: dict[str, str] = {}

    def rename(v: str) -> str:
        if not v or v in keep:
            return v
        if v not in names:
            names[v] = f"{prefix}{short(len(names))}"
        return names[v]

    for v in (*graph.input, *graph.output, *graph.value_info):
        v.name = rename(v.name)
    for t in graph.initializer:
        t.name = rename(t.name)
    subgraphs = 0
    for i, node in enumerate(graph.node):
        node.input[:] = [rename(v) for v in node.input]
        node.output[:] = [rename(v) for v in node.output]
        if node.op_type != "Loop":
            node.name = f"{prefix}n{short(i)}"
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _short_names(sub, keep, f"{prefix}{short(subgraphs)}.")
                subgraphs += 1


def _phases_as_loops(model: onnx.ModelProto, step: onnx.ModelProto, domain: str, op: str) -> None:
    """Replace each placeholder phase node of model (in place) with an ONNX Loop: trip count its
    `iterations`, loop-carried the state, body the step graph (inputs: the state; outputs: the
    condition, then the state) under names of its own."""
    from onnx import TensorProto, helper

    nodes = []
    phase = 0
    for node in model.graph.node:
        if node.domain != domain or node.op_type != op:
            nodes.append(node)
            continue
        iterations = next(a.i for a in node.attribute if a.name == "iterations")
        prefix = f"phase{phase}/"
        body = onnx.GraphProto()
        body.CopyFrom(step.graph)
        _rename_all(body, lambda v, prefix=prefix: prefix + v)
        body.name = f"lm_phase{phase}"
        body_inputs = [helper.make_tensor_value_info(prefix + "iteration", TensorProto.INT64, []),
                       helper.make_tensor_value_info(prefix + "cond_in", TensorProto.BOOL, []),
                       *body.input]
        body_outputs = list(body.output)
        del body.input[:]
        body.input.extend(body_inputs)
        del body.output[:]
        body.output.extend(body_outputs)
        trip = f"{prefix}trip_count"
        go = f"{prefix}start"
        nodes.append(helper.make_node("Constant", [], [trip], name=trip,
                                      value=helper.make_tensor(trip, TensorProto.INT64, [],
                                                               [iterations])))
        nodes.append(helper.make_node("Constant", [], [go], name=go,
                                      value=helper.make_tensor(go, TensorProto.BOOL, [], [True])))
        nodes.append(helper.make_node("Loop", [trip, go, *node.input], list(node.output),
                                      name=f"lm_phase{phase}", body=body))
        phase += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", OPSET)])


def _rename_all(graph: onnx.GraphProto, rename) -> None:
    """Apply rename to every value and node name of graph (and its subgraphs, in place)."""
    for node in graph.node:
        node.name = rename(node.name) if node.name else node.name
        node.input[:] = [rename(v) if v else v for v in node.input]
        node.output[:] = [rename(v) if v else v for v in node.output]
        for attr in node.attribute:
            if attr.HasField("g"):
                _rename_all(attr.g, rename)
            for sub in attr.graphs:
                _rename_all(sub, rename)
    for t in graph.initializer:
        t.name = rename(t.name)
    for v in (*graph.value_info, *graph.input, *graph.output):
        v.name = rename(v.name)


def _tensor_info(name: str, elem_type: int, dims) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, elem_type, list(dims))


def compose_format2(network: onnx.ModelProto, refinement: onnx.ModelProto, arm, components: int,
                    metadata: dict[str, str]) -> onnx.ModelProto:
    """One format-2 model: targets (f64) -> Cast -> the format-1 network (its nodes and weights
    unchanged) -> weights, means, sigmas, and the refinement graph on (targets, weights, means)."""
    from onnx import TensorProto

    net = onnx.ModelProto()
    net.CopyFrom(network)
    ref = onnx.ModelProto()
    ref.CopyFrom(refinement)
    for node in net.graph.node:
        node.input[:] = [NETWORK_INPUT if v == INPUT_NAME else v for v in node.input]
    shared = {INPUT_NAME, "weights", "means", *REFINED_OUTPUT_NAMES}
    _rename_all(ref.graph, lambda v: v if v in shared else REFINE_PREFIX + v)
    cast = onnx.helper.make_node("Cast", [INPUT_NAME], [NETWORK_INPUT], name="cast_targets",
                                 to=TensorProto.FLOAT)
    k, dof, td = components, arm.dof, arm.target_dim
    shapes = {"joints": (TensorProto.DOUBLE, ("N", k, dof)),
              "positions": (TensorProto.DOUBLE, ("N", k, td)),
              "errors": (TensorProto.DOUBLE, ("N", k)),
              "rotation_errors": (TensorProto.DOUBLE, ("N", k)),
              "within_limits": (TensorProto.BOOL, ("N", k)),
              "distinct": (TensorProto.BOOL, ("N", k))}
    outputs = {v.name: v for v in net.graph.output}
    graph = onnx.helper.make_graph(
        [cast, *net.graph.node, *ref.graph.node], "ikmdn_format2",
        [_tensor_info(INPUT_NAME, TensorProto.DOUBLE, ("N", td))],
        [*(outputs[name] for name in OUTPUT_NAMES),
         *(_tensor_info(name, *shapes[name]) for name in REFINED_OUTPUT_NAMES)],
        initializer=[*net.graph.initializer, *ref.graph.initializer],
        value_info=[*net.graph.value_info, *ref.graph.value_info])
    for name in OUTPUT_NAMES:   # the network's outputs: batch axis "N", as the graph's input
        outputs_dims = next(v for v in graph.output if v.name == name).type.tensor_type.shape.dim
        outputs_dims[0].ClearField("dim_value")
        outputs_dims[0].dim_param = "N"
    opsets = {o.domain: o.version for o in net.opset_import}
    for o in ref.opset_import:
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v)
                                                         for d, v in sorted(opsets.items())])
    model.ir_version = max(net.ir_version, ref.ir_version)
    model.producer_name = "ikmdn"
    model.producer_version = __version__
    model.doc_string = DOC_STRING_2
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


def format2_bytes(network: bytes, settings: RefineSettings | None = None, phases=None,
                  source: str = "<network>") -> bytes:
    """A format-2 model (serialized) around the network of a format-1 model (bytes, checked as
    the runtime checks any model file): its nodes and weights are kept bit for bit, its metadata
    kept with ikmdn.format "2", ikmdn.version this ikmdn's, and ikmdn.refine added. settings:
    default_settings(arm) unless given; phases: refine_graph.default_phases(max_iter)."""
    from ikmdn.refine_graph import default_phases, refine_metadata

    proto = parse_model(network, source)
    meta = read_metadata(proto, source)
    if read_format(meta, source) != 1:
        raise IKMDNError(f"{source} is ikmdn.format {meta['ikmdn.format']}; format 2 is built "
                         "around a format-1 network")
    model = OnnxModel(network, source=source)   # every check of a model file, and the real K
    arm, k = model.arm, model.components
    settings = settings or default_settings(arm)
    phases = tuple(phases or default_phases(settings.max_iter))
    metadata = {key: meta[key] for key in ("ikmdn.arm", "ikmdn.train", "ikmdn.metrics")}
    metadata = {"ikmdn.format": "2", "ikmdn.version": __version__, **metadata,
                "ikmdn.refine": json.dumps(refine_metadata(settings, phases))}
    composed = compose_format2(proto, refine_graph_proto(arm, k, settings, phases), arm, k, metadata)
    return composed.SerializeToString()


def format1_bytes(data: bytes, source: str = "<format 2>") -> bytes:
    """The format-1 model inside a format-2 model (serialized): its network, float32 targets in,
    metadata ikmdn.format "1" without ikmdn.refine (the inverse of format2_bytes)."""
    from onnx import TensorProto

    from ikmdn.runtime import network_subgraph

    proto = parse_model(data, source)
    meta = read_metadata(proto, source)
    if read_format(meta, source) != 2:
        raise IKMDNError(f"{source} is ikmdn.format {meta['ikmdn.format']}, not 2")
    net = network_subgraph(proto)
    nodes = [n for n in net.graph.node if n.name != "cast_targets"]
    for node in nodes:
        node.input[:] = [INPUT_NAME if v == NETWORK_INPUT else v for v in node.input]
    del net.graph.node[:]
    net.graph.node.extend(nodes)
    net.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    net.producer_name, net.producer_version, net.doc_string = "ikmdn", __version__, DOC_STRING
    for key in ("ikmdn.format", "ikmdn.version", "ikmdn.arm", "ikmdn.train", "ikmdn.metrics"):
        net.metadata_props.add(key=key, value="1" if key == "ikmdn.format" else meta[key])
    onnx.checker.check_model(net, full_check=True)
    return net.SerializeToString()


@dataclass(frozen=True)
class RefineCheck:
    """The format-2 graph against the Python refinement (ikmdn.refine.refine on the same
    float32 means cast to float64 and the same targets), over every candidate of the checked
    targets: converged (error <= tol) flags that agree; where both converged, the share whose
    joints agree within JOINTS_ATOL (rad; ~1e-12 is rounding) and the largest joint difference;
    the largest difference between the graph's errors and those of numpy fk at the graph's joints
    (its kinematics). A start at a singular configuration (an untrained network's means near
    zero: UR5's stretched arm) can send rounding-level differences to two different exact
    solutions, so joint agreement is a share, like the flags'. On a redundant arm (more joints
    than residual rows) rounding moves converged joints along the self-motion, so there the
    joints are reported, not bounded."""

    candidates: int
    agreement: float
    joints_max: float
    errors_max: float
    redundant: bool = False
    joints_agreement: float = 1.0

    @property
    def ok(self) -> bool:
        return (self.agreement >= CONVERGED_AGREEMENT and self.errors_max <= 1e-10
                and (self.redundant or self.joints_agreement >= CONVERGED_AGREEMENT))

    def summary(self) -> str:
        return (f"refinement graph vs Python on {self.candidates} candidates: converged flags agree "
                f"for {self.agreement:.2%}, joints where both converged agree within "
                f"{JOINTS_ATOL:.0e} rad for {self.joints_agreement:.2%} (largest difference "
                f"{self.joints_max:.1e} rad), errors vs numpy fk within {self.errors_max:.1e}")


def refine_check(model: OnnxModel, seed: int = 0, n: int = 256) -> RefineCheck:
    """Compare a format-2 model's graph with ikmdn.refine.refine on n workspace targets."""
    arm = model.arm
    rng = np.random.default_rng([seed, 2])
    x = arm.fk(arm.sample_joints(n, rng))
    out = model.refined(x)
    settings = model.refine_settings
    k, dof = model.components, arm.dof
    q0 = out.means.astype(np.float64).reshape(-1, dof)
    xs = np.repeat(x, k, axis=0)
    q, reached, err = refine(arm, q0, xs, settings)
    graph_err = out.errors.reshape(-1)
    graph_q = out.joints.reshape(-1, dof)
    graph_conv = residual_norm(arm, out.positions.reshape(-1, arm.target_dim), xs) <= settings.tol
    conv = err <= settings.tol
    both = conv & graph_conv
    fk_err = arm.target_error(arm.fk(graph_q), xs)
    joint_diff = np.abs(q[both] - graph_q[both]).max(axis=1, initial=0.0)
    return RefineCheck(len(q0), float(np.mean(conv == graph_conv)),
                       float(joint_diff.max(initial=0.0)),
                       float(np.abs(fk_err - graph_err).max(initial=0.0)),
                       redundant=arm.dof > arm.residual_dim,
                       joints_agreement=float(np.mean(joint_diff <= JOINTS_ATOL)) if both.any() else 1.0)
