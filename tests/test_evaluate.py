"""`ikmdn evaluate`: metrics, figures, report.md, the least-squares comparison and bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_python, workspace_targets

from ikmdn.arms import get_arm
from ikmdn.arms.closed_form import closed_form_ik
from ikmdn.cli import cli
from ikmdn.evaluate import (
    METHODS,
    Answers,
    averaging_stats,
    error_stats,
    evaluate_solver,
    outer_reach,
    post_mse,
    rms,
)
from ikmdn.plots import nice_below
from ikmdn.report import BASELINE_FIGURES, FIGURES, METRIC_KEYS, EvaluationJob

STAT_KEYS = ("rms", "p50", "p90", "p99", "max", "post_mse")
SAMPLES = 200  # test targets per evaluation: enough for every figure, fast


@pytest.fixture(scope="module")
def least_squares_run(tmp_path_factory):
    """A tiny least-squares (Bishop baseline) run folder for the bishop arm."""
    from ikmdn.train import TrainConfig, train_run

    config = TrainConfig(arm="bishop", samples=3000, epochs=2, hidden=(16, 16),
                         kind="least_squares", seed=0)
    run_dir = tmp_path_factory.mktemp("run-bishop-ls")
    train_run(config, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def evaluated(bishop, least_squares_run, tmp_path_factory):
    """An evaluation of the tiny bishop .onnx with the least-squares baseline: (out folder, metrics)."""
    out = tmp_path_factory.mktemp("eval") / "bishop"
    job = EvaluationJob(bishop.onnx_path, out, samples=SAMPLES, seed=3, baseline=least_squares_run)
    seen = []
    metrics = job.run(on_step=seen.append)
    assert seen == job.steps
    return out, metrics


# -- metric functions --------------------------------------------------------------------------

def test_post_mse_is_rms_squared_over_coordinates():
    arm = get_arm("bishop")
    rng = np.random.default_rng(0)
    joints = arm.sample_joints(500, rng)
    targets = arm.fk(joints) + rng.normal(scale=1e-3, size=(500, 2))
    answers = Answers.of(arm, joints, targets)
    assert post_mse(arm, answers.reached, targets) == pytest.approx(rms(answers.errors) ** 2 / 2)
    stats = error_stats(arm, answers, targets)
    assert set(stats) == set(STAT_KEYS)
    assert stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert stats["rms"] == pytest.approx(rms(np.linalg.norm(answers.reached - targets, axis=1)))


def test_pose_arm_reports_position_and_orientation_separately():
    arm = get_arm("planar3")
    rng = np.random.default_rng(1)
    joints = arm.sample_joints(300, rng)
    targets = arm.fk(joints)
    targets[:, 2] += 0.01  # every hand angle off by 0.01 rad, positions exact
    stats = error_stats(arm, Answers.of(arm, joints, targets), targets)
    assert stats["position_rms"] == pytest.approx(0.0, abs=1e-12)
    assert stats["orientation_rms_deg"] == pytest.approx(np.degrees(0.01), rel=1e-6)


def test_pose_targets_error_is_the_hand_position_distance():
    arm = get_arm("ur5")
    joints = arm.sample_joints(200, np.random.default_rng(3))
    targets = arm.fk(joints)
    targets[:, :3] += [0.003, 0.0, -0.004]  # 5 mm off, orientation exact
    stats = error_stats(arm, Answers.of(arm, joints, targets), targets)
    assert stats["rms"] == stats["position_rms"] == pytest.approx(0.005)
    assert stats["orientation_rms_deg"] == pytest.approx(0.0, abs=1e-6)
    assert stats["post_mse"] == pytest.approx(0.005**2 / 3)


def test_averaging_stats_separate_true_joints_from_the_branch_average():
    arm = get_arm("bishop")
    rng = np.random.default_rng(2)
    joints = arm.sample_joints(2000, rng)
    targets = arm.fk(joints)
    reach = outer_reach(arm, n=50_000, seed=0)
    assert reach == pytest.approx(1.0, abs=1e-6)  # L1 + L2, the straight arm
    truth = averaging_stats(arm, targets, Answers.of(arm, joints, targets), reach)
    assert truth["to_nearest_branch"] == pytest.approx(0.0, abs=1e-9)
    # The least-squares answer: the midpoint of the two elbow branches (theta2 = pi).
    branches, valid = closed_form_ik(arm, targets)
    both = valid.all(axis=1)
    midpoint = branches[both].mean(axis=1)
    averaged = averaging_stats(arm, targets[both], Answers.of(arm, midpoint, targets[both]), reach)
    assert averaged["to_branch_midpoint"] == pytest.approx(0.0, abs=1e-9)
    assert averaged["midpoint_gap"] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert averaged["joint_mean"][1] == pytest.approx(np.pi)
    assert averaged["radial_margin"] == pytest.approx(0.0, abs=1e-9)  # straight arm: at the edge
    assert averaged["radial_margin_two_branch"] == pytest.approx(0.0, abs=1e-9)
    assert averaged["to_nearest_branch"] > 0.1
    assert truth["radial_margin"] > 0.03 and truth["two_branch_targets"] == both.sum()


def test_nice_below():
    assert [nice_below(v) for v in (0.7, 1.0, 3.3, 9.99, 1234.0)] == [0.5, 1.0, 2.0, 5.0, 1000.0]


# -- the evaluation's files --------------------------------------------------------------------

def test_evaluation_writes_every_file(evaluated):
    import matplotlib.image

    out, _ = evaluated
    names = {"metrics.json", "report.md", *FIGURES.values(), *BASELINE_FIGURES.values()}
    assert {p.name for p in out.iterdir()} == names
    for name in (*FIGURES.values(), *BASELINE_FIGURES.values()):
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500, name
        assert image[..., :3].std() > 0.05, f"{name} looks blank"


def test_metrics_json_has_every_key(evaluated):
    out, metrics = evaluated
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert set(METRIC_KEYS) <= set(on_disk)
    for model in (on_disk, on_disk["baseline"]):
        assert set(model["errors"]) == set(METHODS)
        for stats in model["errors"].values():
            assert set(STAT_KEYS) <= set(stats) and all(np.isfinite(v) for v in stats.values())
        assert 0 <= model["coverage"]["coverage"] <= 1
        assert 0 <= model["reachable"] <= 1
    assert on_disk["test_set"]["targets"] == SAMPLES
    assert on_disk["model"]["kind"] == "mdn"
    assert on_disk["baseline"]["model"]["kind"] == "least_squares"
    assert on_disk["solutions_per_target"] >= 0
    assert set(on_disk["within_limits"]) == {"unrefined_modes", "refined_candidates"}
    assert on_disk["throughput"]["refined_targets_per_s"] > 0
    assert on_disk["throughput"]["closed_form_targets_per_s"] > 0
    averaging = on_disk["averaging"]
    assert set(averaging) == {"reach", "true_joints", "model_best_mode", "baseline"}
    assert averaging["true_joints"]["to_nearest_branch"] == pytest.approx(0.0, abs=1e-9)
    # The least-squares network has one answer per target: min over modes is the best mode.
    base = on_disk["baseline"]["errors"]
    assert base["min_over_modes"]["rms"] == pytest.approx(base["best_mode"]["rms"])
    # The post's MSE is the RMS error squared over the two coordinates, never reported as an RMS.
    for stats in on_disk["errors"].values():
        assert stats["post_mse"] == pytest.approx(stats["rms"] ** 2 / 2)


def test_report_links_every_figure(evaluated):
    out, metrics = evaluated
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(links) == {*FIGURES.values(), *BASELINE_FIGURES.values()}
    assert all((out / link).is_file() for link in links)
    assert f"{metrics['errors']['best_mode']['rms']:.2e}" in report
    assert "post MSE" in report and "averaging" in report


def test_seeded_evaluation_is_reproducible(bishop):
    from ikmdn.solve import IKSolver

    solver = IKSolver.load(bishop.onnx_path)
    targets = workspace_targets(solver.arm, 100, seed=4)
    first, second = (evaluate_solver(solver, targets, seed=5).metrics for _ in range(2))
    assert first["errors"] == second["errors"] and first["coverage"] == second["coverage"]
    other = evaluate_solver(solver, targets, seed=6).metrics["errors"]
    assert other["sampled"] != first["errors"]["sampled"]  # the seed drives the sampled answers
    assert other["best_mode"] == first["errors"]["best_mode"]


# -- the command line --------------------------------------------------------------------------

def test_cli_evaluate_writes_the_report_and_needs_force_for_a_used_folder(bishop, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["evaluate", "--model", str(bishop.onnx_path), "--samples", "100", "--seed", "1",
            "--out", str(out)]
    refused = CliRunner().invoke(cli, args)
    assert _one_line_error(refused) == (f"Error: --out {out} already holds files; choose another "
                                        "folder or pass --force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = CliRunner().invoke(cli, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}/report.md: RMS error best mode" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_set"]["targets"] == 100 and metrics["baseline"] is None
    assert {p.name for p in out.iterdir()} == {"keep.txt", "metrics.json", "report.md",
                                               *FIGURES.values()}
    assert (out / "keep.txt").read_text() == "mine"


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_missing_model_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(tmp_path / "nope.onnx"),
                                      "--out", str(tmp_path / "out")])
    assert _one_line_error(result) == f"Error: model file {tmp_path / 'nope.onnx'} does not exist"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("samples", ["0", "-5"])
def test_cli_rejects_non_positive_samples(bishop, tmp_path, samples):
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(bishop.onnx_path), "--samples",
                                      samples, "--out", str(tmp_path / "out")])
    assert _one_line_error(result) == ("Error: number of test targets (--samples) must be a "
                                       f"positive integer, got {samples}")
    assert not (tmp_path / "out").exists()


def test_cli_rejects_a_baseline_of_another_arm(bishop, planar2, tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(bishop.onnx_path), "--baseline",
                                      str(planar2.onnx_path), "--out", str(tmp_path / "out")])
    assert "must match" in _one_line_error(result)


def test_evaluating_onnx_needs_no_torch(bishop, tmp_path):
    code = (
        "import sys\n"
        "from ikmdn.report import EvaluationJob\n"
        "EvaluationJob(sys.argv[1], sys.argv[2], samples=30).run()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n")
    done = run_python(code, str(bishop.onnx_path), str(tmp_path / "out"))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_other_arms_evaluate(planar3, tmp_path):
    """A pose arm with continuous joints: position and orientation errors, no crash in figures."""
    metrics = EvaluationJob(planar3.onnx_path, tmp_path / "out", samples=60, seed=0).run()
    assert {"position_rms", "orientation_rms_deg"} <= set(metrics["errors"]["refined"])
    assert metrics["coverage"] is not None

