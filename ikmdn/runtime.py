"""An exported ikmdn model run by ONNX Runtime: numpy in, mixture out. Never imports torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ikmdn.arms import Arm, arm_from_spec
from ikmdn.arms.base import as_batch
from ikmdn.errors import IKMDNError
from ikmdn.mixture import Mixture

ONNX_FORMAT = 1  # the newest ikmdn.format this runtime reads
INPUT_NAME = "targets"
OUTPUT_NAMES = ("weights", "means", "sigmas")
METADATA_KEYS = ("ikmdn.format", "ikmdn.version", "ikmdn.arm", "ikmdn.train", "ikmdn.metrics")


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
        if threads < 1:
            raise IKMDNError(f"threads must be a positive integer, got {threads}")
        options.intra_op_num_threads = threads
    return options


def _json_field(meta: dict[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise IKMDNError(f"{source}: metadata {key} is not valid JSON ({exc})") from None


class OnnxModel:
    """One InferenceSession per model, reused for every call.

    Attributes: arm (rebuilt from the metadata), components (K), train_config and metrics (dicts),
    version (ikmdn version that exported it), source (the file path).
    """

    def __init__(self, model: str | Path | bytes, threads: int | None = None,
                 source: str | None = None, spinning: bool = False):
        if isinstance(model, bytes):
            self.source = source or "<bytes>"
        else:
            path = Path(model)
            self.source = str(path)
            if not path.is_file():
                raise IKMDNError(f"model file {path} does not exist")
            model = str(path)
        try:
            self.session = ort.InferenceSession(model, session_options(threads, spinning),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise IKMDNError(f"{self.source} is not a readable ONNX model: {first}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in METADATA_KEYS if k not in meta]
        if missing:
            raise IKMDNError(f"{self.source} is an ONNX model but not an ikmdn model "
                             f"(metadata lacks {', '.join(missing)})")
        try:
            fmt = int(meta["ikmdn.format"])
        except ValueError:
            raise IKMDNError(f"{self.source}: ikmdn.format {meta['ikmdn.format']!r} is not an "
                             "integer") from None
        if fmt > ONNX_FORMAT:
            raise IKMDNError(f"{self.source} has ikmdn.format {fmt}; this ikmdn reads format "
                             f"{ONNX_FORMAT} or older: upgrade ikmdn")
        if fmt < 1:
            raise IKMDNError(f"{self.source}: ikmdn.format must be 1 to {ONNX_FORMAT}, got {fmt}")
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
            raise IKMDNError(f"{self.source}: expected input {INPUT_NAME!r} and outputs "
                             f"{list(OUTPUT_NAMES)}, got {inputs} and {outputs}")
        self.arm: Arm = arm_from_spec(_json_field(meta, "ikmdn.arm", self.source))
        self.train_config: dict[str, Any] = _json_field(meta, "ikmdn.train", self.source)
        self.metrics: dict[str, Any] = _json_field(meta, "ikmdn.metrics", self.source)
        self.version = meta["ikmdn.version"]
        k = self.session.get_outputs()[0].shape[1]
        # A symbolic K (e.g. the least-squares graph's) is read off one probe call.
        self._check_graph()
        self.components = k if isinstance(k, int) else self.session.run(
            ["weights"], {INPUT_NAME: np.zeros((1, self.arm.target_dim), np.float32)})[0].shape[1]

    def _check_graph(self) -> None:
        """The graph's types and fixed sizes must agree with the contract and the arm."""
        found = {io.name: (io.type, io.shape) for io in
                 (*self.session.get_inputs(), *self.session.get_outputs())}
        expected = {INPUT_NAME: (1, self.arm.target_dim), "weights": (1, None),
                    "means": (2, self.arm.dof), "sigmas": (2, self.arm.dof)}
        for name, (axis, size) in expected.items():
            kind, shape = found[name]
            if kind != "tensor(float)":
                raise IKMDNError(f"{self.source}: {name} must be float32, got {kind}")
            if size is not None and isinstance(shape[axis], int) and shape[axis] != size:
                raise IKMDNError(f"{self.source}: {name} has size {shape[axis]} on axis {axis} but "
                                 f"its arm {self.arm.name!r} needs {size}")

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> OnnxModel:
        return cls(path, threads)

    def predict(self, targets) -> Mixture:
        """Mixture over joints (float32) for targets (N, target_dim) in physical units.

        A single target (target_dim,) is promoted to (1, target_dim); an empty batch gives empty
        arrays. Wrong shapes and NaN or infinite values raise IKMDNError.
        """
        x = as_batch(targets, self.arm.target_dim, "targets")
        if np.any(np.abs(x) > np.finfo(np.float32).max):
            raise IKMDNError("targets must fit in float32 (|value| < 3.4e38)")
        x = x.astype(np.float32)
        if len(x) == 0:
            k, dof = self.components, self.arm.dof
            return Mixture(np.zeros((0, k), np.float32), np.zeros((0, k, dof), np.float32),
                           np.zeros((0, k, dof), np.float32))
        weights, means, sigmas = self.session.run(OUTPUT_NAMES, {INPUT_NAME: x})
        return Mixture(weights, means, sigmas)
