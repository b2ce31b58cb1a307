"""Training: TrainConfig, the loop (Adam, warm-up + cosine schedule, best-validation checkpoint),
checkpoint files, and a checkpoint-backed predictor with the runtime's interface."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ikmdn import __version__
from ikmdn.arms import Arm, arm_from_spec, get_arm
from ikmdn.arms.base import as_batch
from ikmdn.data import Dataset, make_ik_dataset
from ikmdn.errors import IKMDNError, JobFailedError
from ikmdn.mdn import MDN, MDNConfig
from ikmdn.mixture import Mixture

FORMAT_VERSION = 1
CHECKPOINT_NAME = "model.pt"


@dataclass
class TrainConfig:
    """Everything that decides a training run; same config + same CPU = same model."""

    arm: str = "bishop"
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
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        for name in ("samples", "components", "epochs", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise IKMDNError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise IKMDNError(f"lr must be positive, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise IKMDNError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise IKMDNError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**d)

    def model_config(self, arm: Arm) -> MDNConfig:
        """The network shape for arm: targets in, joints out."""
        return MDNConfig(input_dim=arm.target_dim, output_dim=arm.dof,
                         components=self.components, hidden=self.hidden,
                         activation=self.activation, sigma_floor=self.sigma_floor, kind=self.kind,
                         angular_inputs=tuple(arm.angular_targets),
                         periodic_outputs=tuple(arm.continuous_joints))


# Defaults chosen by scripts/bench_train.py on a 2-core CPU (see README, "Results").
ARM_DEFAULTS: dict[str, dict[str, Any]] = {
    "bishop": {"components": 2},
    "planar2": {"components": 8},
    "planar3": {"components": 8},
}


def default_config(arm: str, **overrides: Any) -> TrainConfig:
    """The default TrainConfig for a preset arm, with overrides (None values ignored)."""
    get_arm(arm)  # validates the name
    values = {**ARM_DEFAULTS.get(arm, {}), **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(arm=arm, **values)


@dataclass
class Checkpoint:
    """A trained model with everything needed to use and describe it."""

    model: MDN
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
        tmp = Path(path).with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file, or the model.pt inside a training run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise IKMDNError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a bad file
        raise IKMDNError(f"{path} is not an ikmdn checkpoint (torch cannot load it as plain "
                         "tensors and JSON)") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise IKMDNError(f"{path} is not an ikmdn checkpoint (no state_dict)")
    if payload.get("format", 0) > FORMAT_VERSION:
        raise IKMDNError(f"{path} has checkpoint format {payload['format']}; this ikmdn reads "
                         f"format {FORMAT_VERSION} or older: upgrade ikmdn")
    model = MDN(MDNConfig.from_dict(json.loads(payload["model_config"])))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Checkpoint(model, TrainConfig.from_dict(json.loads(payload["train_config"])),
                      arm_from_spec(json.loads(payload["arm"])), json.loads(payload["metrics"]))


@dataclass
class EpochRecord:
    """One row of history.csv."""

    epoch: int
    train_loss: float
    val_nll: float
    lr: float
    seconds: float


ProgressCallback = Callable[[EpochRecord], None]


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def fit(model: MDN, train: Dataset, val: Dataset, config: TrainConfig,
        on_epoch: ProgressCallback | None = None,
        on_best: Callable[[MDN, EpochRecord], None] | None = None) -> list[EpochRecord]:
    """Train model in place on train, keep the weights with the best validation NLL.

    Raises JobFailedError when a loss goes NaN or infinite (the best weights are restored first).
    """
    device = torch.device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    model.set_normalization(train.inputs, train.outputs)
    model.to(device)
    x = torch.as_tensor(train.inputs, dtype=torch.float32, device=device)
    y = torch.as_tensor(train.outputs, dtype=torch.float32, device=device)
    xv = torch.as_tensor(val.inputs, dtype=torch.float32, device=device)
    yv = torch.as_tensor(val.outputs, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total, warmup=min(500, total // 10 + 1)))
    history: list[EpochRecord] = []
    best_state, best_val = None, math.inf
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        total_loss = torch.zeros((), device=device)
        for idx in _batches(len(train), config.batch_size, generator):
            idx = idx.to(device)
            loss = model.loss(x[idx], y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach() * len(idx)
        train_loss = float(total_loss) / len(train)
        model.eval()
        with torch.no_grad():
            if config.kind == "least_squares":
                residual = model(xv)[1][:, 0] - yv
                model.fixed_sigma.copy_(residual.pow(2).mean(0).sqrt().clamp_min(1e-8))
            val_nll = float(model.nll(xv, yv))
        record = EpochRecord(epoch, train_loss, val_nll, optimizer.param_groups[0]["lr"],
                             time.perf_counter() - start)
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if not (math.isfinite(train_loss) and math.isfinite(val_nll)):
            if best_state is not None:
                model.load_state_dict(best_state)
            kept = (f"the best weights (validation NLL {best_val:.4f}) are kept"
                    if best_state is not None else "no epoch finished with a finite loss")
            raise JobFailedError(f"training diverged at epoch {epoch} (train loss {train_loss}, "
                                 f"validation NLL {val_nll}); {kept}. Try a smaller --lr.")
        if val_nll < best_val:
            best_val = val_nll
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if on_best:
                on_best(model, record)
    model.load_state_dict(best_state)
    model.eval()
    return history


def build_model(arm: Arm, config: TrainConfig) -> MDN:
    """A freshly initialised network for arm, seeded by config.seed (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return MDN(config.model_config(arm))


def write_history(path: Path, history: list[EpochRecord]) -> None:
    """history.csv: one row per epoch."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(EpochRecord)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in history)


def prepare_out_dir(out_dir: str | Path, force: bool) -> Path:
    """Create out_dir; refuse (unless force) when it already holds files."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IKMDNError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise IKMDNError(f"--out {out} already holds files; choose another folder or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    return out


def train_run(config: TrainConfig, out_dir: str | Path, force: bool = False,
              on_epoch: ProgressCallback | None = None) -> Checkpoint:
    """Generate data, train, and write model.pt, config.json, history.csv and loss.png to out_dir.

    The checkpoint holds the best-validation weights and their metrics (validation NLL, best-mode
    and min-over-modes RMS error on 5,000 fresh targets).
    """
    from ikmdn.evaluate import quick_metrics
    from ikmdn.plots import plot_loss_curve

    arm = get_arm(config.arm)
    out = prepare_out_dir(out_dir, force)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    train, val = make_ik_dataset(arm, config.samples, config.seed).split(
        config.val_fraction, config.seed)
    model = build_model(arm, config)
    history: list[EpochRecord] = []

    def record(r: EpochRecord) -> None:
        history.append(r)
        write_history(out / "history.csv", history)
        if on_epoch:
            on_epoch(r)

    def save_best(m: MDN, r: EpochRecord) -> None:
        Checkpoint(m, config, arm, {"val_nll": r.val_nll, "epoch": r.epoch}).save(
            out / CHECKPOINT_NAME)

    try:
        fit(model, train, val, config, on_epoch=record, on_best=save_best)
    finally:
        if history:
            plot_loss_curve(history, out / "loss.png", title=f"{config.kind} on {arm.name}")
    best = min(history, key=lambda r: r.val_nll)
    metrics = {"val_nll": best.val_nll, "epoch": best.epoch, "train_seconds": history[-1].seconds,
               **quick_metrics(arm, CheckpointModel(Checkpoint(model, config, arm)).predict,
                               seed=config.seed + 1)}
    checkpoint = Checkpoint(model, config, arm, metrics)
    checkpoint.save(out / CHECKPOINT_NAME)
    return checkpoint


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

    def predict(self, targets) -> Mixture:
        """Mixture over joints for targets (N, target_dim)."""
        x = as_batch(targets, self.arm.target_dim, "targets")
        with torch.no_grad():
            out = self.checkpoint.model(torch.as_tensor(x, dtype=torch.float32))
        return Mixture(*(t.numpy() for t in out))
