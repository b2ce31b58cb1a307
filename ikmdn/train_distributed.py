"""Data-parallel training on N processes: PyTorch DistributedDataParallel (DDP), started by torchrun.

    torchrun --nproc-per-node 2 -m ikmdn.train_distributed --arm bishop --out runs/bishop-ddp
    torchrun --nproc-per-node 8 -m ikmdn.train_distributed --arm ur5 --device cuda --out runs/ur5

(docs/distributed.md: commands, batch sizes, expected scaling). Every process (rank) runs
ikmdn.train's Trainer, unchanged but for four overrides in DistributedTrainer, on its own data:

- Data: rank r streams RankStream(seed, r). Rank 0's pairs are exactly those of the single-process
  run with the same config; rank r > 0 draws chunk c of epoch e from
  default_rng([seed, 1, e (0 unless resample), c, r]), a stream of its own. The validation set is
  the single-process one, the same on every rank.
- Sizes: --samples and --batch-size are per rank. An epoch has as many steps as a single-process
  run of the same config; each step averages the gradients of N x batch_size pairs (the global
  batch) and an epoch sees N x samples pairs. The learning rate is not scaled.
- Start: the same seed builds the same network on every rank; rank 0's normalisation (from its
  first chunk, as in a single-process run) and weights are broadcast to the others.
- Steps: the loss runs through DDP (model.loss as a forward pass), whose backward all-reduces and
  averages the gradients; Adam then takes the same step on every rank, so the weights stay equal.
- Epochs: the training loss is averaged over the ranks and rank 0's validation NLL is broadcast,
  so every rank keeps the same history, keeps the same best epoch and stops on the same NaN.
  Each rank shuffles with its own generator; their states are gathered at the end of each epoch.
- Files: rank 0 holds the run folder (its lock, the --force rules) and writes every file of a
  single-process run (model.pt, last.pt, config.json, history.csv, loss.png); the other ranks
  write nothing. rank 0 first tells the others whether the folder can be used, so a refused run
  fails with one message on every rank instead of hanging. last.pt holds the single-process keys
  plus `world_size` and `generators` (every rank's shuffling state, in rank order): --resume
  needs the same number of processes and continues every rank's data and shuffling; a plain
  `ikmdn train --resume` refuses such a run. model.pt's metrics gain `world_size`.

A failure on one rank after the start (a full disk on rank 0, a callback that raises on one rank)
leaves the others waiting in their next collective until torchrun stops them.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ikmdn.arms import Arm
from ikmdn.checkpoint import CHECKPOINT_NAME, Checkpoint, read_resume_state, restore_trainer
from ikmdn.cli._base import SEED, THREADS, hidden_widths, positive
from ikmdn.cli.arm_options import arm_options, chosen_arm, model_options
from ikmdn.data import ArmStream, Dataset
from ikmdn.errors import IKMDNError
from ikmdn.mdn import ConditionalDensity
from ikmdn.outdir import run_folder, write_atomically
from ikmdn.train import (
    LAST_NAME,
    RUN_FILES,
    EpochRecord,
    ProgressCallback,
    TrainConfig,
    Trainer,
    _device,
    _Progress,
    _run,
    _stopped_by_signals,
    build_model,
    default_config,
    torch_threads,
    validation_size,
    with_joint_order,
)
from ikmdn.untrusted import short

BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class RankStream(ArmStream):
    """ArmStream for one rank: rank 0's training chunks are the plain ArmStream's, rank r > 0 adds
    r to every training chunk's key (its own pairs); the validation set is the same for all."""

    rank: int = 0

    def _draw(self, n: int, key: list[int]) -> Dataset:
        if self.rank and key[0] == 1:  # key [1, epoch, chunk]: training; [0]: validation
            key = [*key, self.rank]
        return super()._draw(n, key)


def rank_seed(seed: int, rank: int) -> int:
    """The shuffling seed of a rank: seed itself for rank 0 (the single-process run's), one drawn
    from (seed, rank) for the others."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, 2, rank]).generate_state(1, np.uint64)[0] >> 1)


class _LossOf(nn.Module):
    """model.loss(x, y) as a forward pass, so that DDP's backward all-reduces the gradients."""

    def __init__(self, model: ConditionalDensity):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, y)


