"""Checkpoint files: the format, writing, and reading them as untrusted input; a checkpoint-backed
predictor with the runtime's interface. Serves train (writes them, resumes from last.pt), export
and solve (read model.pt); needs torch.

The format (FORMAT_VERSION 1): a torch zip file loadable with torch.load(weights_only=True), a dict
    format        int, this version
    ikmdn_version str, the ikmdn that wrote it
    model_config  JSON MDNConfig       train_config  JSON TrainConfig
    arm           JSON arm spec        metrics       JSON object (model.pt; optional)
    state_dict    {name: tensor}, the network's parameters and buffers
A training run's last.pt (the state to resume) adds the Trainer's state: best_state (a state dict
or None), optimizer, scheduler (torch state dicts), generator (uint8 tensor), history (JSON list).

Reading never trusts the file: it must be a plain torch zip (no compressed members, nothing
larger than the file holds), every JSON field is bounded (`ikmdn.untrusted`), and the state
dict's names, shapes and dtypes must be exactly those the model config gives before any model
is built from it, so a file can neither allocate more than it holds nor half-load.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ikmdn import __version__
from ikmdn.arms import Arm, arm_from_spec
from ikmdn.arms.base import as_batch
from ikmdn.errors import IKMDNError
from ikmdn.mdn import ConditionalDensity, MDNConfig
from ikmdn.mixture import Mixture
from ikmdn.network import build_network, config_buffers
from ikmdn.outdir import write_atomically
from ikmdn.untrusted import MAX_COMPONENTS, parse_json, short

if TYPE_CHECKING:  # train imports this module; TrainConfig is imported where it is used
    from ikmdn.train import TrainConfig, Trainer

FORMAT_VERSION = 1
CHECKPOINT_NAME = "model.pt"
HEADER_KEYS = ("format", "model_config", "train_config", "arm", "state_dict")
RESUME_KEYS = ("best_state", "optimizer", "scheduler", "generator", "history")
MAX_CHECKPOINT_BYTES = 2 << 30   # ikmdn's largest checkpoints (last.pt of a pose arm) are ~10 MB
MAX_LAYERS = 64
MAX_WIDTH = 1 << 20


@dataclass
class Checkpoint:
    """A trained model with everything needed to use and describe it."""

    model: ConditionalDensity
    config: TrainConfig
    arm: Arm
    metrics: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Write a torch file loadable with torch.load(weights_only=True): JSON strings + tensors."""
        payload = {
            "format": FORMAT_VERSION,
            "ikmdn_version": __version__,
            "model_config": json.dumps(self.model.config.to_dict()),
            "train_config": json.dumps(self.config.to_dict()),
            "arm": json.dumps(self.arm.spec()),
            "metrics": json.dumps(self.metrics),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }
        write_atomically(path, lambda tmp: torch.save(payload, tmp))


