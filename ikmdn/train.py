"""Training: TrainConfig (validated, with size limits), the loop (Adam, warm-up + cosine schedule,
best-validation checkpoint), run folders (locked, resumable, interrupted cleanly); checkpoint
files live in ikmdn.checkpoint."""

from __future__ import annotations

import csv
import json
import math
import numbers
import re
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from ikmdn import __version__
from ikmdn.arms import Arm, arm_from_spec, get_arm
from ikmdn.checkpoint import (  # noqa: F401  (re-exported: the checkpoint file lives in ikmdn.checkpoint)
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    Checkpoint,
    CheckpointModel,
    load_checkpoint,
    read_resume_state,
    restore_trainer,
)
from ikmdn.data import ArmStream, Dataset
from ikmdn.errors import IKMDNError, JobFailedError
from ikmdn.mdn import ConditionalDensity, MDNConfig
from ikmdn.network import build_network
from ikmdn.outdir import run_folder, signals_raise, write_atomically
from ikmdn.untrusted import MAX_SEED, short

# Size limits, checked by TrainConfig before anything is allocated: far above any useful run (the
# largest shipped model has 4 x 256 hidden units, K = 32, 1.5M samples per epoch, 12 epochs), far
# below what exhausts a workstation's memory.
MAX_COMPONENTS = 1024
MAX_WIDTH = 16_384               # units in one hidden layer
MAX_LAYERS = 16                  # hidden layers
MAX_SAMPLES = 1_000_000_000      # training pairs per epoch (streamed in chunks, never held whole)
MAX_EPOCHS = 10_000
MAX_PARAMETERS = 100_000_000     # 400 MB of float32 weights (Adam's moments and gradients: x4)
MAX_ACTIVATIONS = 2**28          # rows x units in one forward pass: 1 GiB of float32
DEVICE_PATTERN = re.compile(r"cpu|cuda(:[0-9]{1,3})?")


