"""Adversarial tests of training runs and report folders (issue 11), organised by class.

Class 3: runs are single-writer (a lock on the run folder, --force clears the old run's own files,
no temporary left by an interrupted write, last.pt written before the progress callback).
Class 5: sizes checked against limits before anything is allocated (train and evaluate).
Class 6: one-line errors instead of tracebacks (no torch, --device meta, seeds beyond 2**32 - 1).
Class 7: a failed run leaves no empty folder it created.

Concurrency and SIGTERM run a real `ikmdn train` in a subprocess; everything else runs in-process
with CliRunner. Tests that would hang on code without the size checks run under a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_refused, invoke

from ikmdn.errors import IKMDNError

ROOT = Path(__file__).resolve().parents[2]
UR5 = ROOT / "exported_models" / "ur5.onnx"
BISHOP = ROOT / "exported_models" / "bishop.onnx"
RUN_FILES = {"model.pt", "last.pt", "config.json", "history.csv", "loss.png"}
# A tiny training that is still mid-run seconds after it starts (epochs of ~20-50 ms each).
LONG_TINY = ["--samples", "2000", "--epochs", "2000", "--hidden", "16", "--components", "2"]
TINY = ["--samples", "2000", "--epochs", "2", "--hidden", "8", "--components", "2"]


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging or swapping) if the block runs longer than seconds."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the size was not checked up front")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def leftovers(folder: Path) -> list[str]:
    """Temporary and lock files in folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name == ".lock")


def start_ikmdn(*args: str) -> subprocess.Popen:
    """`ikmdn ARGS` in a fresh interpreter (this checkout first on sys.path); its pid is the job's."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    code = "import sys; from ikmdn.cli import main; sys.argv[0] = 'ikmdn'; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the job ended before {path.name} appeared: {process.communicate()}")
        if time.monotonic() > end:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def last_epochs(run: Path) -> int:
    """Epochs recorded in run/last.pt."""
    import torch

    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    return len(json.loads(state["history"]))


# -- class 3: runs are single-writer --------------------------------------------------------------

def test_second_train_is_refused_and_sigterm_stops_cleanly(tmp_path):
    """A running `ikmdn train --out R` holds R: a second train (with --force too) and a --resume
    fail at once naming its pid and change nothing; SIGTERM then ends it with exit 1, a one-line
    message saying how to resume, a whole last.pt of the epochs it names and no temporary/lock."""
    run = tmp_path / "R"
    job = start_ikmdn("train", "--out", str(run), *LONG_TINY)
    try:
        wait_for(run / "history.csv", job)
        config = (run / "config.json").read_text()
        assert f"pid {job.pid}" in (run / ".lock").read_text()
        for extra in ([], ["--force"]):
            started = time.monotonic()
            assert_refused(invoke("train", "--out", run, *TINY, *extra), f"--out {run}",
                           "in use by another ikmdn job", f"pid {job.pid}", "ikmdn train")
            assert time.monotonic() - started < 10  # at once, not after waiting
        assert_refused(invoke("train", "--out", run, "--resume"), "in use", f"pid {job.pid}")
        assert (run / "config.json").read_text() == config  # the refused jobs touched nothing
        assert (run / "model.pt").is_file() and (run / "last.pt").is_file()
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 1, stderr
    assert "Traceback" not in stderr
    last = stderr.rstrip().splitlines()[-1]
    match = re.fullmatch(r"Error: interrupted by SIGTERM after epoch (\d+) of 2000 \(saved in "
                         r"last\.pt\): resume with ikmdn train --out (\S+) --resume", last)
    assert match, last
    assert match.group(2) == str(run)
    assert last_epochs(run) == int(match.group(1)) >= 1
    assert leftovers(run) == []
    assert {p.name for p in run.iterdir()} == RUN_FILES


def test_lock_of_a_killed_job_does_not_block(tmp_path):
    """flock dies with its holder: after SIGKILL the stale .lock is simply taken again."""
    run = tmp_path / "R"
    run.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    code = ("import sys, time; from ikmdn.outdir import RunLock; RunLock(sys.argv[1], 'holder job')"
            ".acquire(); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_refused(invoke("train", "--out", run, *TINY), f"pid {holder.pid}, holder job")
        holder.kill()
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.stdout.close()
    assert (run / ".lock").exists()  # SIGKILL leaves the file, not the lock
    result = invoke("train", "--out", run, *TINY)
    assert result.exit_code == 0, (result.output, result.exception)
    assert {p.name for p in run.iterdir()} == RUN_FILES  # .lock removed on a normal release


def test_force_clears_the_old_run_and_keeps_other_files(tmp_path, monkeypatch):
    """--force over an old bishop run, interrupted (SIGINT) in the new run's epoch 1: nothing of
    the old run is left to be 'resumed' as the old arm; the user's own files stay."""
    from ikmdn import train as train_module

    run = tmp_path / "R"
    result = invoke("train", "--arm", "bishop", "--out", run, *TINY)
    assert result.exit_code == 0, result.output
    (run / "notes.txt").write_text("keep me")
    (run / ".last.pt.stale1.tmp").write_bytes(b"half a checkpoint a SIGKILL left")
    (run / ".notes.txt.x.tmp").write_text("not ours")

    def interrupted(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module.Trainer, "_train_epoch", interrupted)
    result = invoke("train", "--arm", "planar2", "--out", run, *TINY, "--force")
    assert_refused(result, "interrupted by SIGINT before the first epoch finished",
                   f"ikmdn train --out {run} --force", code=1)
    assert sorted(p.name for p in run.iterdir()) == [".notes.txt.x.tmp", "config.json", "notes.txt"]
    assert json.loads((run / "config.json").read_text())["arm"] == "planar2"
    assert (run / "notes.txt").read_text() == "keep me"
    monkeypatch.undo()
    assert_refused(invoke("train", "--out", run, "--resume"), "cannot resume")


