"""Data-parallel training (ikmdn.train_distributed): 2 CPU processes with gloo.

The ranks are started by torch.multiprocessing (spawn) around a file-store process group, the way
torchrun starts them around its own; each runs ikmdn.train_distributed's command or library call
with an audit hook that records every file it creates, writes, renames or removes in the run
folder, so that "only rank 0 writes" is checked on the file system calls themselves.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("this torch build has no torch.distributed with gloo", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

from ikmdn.errors import IKMDNError  # noqa: E402
from ikmdn.train import (  # noqa: E402
    LAST_NAME,
    RUN_FILES,
    TrainConfig,
    build_model,
    load_checkpoint,
    resume_run,
    train_run,
)
from ikmdn.train_distributed import train_distributed  # noqa: E402

# Bishop's arm, tiny: 1,024 pairs per rank and epoch in batches of 128 = 8 steps per epoch.
TINY = dict(arm="bishop", samples=1024, epochs=4, hidden=(16,), components=2, batch_size=128)
TINY_ARGS = ["--arm", "bishop", "--samples", "1024", "--epochs", "4", "--hidden", "16",
             "--components", "2", "--batch-size", "128"]
WRITES = ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate", "os.chmod")


class Stop(Exception):
    """Raised by an on_epoch callback to cut a run short, as an interruption would."""


def _worker(rank: int, world: int, store: str, out: str, logs: str, job: str,
            options: dict) -> None:
    """One rank: join the group, run job, write the run folder's file events of this rank."""
    torch.set_num_threads(1)
    events: list[str] = []
    inside = os.path.realpath(out)

    def audit(event, args):
        if event == "open" and args and isinstance(args[0], (str, os.PathLike)):
            path, mode, flags = args[0], args[1], args[2]
            writing = (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and os.path.realpath(path).startswith(inside):
                events.append(f"open {path}")
        elif event in WRITES and args and isinstance(args[0], (str, os.PathLike)):
            if any(isinstance(a, (str, os.PathLike)) and os.path.realpath(a).startswith(inside)
                   for a in args[:2]):
                events.append(f"{event} {args[0]}")

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    sys.addaudithook(audit)
    try:
        if job == "cli":
            from ikmdn.train_distributed import main

            main([*options["args"], "--out", out], standalone_mode=False)
        else:
            def stop(record):
                if record.epoch == options.get("stop_after"):
                    raise Stop

            config = TrainConfig(**options["config"]) if "config" in options else None
            try:
                train_distributed(config, out, resume=config is None, on_epoch=stop,
                                  shard_batches=options.get("shard_batches", False))
            except Stop:
                pass
    finally:
        Path(logs, f"rank{rank}.json").write_text(json.dumps(events))
        dist.destroy_process_group()
    # An audit hook cannot be removed, and one left in place aborts ~1 in 7 interpreter shutdowns
    # of a process that used gloo ("terminate called without an active exception", after the
    # last Python frame; never seen in 20 runs without the hook): end this rank without them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(tmp: Path, out: Path, job: str, world: int = 2, **options) -> list[list[str]]:
    """Run job on world spawned ranks; each rank's file events in out."""
    logs = tmp / f"logs-{out.name}-{job}"
    logs.mkdir()
    store = tmp / f"store-{out.name}-{job}"
    mp.spawn(_worker, args=(world, str(store), str(out), str(logs), job, options),
             nprocs=world, join=True)
    return [json.loads((logs / f"rank{r}.json").read_text()) for r in range(world)]


def state(folder: Path) -> dict:
    return torch.load(folder / LAST_NAME, weights_only=True)


def flat(state_dict: dict) -> torch.Tensor:
    return torch.cat([v.flatten().double() for v in state_dict.values()])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """A 4-epoch run of 2 ranks through the command: (folder, file events of rank 0 and 1)."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "run"
    return out, run_ranks(tmp, out, "cli", args=TINY_ARGS)


def test_two_ranks_train_and_only_rank0_writes(two_ranks):
    out, (events0, events1) = two_ranks
    assert {p.name for p in out.iterdir()} == set(RUN_FILES)  # no lock, no temporary left
    checkpoint = load_checkpoint(out)
    assert checkpoint.config == TrainConfig(**TINY)
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == checkpoint.config
    assert checkpoint.metrics["world_size"] == 2
    assert events1 == [], f"rank 1 touched the run folder: {events1[:5]}"
    for name in RUN_FILES:  # rank 0 wrote each file (most through a temporary beside it)
        assert any(name in e for e in events0), name
    # the loss trend goes down: every epoch's training loss and validation NLL below the first's
    history = json.loads(state(out)["history"])
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert all(r["train_loss"] < history[0]["train_loss"] for r in history[1:])
    assert history[-1]["val_nll"] < history[0]["val_nll"] - 0.2
    saved = state(out)
    assert saved["world_size"] == 2 and len(saved["generators"]) == 2
    assert not torch.equal(saved["generators"][0], saved["generators"][1])  # each rank shuffles


def test_resume_continues_a_two_rank_run_bit_for_bit(two_ranks, tmp_path):
    full, _ = two_ranks
    cut = tmp_path / "cut"
    run_ranks(tmp_path, cut, "library", config=TINY, stop_after=2)
    assert len(json.loads(state(cut)["history"])) == 2
    events = run_ranks(tmp_path, cut, "resume")
    assert events[1] == []
    resumed, reference = state(cut), state(full)
    assert [r["epoch"] for r in json.loads(resumed["history"])] == [1, 2, 3, 4]
    # gloo sums 2 ranks' gradients in a fixed order: a resumed run repeats the uncut one exactly,
    # which it could not without each rank's own generator state back (rank 1's included).
    assert torch.equal(flat(resumed["state_dict"]), flat(reference["state_dict"]))
    for a, b in zip(resumed["generators"], reference["generators"], strict=True):
        assert torch.equal(a, b)
    losses = [(r["train_loss"], r["val_nll"]) for r in json.loads(resumed["history"])]
    assert losses == [(r["train_loss"], r["val_nll"]) for r in json.loads(reference["history"])]
    # a single-process resume refuses it, naming the command that continues it
    with pytest.raises(IKMDNError, match="torchrun --nproc-per-node 2 -m ikmdn.train_distributed"):
        resume_run(cut)


# Tolerance of the 2-rank vs 1-rank comparison: the largest difference of any weight after 16 Adam
# steps (peak learning rate 3e-3). Both runs compute the same gradient up to float32 rounding (the
# mean of two 64-row means instead of one 128-row mean: ~1e-7 relative); Adam divides by each
# weight's running RMS, which can enlarge rounding where a gradient is nearly zero, but a step
# moves a weight by at most ~lr. Measured on this machine: 6e-8, while the weights move by up to
# 2.7e-2 and a 2-rank run on data of its own ends 2.5e-2 away. 1e-5 leaves a >100x margin for
# other CPUs and BLAS builds and still misses any other batch (or a missing all-reduce) by ~1,000x.
PARITY_ATOL = 1e-5


def test_two_ranks_with_half_batches_match_one_rank(tmp_path):
    # The test hook shard_batches: both ranks stream the single-process data and shuffle it alike;
    # rank r keeps rows r::2 of each 128-row batch, so DDP's average is the 128-row gradient.
    config = TrainConfig(**dict(TINY, epochs=2))  # 2 x 8 steps
    train_run(config, tmp_path / "single")
    run_ranks(tmp_path, tmp_path / "sharded", "library", config=config.to_dict(), shard_batches=True)
    one, two = state(tmp_path / "single")["state_dict"], state(tmp_path / "sharded")["state_dict"]
    initial = dict(build_model(config.build_arm(), config).named_parameters())
    moved = max((one[k] - v).abs().max().item() for k, v in initial.items())
    difference = (flat(one) - flat(two)).abs().max().item()
    assert moved > 1e-3, moved  # the steps did move the weights, by far more than the tolerance
    assert difference < PARITY_ATOL, difference


def test_one_rank_is_the_single_process_run_and_two_see_more(two_ranks, tmp_path):
    single = train_run(TrainConfig(**TINY), tmp_path / "single")
    one = train_distributed(TrainConfig(**TINY), tmp_path / "one")  # a group of one, no launcher
    assert not dist.is_initialized()
    assert torch.equal(flat(single.model.state_dict()), flat(one.model.state_dict()))
    assert json.loads(state(tmp_path / "one")["history"])[-1]["val_nll"] == \
        json.loads(state(tmp_path / "single")["history"])[-1]["val_nll"]
    # 2 ranks: rank 0 streams the single-process pairs, rank 1 pairs of its own, so the weights
    # differ, and twice the data per step does no worse on the same validation set.
    two = load_checkpoint(two_ranks[0])
    assert not torch.equal(flat(single.model.state_dict()), flat(two.model.state_dict()))
    assert two.metrics["val_nll"] < single.metrics["val_nll"] + 0.05


def test_two_ranks_train_an_autoregressive_model_in_rank0s_order(tmp_path):
    """Rank 0 finds the joint order and every rank trains the same factors with it."""
    from ikmdn.joint_order import find_joint_order

    out = tmp_path / "ar"
    run_ranks(tmp_path, out, "cli", args=["--arm", "planar3", "--model", "autoregressive",
                                          "--samples", "1024", "--epochs", "1", "--hidden", "16",
                                          "--components", "4", "--batch-size", "128"])
    checkpoint = load_checkpoint(out)
    assert checkpoint.model.config.kind == "autoregressive"
    assert checkpoint.config.joint_order == find_joint_order(checkpoint.arm, checkpoint.config.seed)
    assert checkpoint.model.config.joint_order == checkpoint.config.joint_order


def test_rank_streams():
    from ikmdn.arms import get_arm
    from ikmdn.data import ArmStream
    from ikmdn.train_distributed import RankStream, rank_seed

    arm = get_arm("planar2")
    plain = ArmStream(arm, 3000, seed=5, chunk=1000, resample=True)
    ranks = [RankStream(arm, 3000, seed=5, chunk=1000, resample=True, rank=r) for r in range(3)]
    for epoch in (1, 2):
        outputs = [torch.as_tensor(next(s.chunks(epoch)).outputs) for s in (plain, *ranks)]
        assert torch.equal(outputs[0], outputs[1])  # rank 0 = the single-process stream
        assert not torch.equal(outputs[1], outputs[2]) and not torch.equal(outputs[2], outputs[3])
    for stream in ranks:  # one validation set for all
        assert (stream.validation(100).outputs == plain.validation(100).outputs).all()
    assert rank_seed(7, 0) == 7 and len({rank_seed(7, r) for r in range(8)}) == 8


def test_usage_errors(tmp_path):
    from click.testing import CliRunner

    from ikmdn.train_distributed import main

    result = CliRunner().invoke(main, ["--out", str(tmp_path / "r"), "--resume", "--samples", "5"])
    assert result.exit_code == 2 and "drop --samples" in result.output
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "none"), "--resume"])
    assert result.exit_code == 2 and "cannot resume" in result.output
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "r"), "--backend", "nccl"])
    assert result.exit_code == 2
    assert not (tmp_path / "r").exists()