# -- reading -------------------------------------------------------------------------------------
def _load_payload(path: Path) -> dict[str, Any]:
    """The dict in a checkpoint file, loaded as plain tensors and strings after checking that the
    file is a torch zip whose members hold no more than the file does."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise IKMDNError(f"{path} is not an ikmdn checkpoint (not a torch zip file)") from None
    declared = sum(m.file_size for m in members)
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or declared > size:
        raise IKMDNError(f"{path} is not an ikmdn checkpoint: its members declare {declared:,} bytes "
                         f"in a {size:,}-byte file (compressed members; torch.save writes none)")
    if size > MAX_CHECKPOINT_BYTES:
        raise IKMDNError(f"{path} is {size / 2**30:.1f} GB; an ikmdn checkpoint is at most "
                         f"{MAX_CHECKPOINT_BYTES >> 30} GB")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a bad file
        raise IKMDNError(f"{path} is not an ikmdn checkpoint (torch cannot load it as plain "
                         "tensors and JSON)") from None
    if not isinstance(payload, dict):
        raise IKMDNError(f"{path} is not an ikmdn checkpoint (it holds a {type(payload).__name__}, "
                         "not a dict)")
    return payload


def _check_keys(payload: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in payload]
    if missing:
        raise IKMDNError(f"{path} is not an ikmdn checkpoint (it lacks {', '.join(missing)})")
    fmt = payload["format"]
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise IKMDNError(f"{path}: checkpoint format must be an integer, got {short(fmt)}")
    if fmt > FORMAT_VERSION:
        raise IKMDNError(f"{path} has checkpoint format {fmt}; this ikmdn reads format "
                         f"{FORMAT_VERSION} or older: upgrade ikmdn")
    if fmt < 1:
        raise IKMDNError(f"{path}: checkpoint format must be 1 to {FORMAT_VERSION}, got {fmt}")


def _model_config(payload: dict[str, Any], arm: Arm, path: Path) -> MDNConfig:
    """The MDNConfig of a checkpoint, checked against its arm and sane sizes before use."""
    d = parse_json(payload["model_config"], f"{path}: model_config", dict)
    for key in ("input_dim", "output_dim", "components"):
        value = d.get(key, 1)
        if not _whole(value, 1, MAX_COMPONENTS):
            raise IKMDNError(f"{path}: model_config {key} must be an integer from 1 to "
                             f"{MAX_COMPONENTS}, got {short(value)}")
    for key in ("hidden", "factor_hidden"):
        widths = d.get(key, [1])
        if (not isinstance(widths, list) or not 1 <= len(widths) <= MAX_LAYERS
                or not all(_whole(h, 1, MAX_WIDTH) for h in widths)):
            raise IKMDNError(f"{path}: model_config {key} must be 1 to {MAX_LAYERS} widths from 1 "
                             f"to {MAX_WIDTH}, got {short(widths)}")
    order = d.get("joint_order", [])
    if not isinstance(order, list) or not all(_whole(j, 0, MAX_COMPONENTS) for j in order):
        raise IKMDNError(f"{path}: model_config joint_order must be a list of joint indices, "
                         f"got {short(order)}")
    if not _whole(d.get("factor_components", 1), 1, 64):
        raise IKMDNError(f"{path}: model_config factor_components must be an integer from 1 to 64, "
                         f"got {short(d.get('factor_components'))}")
    for key in ("angular_inputs", "periodic_outputs"):
        flags = d.get(key, [])
        if not isinstance(flags, list) or not all(isinstance(f, bool) for f in flags):
            raise IKMDNError(f"{path}: model_config {key} must be a list of true/false, got {short(flags)}")
    floor = d.get("sigma_floor", 1.0)
    if not isinstance(floor, (int, float)) or isinstance(floor, bool) or not math.isfinite(floor):
        raise IKMDNError(f"{path}: model_config sigma_floor must be a finite number, got {short(floor)}")
    try:
        config = MDNConfig.from_dict(d)
    except IKMDNError as exc:
        raise IKMDNError(f"{path}: model_config: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise IKMDNError(f"{path}: model_config is invalid ({short(exc, 120)})") from None
    if (config.input_dim, config.output_dim) != (arm.target_dim, arm.dof):
        raise IKMDNError(f"{path}: model_config maps {config.input_dim} inputs to {config.output_dim} "
                         f"outputs but its arm {arm.name!r} has target_dim {arm.target_dim} and dof "
                         f"{arm.dof}")
    return config


def _whole(value: Any, lo: int, hi: int) -> bool:
    """value is an int (not a bool) from lo to hi."""
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def check_state_dict(state: Any, config: MDNConfig, what: str) -> None:
    """state must hold exactly the tensors of build_network(config): same names, shapes and
    dtypes, finite, and the buffers that follow from the config (network.CONFIG_BUFFERS: joint
    order, masks, periodic and angular flags) equal to the config's.

    The expected shapes come from a model built on the meta device (no memory), so a config that
    asks for a huge network costs nothing until it is known to match tensors the file really holds.
    """
    if not isinstance(state, dict):
        raise IKMDNError(f"{what} must be a dict of tensors, got {type(state).__name__}")
    with torch.device("meta"):
        expected = build_network(config).state_dict()
    names = {str(k) for k in state}
    missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or unexpected:
        def listed(keys):
            return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        parts = ([f"lacks {listed(missing)}"] if missing else []) + (
            [f"has unexpected {listed(unexpected)}"] if unexpected else [])
        raise IKMDNError(f"{what} does not match its model_config: it {'; it '.join(parts)}")
    for name, want in expected.items():
        got = state[name]
        if not isinstance(got, torch.Tensor):
            raise IKMDNError(f"{what} entry {name} must be a tensor, got {type(got).__name__}")
        if got.shape != want.shape or got.dtype != want.dtype:
            raise IKMDNError(f"{what} tensor {name} is {got.dtype} {tuple(got.shape)} but its "
                             f"model_config needs {want.dtype} {tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise IKMDNError(f"{what} tensor {name} holds NaN or infinite values")
    for name, want in config_buffers(config).items():
        if not torch.equal(state[name], want):
            raise IKMDNError(f"{what} tensor {name} disagrees with its model_config (its values "
                             "follow from the config: joint order, periodic or angular flags)")


def _train_config(payload: dict[str, Any], path: Path) -> TrainConfig:
    from ikmdn.train import TrainConfig

    d = parse_json(payload["train_config"], f"{path}: train_config", dict)
    try:
        return TrainConfig.from_dict(d)
    except IKMDNError as exc:
        raise IKMDNError(f"{path}: train_config: {exc}") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise IKMDNError(f"{path}: train_config is invalid ({short(exc, 120)})") from None


def _arm(payload: dict[str, Any], path: Path) -> Arm:
    try:
        return arm_from_spec(parse_json(payload["arm"], f"{path}: arm", dict))
    except IKMDNError as exc:
        message = str(exc)
        raise IKMDNError(message if message.startswith(str(path)) else f"{path}: arm: {message}") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file (model.pt, or a run's last.pt), or the model.pt inside a training
    run folder. Any file that does not hold exactly what the format says raises a one-line
    IKMDNError naming what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise IKMDNError(f"no checkpoint at {path}")
    payload = _load_payload(path)
    _check_keys(payload, HEADER_KEYS, path)
    arm = _arm(payload, path)
    model_config = _model_config(payload, arm, path)
    check_state_dict(payload["state_dict"], model_config, f"{path}: state_dict")
    config = _train_config(payload, path)
    if config.joint_order is not None and tuple(config.joint_order) != model_config.joint_order:
        raise IKMDNError(f"{path}: train_config joint_order {list(config.joint_order)} disagrees "
                         f"with model_config joint_order {list(model_config.joint_order)}")
    metrics = (parse_json(payload["metrics"], f"{path}: metrics", dict) if "metrics" in payload
               else {})
    model = build_network(model_config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Checkpoint(model, config, arm, metrics)


def read_resume_state(path: str | Path) -> tuple[dict[str, Any], TrainConfig]:
    """(state, config) of a run's last.pt, checked as load_checkpoint checks a model.pt: the
    weights and best weights must fit the network the training config builds."""
    try:
        return _read_resume_state(Path(path))
    except IKMDNError as exc:
        raise IKMDNError(f"cannot resume: {exc}") from None


def _read_resume_state(path: Path) -> tuple[dict[str, Any], TrainConfig]:
    payload = _load_payload(path)
    _check_keys(payload, HEADER_KEYS + RESUME_KEYS, path)
    config = _train_config(payload, path)
    model_config = config.model_config(config.build_arm())
    check_state_dict(payload["state_dict"], model_config, f"{path}: state_dict")
    if payload["best_state"] is not None:
        check_state_dict(payload["best_state"], model_config, f"{path}: best_state")
    for key in ("optimizer", "scheduler"):
        if not isinstance(payload[key], dict):
            raise IKMDNError(f"{path}: {key} must be a dict, got {type(payload[key]).__name__}")
    generator = payload["generator"]
    if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8 or generator.dim() != 1:
        raise IKMDNError(f"{path}: generator must be a 1-D uint8 tensor (a torch.Generator state)")
    history = parse_json(payload["history"], f"{path}: history", list)
    if not all(isinstance(r, dict) for r in history):
        raise IKMDNError(f"{path}: history must be a list of epoch records")
    return payload, config


def _number_ok(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def restore_trainer(trainer: Trainer, state: dict[str, Any], path: str | Path) -> None:
    """Load a state from read_resume_state into trainer; a state that does not fit it (optimizer
    moments of other shapes, a generator state of the wrong size, bad epoch records, non-numeric
    learning rates) raises a one-line IKMDNError instead of failing mid-training."""
    try:
        trainer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IKMDNError(f"cannot resume from {path}: its training state does not fit this run "
                         f"({short(first, 120)})") from None
    problem = None
    for group in trainer.optimizer.param_groups:
        numbers = [group.get(k, 0.0) for k in ("lr", "eps", "weight_decay", "initial_lr")]
        betas = group.get("betas", (0.9, 0.999))
        if not all(_number_ok(v) for v in numbers) or not (
                isinstance(betas, (tuple, list)) and len(betas) == 2 and all(_number_ok(b) for b in betas)):
            problem = "optimizer settings must be finite numbers"
        for p in group["params"]:
            for name, value in trainer.optimizer.state.get(p, {}).items():
                if not isinstance(value, torch.Tensor):
                    problem = f"optimizer state {name} must be a tensor"
                elif value.dim() > 0 and value.shape != p.shape:
                    problem = (f"optimizer state {name} has shape {tuple(value.shape)} for a parameter "
                               f"of shape {tuple(p.shape)}")
                elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    problem = f"optimizer state {name} holds NaN or infinite values"
    scheduler = trainer.scheduler
    if (not isinstance(scheduler.last_epoch, int) or isinstance(scheduler.last_epoch, bool)
            or scheduler.last_epoch < 0
            or not all(_number_ok(v) for v in getattr(scheduler, "base_lrs", []))):
        problem = "scheduler state must hold a step count and finite base learning rates"
    if problem:
        raise IKMDNError(f"cannot resume from {path}: {problem}")


# -- a checkpoint behind the runtime's interface ---------------------------------------------------
class CheckpointModel:
    """A checkpoint behind the runtime's interface: arm, config, metrics, predict(targets)."""

    def __init__(self, checkpoint: Checkpoint, source: str = "<memory>"):
        self.checkpoint = checkpoint
        self.arm = checkpoint.arm
        self.train_config = checkpoint.config.to_dict()
        self.metrics = checkpoint.metrics
        self.source = source
        self.components = checkpoint.model.config.components

    @classmethod
    def load(cls, path: str | Path) -> CheckpointModel:
        return cls(load_checkpoint(path), str(path))

    def predict(self, targets, threads: int | None = None) -> Mixture:
        """Mixture over joints for targets (N, target_dim); threads is the runtime's hint (torch
        keeps its own thread count)."""
        x = as_batch(targets, self.arm.target_dim, "targets")
        with torch.no_grad():
            out = self.checkpoint.model(torch.as_tensor(x, dtype=torch.float32))
        return Mixture(*(t.numpy() for t in out))