def test_force_refuses_a_folder_named_like_a_run_file(tmp_path):
    run = tmp_path / "R"
    (run / "model.pt").mkdir(parents=True)
    assert_refused(invoke("train", "--out", run, *TINY, "--force"), "model.pt is a folder")
    assert [p.name for p in run.iterdir()] == ["model.pt"]


def test_sigterm_during_a_checkpoint_write_leaves_no_temporary(tmp_path, monkeypatch):
    """SIGTERM arrives in the middle of epoch 2's last.pt write: the temporary is removed, last.pt
    still holds epoch 1 whole, and the run resumes from it."""
    import torch

    from ikmdn.train import TrainConfig, TrainingInterrupted, resume_run, train_run

    save, calls = torch.save, []

    def save_then_signal(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        if Path(f).name.startswith(".last.pt."):
            calls.append(f)
            if len(calls) == 2:
                assert Path(f).stat().st_size > 0
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises here, inside the write

    monkeypatch.setattr(torch, "save", save_then_signal)
    run = tmp_path / "R"
    config = TrainConfig(arm="bishop", samples=2000, epochs=3, hidden=(8,), components=2)
    with pytest.raises(TrainingInterrupted, match=re.escape(
            f"interrupted by SIGTERM after epoch 1 of 3 (saved in last.pt): resume with "
            f"ikmdn train --out {run} --resume")) as caught:
        train_run(config, run)
    assert caught.value.exit_code == 1
    assert leftovers(run) == []
    assert last_epochs(run) == 1
    monkeypatch.undo()
    assert len(resume_run(run).metrics) > 0
    assert last_epochs(run) == 3 and leftovers(run) == []


def test_last_pt_is_written_before_the_progress_callback(tmp_path):
    """A failure inside epoch 1's progress callback loses nothing: last.pt holds epoch 1."""
    from ikmdn.train import TrainConfig, resume_run, train_run

    def fail(record):
        raise RuntimeError("progress display died")

    run = tmp_path / "R"
    config = TrainConfig(arm="bishop", samples=2000, epochs=2, hidden=(8,), components=2)
    with pytest.raises(RuntimeError, match="progress display died"):
        train_run(config, run, on_epoch=fail)
    assert last_epochs(run) == 1
    assert leftovers(run) == []
    resume_run(run)
    assert last_epochs(run) == 2


# -- class 5: sizes are checked before anything is allocated ---------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["--components", "1000000000"], ["components (--components)", "1 to 1,024"]),
    (["--hidden", "100000000"], ["hidden width (--hidden)", "1 to 16,384"]),
    (["--hidden", ",".join(["8"] * 17)], ["17 layers", "at most 16"]),
    (["--hidden", "16384,16384,16384"], ["weights", "at most 100,000,000"]),
    (["--samples", str(10**20)], ["samples (--samples)", "1 to 1,000,000,000"]),
    (["--epochs", "10001"], ["epochs (--epochs)", "1 to 10,000"]),
    (["--samples", "2000", "--batch-size", "5000"], ["batch_size (--batch-size) 5,000",
                                                     "larger than samples"]),
    (["--samples", "1000000", "--hidden", ",".join(["2100"] * 16)],
     ["8,192 rows", "activations", "--hidden"]),   # validation runs in chunks of 8,192 rows
])
def test_train_sizes_are_capped(tmp_path, args, fragments):
    out = tmp_path / "run"
    with deadline(60):
        assert_refused(invoke("train", "--arm", "bishop", "--out", out, *args), *fragments)
    assert not out.exists()