def _integer(name: str, value: Any, lo: int, hi: int) -> int:
    """value as an int in [lo, hi] (an integral number, not a bool), else IKMDNError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise IKMDNError(f"{name} must be an integer, got {short(value)}")
    if not lo <= value <= hi:
        raise IKMDNError(f"{name} must be an integer from {lo:,} to {hi:,}, got {int(value):,}")
    return int(value)


@dataclass
class TrainConfig:
    """Everything that decides a training run; same config + same CPU = same model.

    samples: training pairs per epoch, made by forward kinematics in chunks (resample=True draws
    fresh ones every epoch); the validation set (val_fraction x samples, at most 50,000) is drawn
    on top from its own stream. wrap_joints: joints that turn a full circle get a wrapped Gaussian
    (False: a plain Gaussian, for comparison in scripts/bench_wrapping.py).

    arm: a preset name, an Arm (kept as its JSON spec, so the run needs no URDF file later) or
    such a spec.

    kind "autoregressive" (see ikmdn.autoregressive): components is the beam width,
    factor_components and factor_hidden shape each joint's factor, and joint_order is the order of
    the factors (None: found by ikmdn.joint_order before training, then stored here).
    """

    arm: str | dict[str, Any] = "bishop"
    samples: int = 200_000
    components: int = 4
    hidden: tuple[int, ...] = (128, 128, 128)
    activation: str = "silu"
    epochs: int = 30
    batch_size: int = 512
    lr: float = 3e-3
    val_fraction: float = 0.05
    seed: int = 0
    device: str = "cpu"
    sigma_floor: float = 1e-4
    kind: str = "mdn"
    resample: bool = False
    wrap_joints: bool = True
    format_version: int = FORMAT_VERSION
    joint_order: tuple[int, ...] | None = None
    factor_components: int = 6
    factor_hidden: tuple[int, ...] = (128, 128)

    def __post_init__(self):
        if isinstance(self.arm, Arm):
            self.arm = self.arm.spec()
        arm = self.build_arm()  # a name or spec that makes no arm fails here, before any work
        if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, (list, tuple)):
            raise IKMDNError(f"hidden must be a list of layer widths such as [128, 128], "
                             f"got {short(self.hidden)}")
        if len(self.hidden) > MAX_LAYERS:
            raise IKMDNError(f"hidden (--hidden) has {len(self.hidden)} layers; at most "
                             f"{MAX_LAYERS} are allowed")
        self.hidden = tuple(_integer("hidden width (--hidden)", h, 1, MAX_WIDTH) for h in self.hidden)
        if (isinstance(self.factor_hidden, (str, bytes)) or not isinstance(self.factor_hidden, (list, tuple))
                or not 1 <= len(self.factor_hidden) <= MAX_LAYERS):
            raise IKMDNError(f"factor_hidden must be a list of 1 to {MAX_LAYERS} layer widths, "
                             f"got {short(self.factor_hidden)}")
        self.factor_hidden = tuple(_integer("factor_hidden width", h, 1, MAX_WIDTH)
                                   for h in self.factor_hidden)
        self.factor_components = _integer("factor_components", self.factor_components, 1, 64)
        if self.joint_order is not None:
            if isinstance(self.joint_order, (str, bytes)) or not isinstance(self.joint_order, (list, tuple)):
                raise IKMDNError("joint_order must be a list of joint indices, "
                                 f"got {short(self.joint_order)}")
            self.joint_order = tuple(_integer("joint_order entry", j, 0, arm.dof - 1)
                                     for j in self.joint_order)
        for name, limit in (("samples", MAX_SAMPLES), ("components", MAX_COMPONENTS),
                            ("epochs", MAX_EPOCHS), ("batch_size", MAX_SAMPLES)):
            setattr(self, name, _integer(f"{name} (--{name.replace('_', '-')})",
                                         getattr(self, name), 1, limit))
        self.seed = _integer("seed (--seed)", self.seed, 0, MAX_SEED)
        if self.batch_size > self.samples:
            raise IKMDNError(f"batch_size (--batch-size) {self.batch_size:,} is larger than samples "
                             f"(--samples) {self.samples:,}; give at most {self.samples:,}")
        if not (isinstance(self.lr, numbers.Real) and math.isfinite(self.lr) and self.lr > 0):
            raise IKMDNError(f"lr must be a positive number, got {short(self.lr)}")
        if not (isinstance(self.val_fraction, numbers.Real) and 0 < self.val_fraction < 1):
            raise IKMDNError(f"val_fraction must be in (0, 1), got {short(self.val_fraction)}")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            raise IKMDNError(f"device (--device) must be cpu, cuda or cuda:N, got {short(self.device)}")
        if self.kind == "least_squares":
            self.components = 1  # the conditional mean: one output per joint
        self.model_config(arm)  # the network's own checks (e.g. joint_order, beam width)
        self._check_memory(arm)

    def _check_memory(self, arm: Arm) -> None:
        """Refuse networks and batches whose implied memory is beyond MAX_PARAMETERS weights or
        MAX_ACTIVATIONS activations per forward pass, before anything is allocated."""
        c = arm.dof
        if self.kind == "autoregressive":
            first = self.factor_hidden[0]
            factor = (*self.factor_hidden, 3 * self.factor_components)
            outputs = c * first
            layers = zip(factor[:-1], factor[1:], strict=True)
            extra = c * (3 * c * first + sum((a + 1) * b for a, b in layers))
            units = c * sum(factor)
        else:
            outputs = self.components * (c if self.kind == "least_squares" else 1 + 2 * c)
            extra = units = 0
        features, parameters = 2 * arm.target_dim, extra  # angles enter as (cos, sin): at most 2x
        for width in (*self.hidden, outputs):
            parameters += (features + 1) * width
            features = width
        if parameters > MAX_PARAMETERS:
            raise IKMDNError(f"the network (--hidden {','.join(map(str, self.hidden))}, --components "
                             f"{self.components}) would have about {parameters:,} weights; at most "
                             f"{MAX_PARAMETERS:,} are allowed")
        rows = max(self.batch_size, min(validation_size(self), VALIDATION_CHUNK))
        activations = rows * (sum(self.hidden) + outputs + units)
        if activations > MAX_ACTIVATIONS:
            raise IKMDNError(f"{rows:,} rows per forward pass (--batch-size, or the validation "
                             f"set) through {sum(self.hidden) + outputs + units:,} units would hold "
                             f"{activations:,} activations; at most {MAX_ACTIVATIONS:,} are "
                             "allowed: use a smaller --batch-size or --hidden")

    def build_arm(self) -> Arm:
        """The arm this run trains on: the preset called `arm`, or the arm its spec describes."""
        if isinstance(self.arm, str):
            return get_arm(self.arm)
        if isinstance(self.arm, dict):
            return arm_from_spec(self.arm)
        raise IKMDNError(f"arm must be a preset name, an Arm or an arm spec, got {type(self.arm).__name__}")

    @property
    def arm_name(self) -> str:
        """The arm's name (the preset's, or the one its spec gives)."""
        return self.arm if isinstance(self.arm, str) else str(self.arm.get("name"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["factor_hidden"] = list(self.factor_hidden)
        d["joint_order"] = None if self.joint_order is None else list(self.joint_order)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise IKMDNError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**d)

    def model_config(self, arm: Arm) -> MDNConfig:
        """The network shape for arm: targets in, joints out (an autoregressive model without a
        joint_order yet gets the natural order)."""
        return MDNConfig(input_dim=arm.target_dim, output_dim=arm.dof,
                         components=self.components, hidden=self.hidden,
                         activation=self.activation, sigma_floor=self.sigma_floor, kind=self.kind,
                         angular_inputs=tuple(arm.angular_targets),
                         periodic_outputs=tuple(arm.continuous_joints & self.wrap_joints),
                         joint_order=self.joint_order or (),
                         **({"factor_components": self.factor_components,
                             "factor_hidden": self.factor_hidden}
                            if self.kind == "autoregressive" else {}))


# Defaults chosen by scripts/bench_train.py and scripts/bench_model.py on a 2-core CPU (see
# README, "Results"), by the arm's properties, never its name: a preset and the same arm from a
# URDF file train alike.
SMALL_DEFAULTS: dict[str, Any] = {}   # planar-sized arms: TrainConfig's own defaults
POSITION_CHAIN_DEFAULTS: dict[str, Any] = {"hidden": (256, 256, 256), "components": 8,
                                           "samples": 500_000, "epochs": 16, "batch_size": 1024,
                                           "resample": True}
POSE_CHAIN_DEFAULTS: dict[str, Any] = {"hidden": (256, 256, 256, 256), "components": 32,
                                       "samples": 1_500_000, "epochs": 12, "batch_size": 1024,
                                       "lr": 1e-3, "resample": True}
# the autoregressive model's beam is its K (candidates per target; training does not depend on
# it): scripts/bench_model.py, UR5 16 -> 99.66% of branches at twice the speed of 32 (99.86%);
# Panda 24 -> 22 distinct solutions per pose (32 -> 29)
POSE_CHAIN_AUTOREGRESSIVE: dict[str, Any] = {
    "hidden": (256, 256, 256), "factor_hidden": (128, 128), "components": 16,
    "factor_components": 6, "samples": 1_500_000, "epochs": 12, "batch_size": 1024, "lr": 2e-3,
    "resample": True}
REDUNDANT_AUTOREGRESSIVE: dict[str, Any] = {"components": 24, "factor_hidden": (64, 64),
                                            "epochs": 24}


def arm_defaults(arm: Arm, kind: str | None = None) -> dict[str, Any]:
    """Training settings (kind included) that suit arm, chosen from its properties:

    - 6-D pose targets, or 6 joints and more (many branches, or a redundant continuum): the
      autoregressive mixture, a 3 x 256 body, 2 x 128 per joint, on fresh data every epoch
      (~10 min on 2 cores), with a beam of 16 candidates (a 6R arm has at most 16 IK
      solutions; UR5 has 8); a redundant arm (more joints than residual dimensions) gets a beam
      of 24 (samples of its solution continuum) and, as its beam runs 7 factors on 24 rows,
      2 x 64 per joint trained for 24 epochs (Panda: the accuracy of 2 x 128 x 12 epochs within
      the same time, and 1.5x its solve speed); as an MDN: 4 x 256, K = 32;
    - a 3-D position chain (up to 4 shoulder/elbow branches): an MDN, 3 x 256, K = 8, fresh data;
    - planar-sized arms: an MDN, 3 x 128 on a fixed 200,000 pairs; K = 8 when a joint turns a
      full circle (branches and the wrap of each joint), else K = 2 (Bishop's limited arm).

    kind: the model kind asked for (None: the arm's default kind).
    """
    if arm.pose_targets or arm.dof >= 6:
        if kind in (None, "autoregressive"):
            redundant = REDUNDANT_AUTOREGRESSIVE if arm.dof > arm.residual_dim else {}
            return {**POSE_CHAIN_AUTOREGRESSIVE, **redundant, "kind": "autoregressive"}
        return {**POSE_CHAIN_DEFAULTS, "kind": kind}
    if arm.residual_dim == 3 and arm.target_dim == 3 and not arm.angular_targets.any() \
            and arm.kind != "planar":
        return {**POSITION_CHAIN_DEFAULTS, "kind": kind or "mdn"}
    return {**SMALL_DEFAULTS, "components": 8 if arm.continuous_joints.any() else 2,
            "kind": kind or "mdn"}


def default_config(arm: str | Arm, **overrides: Any) -> TrainConfig:
    """The default TrainConfig for arm (a preset name or an Arm), with overrides (None values
    ignored): see arm_defaults. A default batch size is at most the samples given."""
    built = get_arm(arm) if isinstance(arm, str) else arm
    if not isinstance(built, Arm):
        raise IKMDNError(f"arm must be a preset name or an Arm, got {type(arm).__name__}")
    given = {k: v for k, v in overrides.items() if v is not None}
    values = {**arm_defaults(built, given.get("kind")), **given}
    if "batch_size" not in given and isinstance(given.get("samples"), int) and given["samples"] > 0:
        values["batch_size"] = min(values.get("batch_size", TrainConfig.batch_size), given["samples"])
    return TrainConfig(arm=arm if isinstance(arm, str) else built.spec(), **values)


@dataclass
class EpochRecord:
    """One row of history.csv."""

    epoch: int
    train_loss: float
    val_nll: float
    lr: float
    seconds: float


ProgressCallback = Callable[[EpochRecord], None]
LAST_NAME = "last.pt"
MAX_VALIDATION = 50_000
VALIDATION_CHUNK = 8192   # validation rows per forward pass


def validation_size(config: TrainConfig) -> int:
    """Validation pairs of a run: val_fraction x samples, at least 1,000, at most MAX_VALIDATION."""
    return min(MAX_VALIDATION, max(1000, round(config.val_fraction * config.samples)))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise IKMDNError(f"unknown torch device {name!r}; use cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise IKMDNError(f"unsupported torch device {name!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise IKMDNError(f"device {name!r} requested but torch sees no CUDA device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise IKMDNError(f"device {name!r} requested but torch sees {torch.cuda.device_count()} "
                         "CUDA device(s)")
    return device


TrainSource = Dataset | ArmStream


def _chunks(source: TrainSource, epoch: int):
    return [source] if isinstance(source, Dataset) else source.chunks(epoch)


class Trainer:
    """Adam with a warm-up + cosine schedule, best-validation tracking and NaN detection.

    Its whole state (weights, optimiser, schedule, shuffling generator, history, best weights)
    round-trips through state_dict()/load_state_dict(), so a run can be resumed bit for bit.
    """

    def __init__(self, model: ConditionalDensity, source: TrainSource, val: Dataset, config: TrainConfig):
        self.model, self.source, self.config = model, source, config
        self.device = _device(config.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        norm = source if isinstance(source, Dataset) else next(source.chunks(1))
        model.set_normalization(norm.inputs, norm.outputs)
        model.to(self.device)
        self.xv = torch.as_tensor(val.inputs, dtype=torch.float32, device=self.device)
        self.yv = torch.as_tensor(val.outputs, dtype=torch.float32, device=self.device)
        # fused: one kernel per step for all parameters (2-3% faster on a CPU, same rule)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
        chunk_sizes = ([len(source)] if isinstance(source, Dataset)
                       else [min(source.chunk, len(source) - s)
                             for s in range(0, len(source), source.chunk)])
        total = config.epochs * sum(math.ceil(n / config.batch_size) for n in chunk_sizes)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _lr_factor(s, total, warmup=min(500, total // 10 + 1)))
        self.history: list[EpochRecord] = []
        self.best_state: dict[str, torch.Tensor] | None = None

    @property
    def best(self) -> EpochRecord | None:
        """The epoch with the lowest validation NLL so far."""
        return min(self.history, key=lambda r: r.val_nll) if self.history else None

    def _train_epoch(self, epoch: int) -> float:
        self.model.train()
        total_loss, count = torch.zeros((), device=self.device), 0
        for chunk in _chunks(self.source, epoch):
            x = torch.as_tensor(chunk.inputs, dtype=torch.float32, device=self.device)
            y = torch.as_tensor(chunk.outputs, dtype=torch.float32, device=self.device)
            order = torch.randperm(len(chunk), generator=self.generator).to(self.device)
            for start in range(0, len(chunk), self.config.batch_size):
                idx = order[start:start + self.config.batch_size]
                loss = self._batch_loss(x, y, idx)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                total_loss += loss.detach() * len(idx)
            count += len(chunk)
        return float(total_loss) / count

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The loss of one minibatch, rows idx of the chunk (x, y); ikmdn.train_distributed
        overrides it to run through DistributedDataParallel."""
        return self.model.loss(x[idx], y[idx])

    def _validate(self) -> float:
        """Validation NLL, VALIDATION_CHUNK rows per forward pass (bounded memory)."""
        self.model.eval()
        chunks = [slice(a, a + VALIDATION_CHUNK) for a in range(0, len(self.xv), VALIDATION_CHUNK)]
        with torch.no_grad():
            if self.config.kind == "least_squares":
                residual = torch.cat([self.model(self.xv[c])[1][:, 0] - self.yv[c] for c in chunks])
                self.model.fixed_sigma.copy_(residual.pow(2).mean(0).sqrt().clamp_min(1e-8))
            total = sum(float(self.model.nll(self.xv[c], self.yv[c])) * len(self.xv[c])
                        for c in chunks)
        return total / len(self.xv)

    def fit(self, on_epoch: ProgressCallback | None = None,
            on_best: Callable[[ConditionalDensity, EpochRecord], None] | None = None,
            on_epoch_end: Callable[[Trainer], None] | None = None) -> list[EpochRecord]:
        """Train the remaining epochs; leave the best-validation weights in the model.

        Raises JobFailedError when a loss goes NaN or infinite (the best weights are restored).
        """
        elapsed = self.history[-1].seconds if self.history else 0.0
        start = time.perf_counter() - elapsed
        for epoch in range(len(self.history) + 1, self.config.epochs + 1):
            train_loss = self._train_epoch(epoch)
            val_nll = self._validate()
            record = EpochRecord(epoch, train_loss, val_nll, self.optimizer.param_groups[0]["lr"],
                                 time.perf_counter() - start)
            if not (math.isfinite(train_loss) and math.isfinite(val_nll)):
                best = self.best
                if self.best_state is not None:
                    self.model.load_state_dict(self.best_state)
                kept = (f"the best weights (epoch {best.epoch}, validation NLL {best.val_nll:.4f}) "
                        "are kept" if best else "no epoch finished with a finite loss")
                raise JobFailedError(f"training diverged at epoch {epoch} (train loss {train_loss}, "
                                     f"validation NLL {val_nll}); {kept}. Try a smaller --lr.")
            improved = self.best is None or val_nll < self.best.val_nll
            self.history.append(record)
            if improved:
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                if on_best:
                    on_best(self.model, record)
            if on_epoch_end:  # the epoch's state is saved before anyone is told about it
                on_epoch_end(self)
            if on_epoch:
                on_epoch(record)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        return self.history

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: tensors and JSON strings (weights_only-loadable)."""
        return {
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "best_state": self.best_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "history": json.dumps([asdict(r) for r in self.history]),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["state_dict"])
        self.best_state = state["best_state"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.history = [EpochRecord(**r) for r in json.loads(state["history"])]


def fit(model: ConditionalDensity, train: TrainSource, val: Dataset, config: TrainConfig,
        on_epoch: ProgressCallback | None = None,
        on_best: Callable[[ConditionalDensity, EpochRecord], None] | None = None) -> list[EpochRecord]:
    """Train model in place (see Trainer.fit); returns the history."""
    return Trainer(model, train, val, config).fit(on_epoch, on_best)


def build_model(arm: Arm, config: TrainConfig) -> ConditionalDensity:
    """A freshly initialised network for arm, seeded by config.seed (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_network(config.model_config(arm))


def write_history(path: Path, history: list[EpochRecord]) -> None:
    """history.csv: one row per epoch (written atomically)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(EpochRecord)])
            writer.writeheader()
            writer.writerows(asdict(r) for r in history)

    write_atomically(path, write)


def with_joint_order(config: TrainConfig) -> TrainConfig:
    """config with its joint_order found (ikmdn.joint_order, seeded by config.seed) when it is an
    autoregressive model's and none is given; else config itself."""
    if config.kind != "autoregressive" or config.joint_order is not None:
        return config
    from ikmdn.joint_order import find_joint_order
    return replace(config, joint_order=find_joint_order(config.build_arm(), config.seed))


def _trainer_for(config: TrainConfig) -> tuple[Arm, Trainer]:
    arm = config.build_arm()
    stream = ArmStream(arm, config.samples, config.seed, resample=config.resample)
    return arm, Trainer(build_model(arm, config), stream, stream.validation(validation_size(config)),
                        config)


def _save_last(trainer: Trainer, arm: Arm, path: Path) -> None:
    payload = {"format": FORMAT_VERSION, "ikmdn_version": __version__,
               "model_config": json.dumps(trainer.model.config.to_dict()),
               "train_config": json.dumps(trainer.config.to_dict()),
               "arm": json.dumps(arm.spec()), **trainer.state_dict()}
    write_atomically(path, lambda tmp: torch.save(payload, tmp))


RUN_FILES = (CHECKPOINT_NAME, LAST_NAME, "config.json", "history.csv", "loss.png")


class TrainingInterrupted(JobFailedError):
    """SIGINT, SIGTERM or SIGHUP stopped a training run; last.pt holds the last finished epoch."""


class _Progress:
    """What a run has saved so far, for the message of an interruption."""

    epochs: int = 0  # the run's length
    saved: int = 0   # epochs that last.pt holds


def _signal_name(exc: BaseException) -> str | None:
    """The signal outdir.signals_raise turned into exc (KeyboardInterrupt: SIGINT; SystemExit(128
    + n): signal n), else None."""
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128:
        try:
            return signal.Signals(exc.code - 128).name
        except ValueError:
            return None
    return None


@contextmanager
def _stopped_by_signals(out: Path, resume: bool = False,
                        command: str = "ikmdn train") -> Iterator[_Progress]:
    """Within the block SIGINT, SIGTERM and SIGHUP end the run cleanly: the exception they raise
    unwinds it (an interrupted write_atomically removes its temporary, the previous last.pt and
    model.pt stay whole, the folder lock is released) and becomes TrainingInterrupted, a one-line
    message (exit status 1) that says how to resume with `command`."""
    progress = _Progress()
    try:
        with signals_raise():
            yield progress
    except (KeyboardInterrupt, SystemExit) as exc:
        name = _signal_name(exc)
        if name is None:
            raise
        where = shlex.quote(str(out))
        if progress.saved:
            message = (f"interrupted by {name} after epoch {progress.saved} of {progress.epochs} "
                       f"(saved in {LAST_NAME}): resume with {command} --out {where} --resume")
        elif resume:  # its last.pt is untouched
            message = f"interrupted by {name}: resume with {command} --out {where} --resume"
        else:
            message = (f"interrupted by {name} before the first epoch finished; nothing to resume: "
                       f"start again with {command} --out {where} --force")
        raise TrainingInterrupted(message) from None


def train_run(config: TrainConfig, out_dir: str | Path, force: bool = False,
              on_epoch: ProgressCallback | None = None, threads: int | None = None,
              on_start: Callable[[], None] | None = None) -> Checkpoint:
    """Train on pairs made by forward kinematics; write model.pt (best validation weights and
    their metrics: validation NLL, best-mode and min-over-modes RMS error on 5,000 fresh targets),
    last.pt (state to resume), config.json, history.csv and loss.png to out_dir.

    The run holds out_dir for itself (see outdir.run_folder): a second job on it fails at once;
    out_dir must be empty, or with force the files of an old run (RUN_FILES) are deleted first
    (other files are left alone). Each epoch's model.pt, last.pt and history.csv are written
    before on_epoch is called. SIGINT/SIGTERM/SIGHUP raise TrainingInterrupted (last.pt keeps the
    last finished epoch; no temporary file is left). A run that fails before writing anything
    removes the folders it created.

    threads: torch CPU threads for this run (None: torch's default); see `torch_threads`.
    on_start: called once the folder is ready, before any data is made (e.g. to draw a bar)."""
    _device(config.device)  # an unusable device fails before any folder is made
    with run_folder(out_dir, RUN_FILES, "ikmdn train", force=force,
                    markers=(CHECKPOINT_NAME, LAST_NAME)) as out, \
            _stopped_by_signals(out) as progress:
        if on_start:
            on_start()
        with torch_threads(threads):
            config = with_joint_order(config)
            arm, trainer = _trainer_for(config)
            text = json.dumps(config.to_dict(), indent=2) + "\n"
            write_atomically(out / "config.json", lambda tmp: tmp.write_text(text))
            return _run(trainer, arm, out, on_epoch, progress)


def resume_run(out_dir: str | Path, on_epoch: ProgressCallback | None = None,
               threads: int | None = None) -> Checkpoint:
    """Continue the training run in out_dir from its last.pt, with its own config (its arm spec
    included: no URDF file is needed). The folder is held as by train_run."""
    path = Path(out_dir) / LAST_NAME
    if not path.is_file():
        raise IKMDNError(f"cannot resume: {path} does not exist (was {out_dir} made by ikmdn train?)")
    with run_folder(out_dir, RUN_FILES, "ikmdn train --resume", resume=True) as out, \
            _stopped_by_signals(out, resume=True) as progress:
        state, config = read_resume_state(path)
        processes = state.get("world_size", 1)
        if type(processes) is not int or processes != 1:  # a run of ikmdn.train_distributed
            raise IKMDNError(f"cannot resume {path} here: it is a run of {short(processes)} "
                             "processes; resume it with torchrun --nproc-per-node "
                             f"{short(processes)} -m ikmdn.train_distributed --out "
                             f"{shlex.quote(str(out))} --resume")
        with torch_threads(threads):
            arm, trainer = _trainer_for(config)
            restore_trainer(trainer, state, path)
            progress.saved = len(trainer.history)
            return _run(trainer, arm, out, on_epoch, progress)


@contextmanager
def torch_threads(threads: int | None):
    """Run a block with torch.set_num_threads(threads) (None: unchanged), restored afterwards.

    On a shared 2-core machine spin-waiting OpenMP threads make 2 threads slower than 1 when
    another job runs (scripts/bench_threads.py); `ikmdn train` therefore sets
    OMP_WAIT_POLICY=PASSIVE before torch loads, which keeps 2 threads at least as fast as 1.
    """
    if threads is not None and threads < 1:
        raise IKMDNError(f"threads must be a positive integer, got {threads}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(trainer: Trainer, arm: Arm, out: Path, on_epoch: ProgressCallback | None,
         progress: _Progress | None = None,
         extra_metrics: dict[str, Any] | None = None) -> Checkpoint:
    """Fit trainer, writing the run's files to out; extra_metrics: more entries for the final
    model.pt's metrics."""
    from ikmdn.evaluate import quick_metrics
    from ikmdn.plots import plot_loss_curve

    config = trainer.config
    progress = progress or _Progress()
    progress.epochs = config.epochs

    def end_epoch(t: Trainer) -> None:  # before on_epoch: a callback that fails loses nothing
        _save_last(t, arm, out / LAST_NAME)
        progress.saved = len(t.history)
        write_history(out / "history.csv", t.history)

    def save_best(m: ConditionalDensity, r: EpochRecord) -> None:
        Checkpoint(m, config, arm, {"val_nll": r.val_nll, "epoch": r.epoch}).save(
            out / CHECKPOINT_NAME)

    try:
        trainer.fit(on_epoch=on_epoch, on_best=save_best, on_epoch_end=end_epoch)
    finally:
        if trainer.history:
            plot_loss_curve(trainer.history, out / "loss.png", title=f"{config.kind} on {arm.name}")
    trainer.model.cpu()  # a GPU run's model too: the metrics feed it CPU tensors, as users will
    best = trainer.best
    metrics = {"val_nll": best.val_nll, "epoch": best.epoch,
               "train_seconds": trainer.history[-1].seconds,
               **quick_metrics(arm, CheckpointModel(Checkpoint(trainer.model, config, arm)).predict,
                               seed=config.seed + 1), **(extra_metrics or {})}
    checkpoint = Checkpoint(trainer.model, config, arm, metrics)
    checkpoint.save(out / CHECKPOINT_NAME)
    return checkpoint