# The buffers (normalisation) never change during a step: no broadcast before each forward pass
# (torch >= 2.13 names the option forward_sync_buffers; broadcast_buffers before).
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def _comm_device() -> torch.device:
    """Where small collective tensors live: the rank's GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class DistributedTrainer(Trainer):
    """Trainer for one rank of a process group (see the module docstring).

    shard_batches (a test hook): every rank streams the single-process data with the
    single-process generator and keeps rows rank::world of each config.batch_size batch, so that
    N ranks take the single-process run's steps (up to rounding in the gradient average).
    """

    def __init__(self, model: ConditionalDensity, source: ArmStream, val: Dataset, config: TrainConfig,
                 shard_batches: bool = False):
        super().__init__(model, source, val, config)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.shard_batches = shard_batches
        if not shard_batches:
            self.generator.manual_seed(rank_seed(config.seed, self.rank))
        self.comm = _comm_device()
        with torch.no_grad():  # rank 0's normalisation everywhere (DDP broadcasts the weights)
            for buffer in model.buffers():
                if buffer.is_floating_point():
                    dist.broadcast(buffer, src=0)
        ids = [torch.cuda.current_device()] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_LossOf(model), device_ids=ids, **_NO_BUFFER_SYNC)
        self.generators: list[torch.Tensor] | None = None  # every rank's, at the last epoch's end

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.shard_batches:
            idx = idx[self.rank::self.world]
        return self.ddp(x[idx], y[idx])

    def _train_epoch(self, epoch: int) -> float:
        value = torch.tensor([super()._train_epoch(epoch)], dtype=torch.float64, device=self.comm)
        dist.all_reduce(value)
        return float(value) / self.world

    def _validate(self) -> float:
        value = torch.tensor([super()._validate()], dtype=torch.float64, device=self.comm)
        dist.broadcast(value, src=0)
        return float(value)

    def _gather_generators(self) -> list[torch.Tensor]:
        mine = self.generator.get_state().to(self.comm)
        states = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(states, mine)
        return [s.cpu() for s in states]

    def fit(self, on_epoch=None, on_best=None, on_epoch_end=None) -> list[EpochRecord]:
        """Trainer.fit on every rank; the ranks' generator states are gathered at each epoch's
        end, before on_epoch_end (which saves last.pt on rank 0)."""
        def end_epoch(trainer: Trainer) -> None:
            self.generators = self._gather_generators()
            if on_epoch_end:
                on_epoch_end(trainer)

        return super().fit(on_epoch, on_best, end_epoch)

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "world_size": self.world}
        if self.generators is not None:
            state["generators"] = list(self.generators)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        generators = state.get("generators")
        if generators is None:  # a single-process run's last.pt: its generator is rank 0's
            if self.world != 1:
                raise IKMDNError(f"it holds no generator states for {self.world} processes")
            return
        if not (isinstance(generators, list) and len(generators) == self.world and all(
                isinstance(g, torch.Tensor) and g.dtype == torch.uint8 and g.dim() == 1
                for g in generators)):
            raise IKMDNError(f"generators must be {self.world} torch.Generator states (1-D uint8 "
                             "tensors), one per rank")
        self.generator.set_state(generators[self.rank])
        self.generators = list(generators)


# -- setting up a rank ---------------------------------------------------------------------------
def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise IKMDNError(f"backend must be one of {', '.join(BACKENDS)}, got {short(backend)}")
    if not dist.is_available():
        raise IKMDNError("this PyTorch build has no torch.distributed")
    if backend == "gloo" and not dist.is_gloo_available():
        raise IKMDNError("this PyTorch build has no gloo backend")
    if backend == "nccl" and not dist.is_nccl_available():
        raise IKMDNError("this PyTorch build has no nccl backend (it needs a CUDA build); "
                         "use --backend gloo")


def _world_size() -> int:
    if dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _check_device(device: str, backend: str) -> None:
    """device fits the backend; with several processes, --device cuda means cuda:LOCAL_RANK."""
    _device(device)
    cuda = device.startswith("cuda")
    if backend == "nccl" and not cuda:
        raise IKMDNError(f"--backend nccl needs --device cuda, got {device}")
    if cuda and device != "cuda" and _world_size() > 1:
        raise IKMDNError(f"give --device cuda with several processes (rank r uses GPU "
                         f"cuda:LOCAL_RANK), not {device}")


def _select_gpu(device: str) -> None:
    """With --device cuda, make GPU LOCAL_RANK this process's current one."""
    if device != "cuda":
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise IKMDNError(f"LOCAL_RANK {local} but torch sees {torch.cuda.device_count()} CUDA "
                         "device(s): start at most one process per GPU")
    torch.cuda.set_device(local)


@contextmanager
def _process_group(backend: str) -> Iterator[None]:
    """The group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), or one already
    initialised (kept), or, without a launcher, a group of this one process."""
    if dist.is_initialized():
        yield
        return
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def _told_to_all() -> Iterator[None]:
    """On rank 0: the other ranks learn (_wait_for_rank0) whether the block succeeded, and with
    its error message if not."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, IKMDNError):
            outcome = [(str(exc), exc.exit_code)]
        else:
            outcome = [(f"rank 0 failed to start: {type(exc).__name__} {short(str(exc), 200)}", 1)]
        dist.broadcast_object_list(outcome, src=0, device=_comm_device())
        raise
    dist.broadcast_object_list([None], src=0, device=_comm_device())


def _wait_for_rank0() -> None:
    """On ranks > 0: rank 0's outcome of _told_to_all, raised here as the same error."""
    outcome: list[Any] = [None]
    dist.broadcast_object_list(outcome, src=0, device=_comm_device())
    if outcome[0] is not None:
        message, code = outcome[0]
        error = IKMDNError(message)
        error.exit_code = code
        raise error


