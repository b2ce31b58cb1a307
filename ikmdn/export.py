"""Export a trained MDN to one self-contained ONNX file with ikmdn metadata, parity-checked."""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from ikmdn import __version__
from ikmdn.checkpoint import Checkpoint
from ikmdn.errors import JobFailedError
from ikmdn.outdir import check_output_file, write_atomically
from ikmdn.runtime import INPUT_NAME, ONNX_FORMAT, OUTPUT_NAMES, OnnxModel

OPSET = 17
# Parity tolerances (max absolute difference, and relative for means and sigmas).
WEIGHTS_ATOL = 1e-5
PARAMS_ATOL = 1e-4
PARAMS_RTOL = 1e-5

DOC_STRING = (
    "ikmdn mixture density network for inverse kinematics. Input 'targets': float32 (N, "
    "target_dim), hand targets in physical units (the arm's length unit; radians for angles). "
    "Outputs, one Gaussian mixture over joint angles per target: 'weights' float32 (N, K), "
    "mixing coefficients summing to 1; 'means' float32 (N, K, dof), component means in radians; "
    "'sigmas' float32 (N, K, dof), per-joint standard deviations in radians, all > 0. "
    "Normalisation happens inside the graph. Metadata ikmdn.arm holds the arm spec (JSON)."
)


@dataclass(frozen=True)
class ParityReport:
    """Largest PyTorch-vs-ONNX Runtime differences over the checked targets.

    Means and sigmas pass when every |diff| <= PARAMS_ATOL + PARAMS_RTOL * (the largest |torch
    value| of that output for that target): float32 rounding grows with the magnitudes flowing
    through the network, and targets far outside the workspace (half of the checked ones) drive
    extrapolated means and sigmas into the hundreds or thousands. Weights pass when every |diff|
    <= WEIGHTS_ATOL * max(1, s / 10), s the largest |mean| or sigma of that target (the logits
    behind the weights grow with the same magnitudes: 7e-7 inside the UR5 workspace, 2e-5 where
    s is 260). `*_tol` are the largest |diff| / bound.
    """

    targets: int
    weights_abs: float
    means_abs: float
    sigmas_abs: float
    means_tol: float
    sigmas_tol: float
    weights_tol: float

    @property
    def ok(self) -> bool:
        return self.weights_tol <= 1 and self.means_tol <= 1 and self.sigmas_tol <= 1

    def summary(self) -> str:
        return (f"parity PyTorch vs ONNX Runtime on {self.targets} targets: max |diff| weights "
                f"{self.weights_abs:.1e} (limit {WEIGHTS_ATOL:.0e} x max(1, target's largest "
                f"|value| / 10): {self.weights_tol:.0%} of it used), means {self.means_abs:.1e}, "
                f"sigmas {self.sigmas_abs:.1e} (limit {PARAMS_ATOL:.0e} + {PARAMS_RTOL:.0e} x "
                f"target's largest |value|: {max(self.means_tol, self.sigmas_tol):.0%} of it used)")


def parity(checkpoint: Checkpoint, onnx_model: OnnxModel, targets: np.ndarray) -> ParityReport:
    """Compare the checkpoint's torch forward with the ONNX model on targets (N, target_dim)."""
    x = np.asarray(targets, dtype=np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in checkpoint.model(torch.from_numpy(x))]
    got = onnx_model.predict(x)
    diffs = [np.abs(g - e) for g, e in zip((got.weights, got.means, got.sigmas), expected, strict=True)]

    def row_max(e):
        """The largest |value| per target, shaped (N, 1, 1) to broadcast against (N, K, dof)."""
        return np.abs(e).reshape(len(e), -1).max(axis=1, initial=0.0)[:, None, None]

    def used(d, bound):
        return float(np.max(d / bound, initial=0.0))

    scale = np.maximum(row_max(expected[1]), row_max(expected[2]))
    return ParityReport(len(x), *(float(d.max(initial=0.0)) for d in diffs),
                        used(diffs[1], PARAMS_ATOL + PARAMS_RTOL * row_max(expected[1])),
                        used(diffs[2], PARAMS_ATOL + PARAMS_RTOL * row_max(expected[2])),
                        used(diffs[0], WEIGHTS_ATOL * np.maximum(1.0, scale[:, :, 0] / 10)))


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
        "ikmdn.format": str(ONNX_FORMAT),
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
                seed: int = 0) -> ParityReport:
    """Write checkpoint as one .onnx file after verifying parity; returns the parity report.

    Refuses to overwrite an existing file unless force; writes nothing if parity fails.
    """
    path = check_output_file(path, force)
    data = onnx_bytes(checkpoint)
    report = parity(checkpoint, OnnxModel(data, source=str(path)),
                    parity_targets(checkpoint, 512, seed))
    if not report.ok:
        raise JobFailedError(f"export aborted, nothing written: {report.summary()}")
    write_atomically(path, lambda tmp: tmp.write_bytes(data))
    return report