# metrics of the training itself, which a new beam leaves true (the others measure candidates)
TRAINING_METRICS = ("val_nll", "epoch", "train_seconds", "world_size", "trained_components")


def with_beam(checkpoint: Checkpoint, width: int) -> Checkpoint:
    """checkpoint with its autoregressive model's beam width (its K: candidates per target) set
    to width. Training does not depend on the beam, so the weights are kept; the configs say
    the new K; of the metrics the training ones (TRAINING_METRICS) are kept, best-mode and
    min-over-modes RMS measured again, and metrics["trained_components"] says the K it was
    trained with. IKMDNError for an MDN (its K is fixed by training) or a width the model cannot
    fill."""
    from copy import deepcopy
    from dataclasses import replace

    from ikmdn.evaluate import quick_metrics

    model = checkpoint.model
    if model.config.kind != "autoregressive":
        raise IKMDNError(f"a beam width is for autoregressive models, not {model.config.kind} "
                         f"(its K = {model.config.components} is fixed by training)")
    if width == model.config.components:
        return checkpoint
    rebuilt = deepcopy(model)
    rebuilt.config = replace(model.config, components=width)  # MDNConfig checks the width
    config = replace(checkpoint.config, components=width)
    kept = {k: v for k, v in checkpoint.metrics.items() if k in TRAINING_METRICS}
    beamed = Checkpoint(rebuilt, config, checkpoint.arm, {})
    measured = quick_metrics(checkpoint.arm, CheckpointModel(beamed).predict, seed=config.seed + 1)
    beamed.metrics = {**kept, **measured,
                      "trained_components": kept.get("trained_components", model.config.components)}
    return beamed