def _check_world(state: dict[str, Any], world: int, path: Path) -> None:
    saved = state.get("world_size", 1)
    if type(saved) is not int or saved != world:
        raise IKMDNError(f"cannot resume: {path} is a run of {short(saved)} process(es), this "
                         f"launch has {world}; resume with torchrun --nproc-per-node "
                         f"{short(saved)} (each rank's data and shuffling depend on it)")


def _trainer(config: TrainConfig, arm: Arm, shard_batches: bool) -> DistributedTrainer:
    stream = ArmStream(arm, config.samples, config.seed, resample=config.resample)
    rank = dist.get_rank()
    source = stream if shard_batches or rank == 0 else RankStream(
        arm, config.samples, config.seed, resample=config.resample, rank=rank)
    return DistributedTrainer(build_model(arm, config), source,
                              stream.validation(validation_size(config)), config, shard_batches)


def default_backend(device: str) -> str:
    """nccl for a GPU run, gloo for a CPU one."""
    return "nccl" if device.startswith("cuda") else "gloo"


def train_distributed(config: TrainConfig | None, out_dir: str | Path, *, force: bool = False,
                      resume: bool = False, backend: str | None = None,
                      on_epoch: ProgressCallback | None = None, threads: int | None = None,
                      shard_batches: bool = False) -> Checkpoint | None:
    """Run in every process of a torchrun launch: train config (None with resume=True: continue
    the run in out_dir from its last.pt) with DDP, see the module docstring.

    Returns the final Checkpoint on rank 0 (as ikmdn.train.train_run), None on the others.
    backend: gloo or nccl (None: nccl for a cuda device, else gloo). on_epoch is called on every
    rank with the same record (its seconds aside). Without torchrun's environment (RANK,
    WORLD_SIZE, ...) and without an initialised process group, it runs as a group of one.
    shard_batches: a test hook (see DistributedTrainer)."""
    if (config is None) != resume:
        raise IKMDNError("give a training config to start a run, or resume=True (and no config) "
                         "to continue one")
    path = Path(out_dir) / LAST_NAME
    if resume:  # the settings are the run's own; every rank reads them again below
        if not path.is_file():
            raise IKMDNError(f"cannot resume: {path} does not exist (was {out_dir} made by ikmdn "
                             "train?)")
        device = read_resume_state(path)[1].device
    else:
        device = config.device
    _device(device)  # a device this machine lacks is named before any backend
    backend = backend or default_backend(device)
    _check_backend(backend)
    _check_device(device, backend)
    _select_gpu(device)
    with _process_group(backend):
        return _train(config, Path(out_dir), force, resume, on_epoch, threads, shard_batches)


def _train(config: TrainConfig | None, out_dir: Path, force: bool, resume: bool,
           on_epoch: ProgressCallback | None, threads: int | None,
           shard_batches: bool) -> Checkpoint | None:
    rank, world = dist.get_rank(), dist.get_world_size()
    command = f"torchrun --nproc-per-node {world} -m ikmdn.train_distributed"
    path = out_dir / LAST_NAME
    state: dict[str, Any] = {}
    with ExitStack() as stack:
        progress, out = _Progress(), out_dir
        if rank == 0:
            with _told_to_all():
                out = stack.enter_context(run_folder(
                    out_dir, RUN_FILES, f"ikmdn.train_distributed ({world} processes)",
                    force=force, resume=resume, markers=(CHECKPOINT_NAME, LAST_NAME)))
                progress = stack.enter_context(_stopped_by_signals(out, resume, command))
                if resume:
                    state, config = read_resume_state(path)
                    _check_world(state, world, path)
        else:
            _wait_for_rank0()
            if resume:  # checked by rank 0, which holds the folder and writes nothing before
                state, config = read_resume_state(path)  # every rank has taken its first step
        assert config is not None  # resume set it above
        if resume:
            _check_device(config.device, dist.get_backend())
        else:  # every rank finds an autoregressive model's joint order (seeded: the same, and
            # an error is raised on every rank alike); rank 0's is checked against the others
            config = with_joint_order(config)
            found = [config.joint_order]
            dist.broadcast_object_list(found, src=0, device=_comm_device())
            if found[0] != config.joint_order:
                raise IKMDNError(f"rank {rank} found the joint order {config.joint_order}, rank 0 "
                                 f"{found[0]}: give --joint-order")
        with torch_threads(threads):
            arm = config.build_arm()
            trainer = _trainer(config, arm, shard_batches)
            if resume:
                restore_trainer(trainer, state, path)
                progress.saved = len(trainer.history)
            if rank != 0:
                trainer.fit(on_epoch=on_epoch)
                dist.barrier()  # every rank ends once rank 0 has written the final model.pt
                return None
            if not resume:
                text = json.dumps(config.to_dict(), indent=2) + "\n"
                write_atomically(out / "config.json", lambda tmp: tmp.write_text(text))
            checkpoint = _run(trainer, arm, out, on_epoch, progress,
                              extra_metrics={"world_size": world})
            dist.barrier()
            return checkpoint