def test_bad_hidden_values_are_echoed_short(tmp_path):
    line = assert_refused(invoke("train", "--out", tmp_path / "run", "--hidden", "9" * 5000), "--hidden")
    assert len(line) < 200


def test_train_config_caps_apply_to_stored_configs():
    """A crafted config.json/last.pt config is held to the same limits (resume reads it)."""
    from ikmdn.train import TrainConfig

    base = TrainConfig(arm="bishop", samples=2000, hidden=(8,), components=2).to_dict()
    for key, value in (("samples", 10**20), ("components", 10**9), ("hidden", [10**8]),
                       ("hidden", [8] * 17), ("epochs", 10**6), ("batch_size", 4000),
                       ("seed", 2**64), ("device", "meta"), ("hidden", "128"),
                       ("samples", "2000"), ("epochs", True)):
        with pytest.raises(IKMDNError):
            TrainConfig.from_dict({**base, key: value})


def test_default_batch_size_follows_small_sample_counts():
    from ikmdn.train import default_config

    assert default_config("bishop", samples=100).batch_size == 100
    assert default_config("bishop", samples=100_000).batch_size == 512


def test_evaluate_samples_are_capped(tmp_path):
    out = tmp_path / "eval"
    with deadline(60):
        assert_refused(invoke("evaluate", "--model", BISHOP, "--out", out, "--samples", 10**9),
                       "--samples", "at most 10,000,000")
        line = assert_refused(invoke("evaluate", "--model", UR5, "--out", out,
                                     "--samples", 5_000_000),
                              "--samples 5,000,000 would need about", "GiB", "use at most")
    most = int(re.search(r"use at most ([\d,]+)", line).group(1).replace(",", ""))
    assert 50_000 < most < 5_000_000
    assert not out.exists()


# -- class 6: one-line errors, not tracebacks ----------------------------------------------------

@pytest.fixture
def no_torch(monkeypatch):
    """torch cannot be imported (as without the [train] extra)."""
    for name in list(sys.modules):
        if name == "torch" or name.startswith("torch.") or name in (
                "ikmdn.train", "ikmdn.checkpoint", "ikmdn.mdn", "ikmdn.export", "ikmdn.demo"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)


@pytest.mark.parametrize("args", [
    ["train", "--arm", "bishop", "--out", "{tmp}/run"],
    ["train", "--out", "{tmp}/run", "--resume"],
    ["export", "{tmp}/run", "-o", "{tmp}/m.onnx"],
    ["demo", "sinusoid", "--out", "{tmp}/run"],
])
def test_commands_that_need_torch_say_how_to_install_it(tmp_path, no_torch, args):
    result = invoke(*(a.format(tmp=tmp_path) for a in args))
    assert_refused(result, f"ikmdn {args[0]} needs PyTorch", "pip install 'ikmdn[train]' torch==")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["meta", "mps", "cuda:x", "cpu; rm -rf /"])
