"""Training: reproducibility, resume, divergence handling, streaming data, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ikmdn.arms import get_arm
from ikmdn.data import ArmStream
from ikmdn.errors import IKMDNError, JobFailedError
from ikmdn.train import (
    LAST_NAME,
    TrainConfig,
    default_config,
    load_checkpoint,
    resume_run,
    train_run,
)

TINY = dict(arm="bishop", samples=3000, epochs=3, hidden=(16, 16), components=2, batch_size=256)


def weights(checkpoint):
    return torch.cat([p.flatten() for p in checkpoint.model.state_dict().values()])


def test_same_seed_same_model(tmp_path):
    a = train_run(TrainConfig(**TINY), tmp_path / "a")
    b = train_run(TrainConfig(**TINY), tmp_path / "b")
    assert torch.equal(weights(a), weights(b))
    c = train_run(TrainConfig(**{**TINY, "seed": 1}), tmp_path / "c")
    assert not torch.equal(weights(a), weights(c))


def test_run_folder_contents(tmp_path):
    checkpoint = train_run(TrainConfig(**TINY), tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.pt", LAST_NAME, "config.json", "history.csv", "loss.png"} <= names
    assert json.loads((tmp_path / "run" / "config.json").read_text())["samples"] == 3000
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_nll") and len(rows) == 1 + TINY["epochs"]
    for key in ("val_nll", "epoch", "best_mode_rms", "min_over_modes_rms", "train_seconds"):
        assert key in checkpoint.metrics
    # model.pt holds only tensors and JSON strings: it loads with weights_only=True.
    payload = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert isinstance(payload["train_config"], str)
    loaded = load_checkpoint(tmp_path / "run")
    assert torch.equal(weights(loaded), weights(checkpoint))


def test_resume_continues_bit_for_bit(tmp_path):
    full = train_run(TrainConfig(**TINY), tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train_run(TrainConfig(**TINY), tmp_path / "cut", on_epoch=stop_after_two)
    resumed = resume_run(tmp_path / "cut")
    assert torch.equal(weights(full), weights(resumed))
    history = (tmp_path / "cut" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + TINY["epochs"]


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(IKMDNError, match="cannot resume"):
        resume_run(tmp_path)


def test_divergence_message_names_kept_epoch(tmp_path, monkeypatch):
    from ikmdn import train as train_module

    calls = {"n": 0}
    original = train_module.Trainer._validate

    def nan_on_third(self):
        calls["n"] += 1
        return float("nan") if calls["n"] == 3 else original(self)

    monkeypatch.setattr(train_module.Trainer, "_validate", nan_on_third)
    with pytest.raises(JobFailedError, match=r"epoch 3 .*best weights \(epoch [12]"):
        train_run(TrainConfig(**{**TINY, "epochs": 4}), tmp_path / "run")
    kept = load_checkpoint(tmp_path / "run")
    assert np.isfinite(kept.metrics["val_nll"])


def test_out_folder_not_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(IKMDNError, match="--force"):
        train_run(TrainConfig(**TINY), tmp_path / "run")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(IKMDNError, match="CUDA"):
        train_run(TrainConfig(**{**TINY, "device": "cuda"}), tmp_path / "run")


def test_stream_chunks_are_reproducible_and_bounded():
    arm = get_arm("planar2")
    fixed = ArmStream(arm, 10_000, seed=3, chunk=4096)
    sizes = [len(c) for c in fixed.chunks(1)]
    assert sizes == [4096, 4096, 1808]
    first, again = next(fixed.chunks(1)), next(fixed.chunks(2))
    np.testing.assert_array_equal(first.outputs, again.outputs)  # same data every epoch
    fresh = ArmStream(arm, 10_000, seed=3, chunk=4096, resample=True)
    assert not np.array_equal(next(fresh.chunks(1)).outputs, next(fresh.chunks(2)).outputs)
    for chunk in fixed.chunks(1):
        np.testing.assert_allclose(arm.residual(arm.fk(chunk.outputs), chunk.inputs), 0, atol=1e-12)
    val = fixed.validation(500)
    assert not np.isin(val.outputs[:, 0], first.outputs[:, 0]).any()


def test_default_configs_exist_for_every_preset():
    from ikmdn.arms import list_arms

    for name in list_arms():
        config = default_config(name)
        assert config.arm == name
    with pytest.raises(IKMDNError, match="bishop"):
        default_config("nope")


def test_cli_resume(tmp_path):
    from click.testing import CliRunner

    from ikmdn.cli import cli

    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--samples", "2000", "--epochs", "2", "--hidden", "16,16"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    result = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    result = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--samples", "5"])
    assert result.exit_code == 2
    assert "--resume continues with the run's own settings; drop --samples" in result.output
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "none"), "--resume"])
    assert result.exit_code == 2 and "cannot resume" in result.output


def test_full_circle_joints_get_wrapped_gaussians_unless_disabled():
    arm = get_arm("planar2")  # both joints span [-pi, pi]
    assert default_config("planar2").model_config(arm).periodic_outputs == (True, True)
    plain = default_config("planar2", wrap_joints=False).model_config(arm)
    assert plain.periodic_outputs == (False, False)
    bishop = get_arm("bishop")  # bounded joints: never wrapped
    assert default_config("bishop").model_config(bishop).periodic_outputs == (False, False)


def test_least_squares_config_has_one_component():
    assert TrainConfig(kind="least_squares", components=8).components == 1