# -- command line ----------------------------------------------------------------------------------
def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@arm_options
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder (written by rank 0 only).")
@click.option("--samples", type=int, callback=positive,
              help="Training pairs per epoch and rank.")
@click.option("--components", type=int, callback=positive, help="Mixture components K.")
@click.option("--epochs", type=int, callback=positive, help="Passes over the data.")
@click.option("--batch-size", type=int, callback=positive,
              help="Minibatch size per rank (the global batch is N times larger).")
@click.option("--lr", type=float, callback=positive,
              help="Peak learning rate (Adam; not scaled with N).")
@click.option("--hidden", callback=hidden_widths, help="Hidden widths, e.g. 128,128,128.")
@click.option("--seed", type=SEED,
              help="Seed for data, initialisation, shuffling.")
@model_options
@click.option("--device", help="cpu, or cuda (rank r uses cuda:LOCAL_RANK) [default: cpu].")
@click.option("--backend", type=click.Choice(BACKENDS),
              help="torch.distributed backend [default: nccl for cuda, gloo for cpu].")
@click.option("--threads", type=THREADS,
              help="torch CPU threads per rank [default: torch's; 1 under torchrun].")
@click.option("--force", is_flag=True, help="Start over in a used --out folder (as ikmdn train).")
@click.option("--resume", is_flag=True, help="Continue the run in --out (same number of processes).")
@click.pass_context
def main(ctx, arm_name, urdf, tip, base, tool, lock, name, out_dir, samples, components, epochs,
         batch_size, lr, hidden, seed, kind, joint_order, device, backend, threads, force, resume):
    """Train a model with DistributedDataParallel; start it with torchrun.

    Example: torchrun --nproc-per-node 2 -m ikmdn.train_distributed --arm bishop --out runs/ddp
    """
    config = None
    if resume:
        given = [option for option, value in (("--arm", arm_name), ("--urdf", urdf),
                                              ("--samples", samples), ("--components", components),
                                              ("--epochs", epochs), ("--batch-size", batch_size),
                                              ("--lr", lr), ("--hidden", hidden), ("--seed", seed),
                                              ("--model", kind), ("--joint-order", joint_order),
                                              ("--device", device)) if value is not None]
        if given:
            raise click.UsageError(f"--resume continues with the run's own settings; drop "
                                   f"{', '.join(given)}")
    try:
        if not resume:
            arm = chosen_arm(arm_name, urdf, tip, base, tool, lock, name)
            config = default_config(arm, samples=samples, components=components, epochs=epochs,
                                    batch_size=batch_size, lr=lr, hidden=hidden, seed=seed,
                                    device=device, kind=kind, joint_order=joint_order)
        first = _rank() == 0

        def report(r: EpochRecord) -> None:
            if first:
                click.echo(f"epoch {r.epoch}: loss {r.train_loss:.3f}, validation NLL "
                           f"{r.val_nll:.3f} ({r.seconds:.1f} s)", err=True)

        checkpoint = train_distributed(config, out_dir, force=force, resume=resume,
                                       backend=backend, on_epoch=report, threads=threads)
    except (IKMDNError, OSError) as exc:  # one line (exit 2 bad input, 1 failed job), said once
        code = exc.exit_code if isinstance(exc, IKMDNError) else 2
        if _rank() != 0:
            ctx.exit(code)
        message = str(exc) if isinstance(exc, IKMDNError) else \
            f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        error = click.ClickException(message)
        error.exit_code = code
        raise error from None
    if checkpoint is not None:
        m = checkpoint.metrics
        n = m["world_size"]
        click.echo(f"wrote {shlex.quote(str(out_dir))}/model.pt ({n} process{'es' * (n != 1)}): "
                   f"validation NLL {m['val_nll']:.3f} (epoch {m['epoch']}), best-mode RMS error "
                   f"{m['best_mode_rms']:.2e}, min-over-modes {m['min_over_modes_rms']:.2e}, "
                   f"{m['train_seconds']:.0f} s")


if __name__ == "__main__":
    main()