def test_train_refuses_devices_other_than_cpu_and_cuda(tmp_path, device):
    out = tmp_path / "run"
    assert_refused(invoke("train", "--out", out, *TINY, "--device", device),
                   "device (--device) must be cpu, cuda or cuda:N")
    assert not out.exists()


@pytest.mark.parametrize("seed", [str(2**32), str(2**64), "100000000000000000000000", "1e23"])
@pytest.mark.parametrize("command", [
    ["train", "--arm", "bishop", *TINY], ["evaluate", "--model", str(BISHOP), "--samples", "10"],
    ["demo", "sinusoid"]])
def test_seeds_beyond_32_bits_are_refused(tmp_path, command, seed):
    out = tmp_path / "out"
    with deadline(60):
        assert_refused(invoke(*command, "--out", out, "--seed", seed), "--seed")
    assert not out.exists()


def test_library_seeds_are_checked():
    from ikmdn.demo import SinusoidDemo
    from ikmdn.train import TrainConfig

    with pytest.raises(IKMDNError, match="seed"):
        TrainConfig(seed=2**64)
    with pytest.raises(IKMDNError, match="seed"):
        SinusoidDemo("post", "unused", seed=10**23)
    assert TrainConfig(seed=2**32 - 1, samples=2000).seed == 2**32 - 1


# -- class 7: failed runs leave no empty folders they created --------------------------------------

def _fail(*args, **kwargs):
    raise IKMDNError("synthetic failure after the folder was made")


def test_failed_train_removes_the_folders_it_created(tmp_path, monkeypatch):
    from ikmdn import train as train_module

    monkeypatch.setattr(train_module, "_trainer_for", _fail)
    assert_refused(invoke("train", "--out", tmp_path / "a" / "b" / "run", *TINY), "synthetic")
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "existing"
    existing.mkdir()
    assert_refused(invoke("train", "--out", existing, *TINY), "synthetic")
    assert existing.is_dir() and list(existing.iterdir()) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_missing_cuda_creates_no_folder(tmp_path):
    out = tmp_path / "run"
    assert_refused(invoke("train", "--out", out, *TINY, "--device", "cuda"), "CUDA")
    assert not out.exists()


def test_failed_evaluate_removes_the_folders_it_created(tmp_path, monkeypatch):
    from ikmdn import report

    monkeypatch.setattr(report, "make_ik_dataset", _fail)
    assert_refused(invoke("evaluate", "--model", BISHOP, "--out", tmp_path / "a" / "eval",
                          "--samples", "10"), "synthetic")
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "existing"
    existing.mkdir()
    assert_refused(invoke("evaluate", "--model", BISHOP, "--out", existing, "--samples", "10"),
                   "synthetic")
    assert existing.is_dir()


def test_failed_demo_removes_the_folder_it_created(tmp_path, monkeypatch):
    from ikmdn.demo import SinusoidDemo

    monkeypatch.setattr(SinusoidDemo, "run", _fail)
    assert_refused(invoke("demo", "sinusoid", "--out", tmp_path / "demo"), "synthetic")
    assert list(tmp_path.iterdir()) == []


def test_removed_if_failed_keeps_folders_that_hold_something(tmp_path):
    from ikmdn.outdir import removed_if_failed

    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError), removed_if_failed(out):
        out.mkdir(parents=True)
        (out / "partial.png").write_bytes(b"x")
        raise RuntimeError("late failure")
    assert (out / "partial.png").is_file()


def test_force_never_deletes_a_users_files_where_there_is_no_run(tmp_path):
    """A project folder with its own config.json and history.csv but no model.pt/last.pt is not
    an old run: --force is refused there and every file stays."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    (out / "history.csv").write_text("a,b\n")
    result = invoke("train", "--arm", "bishop", "--out", out, "--force", *TINY)
    assert_refused(result, "holds files but no earlier run", "--force only replaces a run")
    assert (out / "config.json").read_text() == '{"mine": true}'
    assert (out / "history.csv").read_text() == "a,b\n"
