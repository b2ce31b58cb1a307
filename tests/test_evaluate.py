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
    branch_labels,
    coverage,
    error_stats,
    evaluate_solver,
    mode_pose_errors,
    outer_reach,
    post_mse,
    rms,
)
from ikmdn.mixture import Mixture
from ikmdn.plots import nice_below
from ikmdn.report import (
    BASELINE_FIGURES,
    FIGURES,
    METRIC_KEYS,
    SPATIAL_FIGURES,
    EvaluationJob,
    figures_for,
)

STAT_KEYS = ("rms", "p50", "p90", "p99", "max", "post_mse")
SPREAD_KEYS = ("rms", "p50", "p90", "p99", "max")
SAMPLES = 200  # test targets per evaluation: enough for every figure, fast
SPATIAL_SAMPLES = 60  # spatial arms refine with fallback seeds: fewer targets keep them fast
BRANCHES = {"rrr3": 4, "ur5": 8}  # closed-form branches of the spatial presets


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
def spatial_model(tmp_path_factory):
    """A function arm name -> path of a tiny exported model of that spatial arm (about a second
    of training each, made once per module)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            from ikmdn.export import export_onnx
            from ikmdn.train import TrainConfig, train_run

            config = TrainConfig(arm=name, samples=3000, epochs=1, hidden=(16, 16), components=4,
                                 batch_size=256, seed=0)
            checkpoint = train_run(config, tmp_path_factory.mktemp(f"run-{name}"))
            path = tmp_path_factory.mktemp(f"onnx-{name}") / f"{name}.onnx"
            assert export_onnx(checkpoint, path).ok
            cache[name] = path
        return cache[name]

    return get


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
    assert set(stats["position_mm"]) == set(stats["rotation_deg"]) == set(SPREAD_KEYS)
    assert stats["position_mm"]["rms"] == stats["position_mm"]["max"] == pytest.approx(5.0)
    assert stats["rotation_deg"]["max"] == pytest.approx(0.0, abs=1e-6)


def test_pose_rotation_errors_are_degrees_of_the_rotation_angle():
    from ikmdn.arms.rotations import matrix_to_6d, sixd_to_matrix

    arm = get_arm("ur5")
    joints = arm.sample_joints(100, np.random.default_rng(4))
    targets = arm.fk(joints)
    angle = 0.02  # every target orientation turned by 0.02 rad about its own x axis
    turn = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    targets[:, 3:] = matrix_to_6d(sixd_to_matrix(targets[:, 3:]) @ turn)
    stats = error_stats(arm, Answers.of(arm, joints, targets), targets)
    assert stats["rotation_deg"]["rms"] == pytest.approx(np.degrees(angle), rel=1e-6)
    assert stats["rotation_deg"]["p50"] == pytest.approx(np.degrees(angle), rel=1e-6)
    assert stats["position_mm"]["max"] == pytest.approx(0.0, abs=1e-9)
    position_only = error_stats(get_arm("rrr3"), Answers.of(get_arm("rrr3"), joints[:, :3],
                                                            get_arm("rrr3").fk(joints[:, :3])),
                                get_arm("rrr3").fk(joints[:, :3]))
    assert "position_mm" in position_only and "rotation_deg" not in position_only


def test_min_over_modes_takes_position_and_rotation_minima_each_on_its_own():
    arm = get_arm("ur5")
    rng = np.random.default_rng(5)
    joints = arm.sample_joints(50, rng)
    targets = arm.fk(joints)
    turned = joints.copy()
    turned[:, 5] += 0.3  # the last joint turns the hand about its own axis: position unchanged
    other = arm.sample_joints(50, rng)
    means = np.stack([other, turned], axis=1)
    mixture = Mixture(np.tile([0.7, 0.3], (50, 1)), means, np.full_like(means, 0.1))
    errors = mode_pose_errors(arm, mixture, targets)
    assert errors["best_mode"]["position"] == pytest.approx(arm.target_error(arm.fk(other), targets))
    assert errors["min_over_modes"]["position"] == pytest.approx(0.0, abs=1e-12)
    other_rotation = arm.rotation_error(arm.fk(other), targets)
    assert errors["min_over_modes"]["rotation"] == pytest.approx(np.minimum(0.3, other_rotation))


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


def test_evaluating_onnx_needs_no_torch(bishop, spatial_model, tmp_path):
    """A planar and a spatial pose arm, in one fresh interpreter."""
    code = (
        "import sys\n"
        "from ikmdn.report import EvaluationJob\n"
        "EvaluationJob(sys.argv[1], sys.argv[3] + '/planar', samples=30).run()\n"
        "EvaluationJob(sys.argv[2], sys.argv[3] + '/pose', samples=20).run()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n")
    done = run_python(code, str(bishop.onnx_path), str(spatial_model("ur5")), str(tmp_path))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_other_arms_evaluate(planar3, tmp_path):
    """A pose arm with continuous joints: position and orientation errors, no crash in figures."""
    metrics = EvaluationJob(planar3.onnx_path, tmp_path / "out", samples=60, seed=0).run()
    assert {"position_rms", "orientation_rms_deg"} <= set(metrics["errors"]["refined"])
    assert metrics["coverage"] is not None



# -- spatial arms: closed-form branches --------------------------------------------------------

@pytest.mark.parametrize("name", ["rrr3", "ur5"])
def test_per_branch_coverage_counts_each_branch(name):
    arm = get_arm(name)
    targets = workspace_targets(arm, 150, seed=6)
    branches, valid = closed_form_ik(arm, targets)
    candidates = np.where(valid[..., None], branches, 100.0)  # a candidate per valid branch
    candidates[:, 0] += 2 * np.pi * np.array([1] + [0] * (arm.dof - 1))  # same angle, 2 pi on
    full = coverage(arm, targets, candidates)
    assert full["coverage"] == 1.0 and full["targets_fully_covered"] == 1.0
    assert [b["label"] for b in full["per_branch"]] == branch_labels(arm)
    assert [b["valid"] for b in full["per_branch"]] == valid.sum(axis=0).tolist()
    missing = candidates.copy()
    missing[:, 2] = 100.0  # branch 2 is never found
    cov = coverage(arm, targets, missing)
    per = {b["branch"]: b for b in cov["per_branch"]}
    assert len(per) == BRANCHES[name] and per[2]["matched"] == 0 and per[2]["coverage"] == 0.0
    assert all(per[b]["coverage"] == 1.0 for b in per if b != 2)
    assert cov["coverage"] == pytest.approx(sum(b["matched"] for b in per.values())
                                            / sum(b["valid"] for b in per.values()))
    assert "b = " in cov["branch_order"]


def _dh_origins(arm, q):
    """Origins (dof + 1, 3) of the standard-DH frames 0..dof and the z axis of frame 1 (3,)
    for one joint vector q (dof,)."""
    from ikmdn.arms.closed_form_spatial import standard_dh
    from ikmdn.arms.dh import dh_transform

    dh = standard_dh(arm)
    frame, origins, z1 = dh.base.copy(), [dh.base[:3, 3]], None
    for i in range(arm.dof):
        frame = frame @ dh_transform(dh.a[i], dh.d[i], dh.alpha[i], q[i] + dh.theta[i])
        origins.append(frame[:3, 3])
        if i == 0:
            z1 = frame[:3, 2]
    return np.array(origins), z1


def test_rrr3_branch_labels_describe_the_branches():
    arm = get_arm("rrr3")
    targets = workspace_targets(arm, 100, seed=7)
    branches, valid = closed_form_ik(arm, targets)
    assert valid.all()
    for b, label in enumerate(branch_labels(arm)):
        for q in branches[:, b]:
            shoulder, elbow, hand = _dh_origins(arm, q)[0][1:]
            facing = np.cos(q[0]) * hand[0] + np.sin(q[0]) * hand[1] > 0
            line, to_elbow = hand - shoulder, elbow - shoulder
            horizontal = line[:2] / np.linalg.norm(line[:2])
            up = line[:2] @ horizontal * to_elbow[2] - line[2] * (to_elbow[:2] @ horizontal) > 0
            assert facing == ("toward target" in label), (b, label)
            assert up == ("elbow up" in label), (b, label)
            assert (q[2] >= 0) == ("q3 >= 0" in label), (b, label)


def test_ur5_branch_labels_describe_the_branches():
    arm = get_arm("ur5")
    targets = workspace_targets(arm, 60, seed=8)
    branches, valid = closed_form_ik(arm, targets)
    from ikmdn.arms.closed_form_spatial import standard_dh

    d6 = standard_dh(arm).d[5]  # the wrist centre lies d6 behind the hand along its z axis
    for b, label in enumerate(branch_labels(arm)):
        for q in branches[valid[:, b], b]:
            pose = arm.poses(q)[0]
            wrist = pose[:3, 3] - d6 * pose[:3, 2]
            _, z1 = _dh_origins(arm, q)
            left_of_wrist = np.array([-wrist[1], wrist[0]])  # seen from above, from the base
            assert (z1[:2] @ left_of_wrist < 0) == ("shoulder left" in label), (b, label)
            assert (q[4] > 0) == ("q5 > 0" in label) and (q[2] >= 0) == ("q3 >= 0" in label)


# -- spatial arms: the command line ------------------------------------------------------------

@pytest.mark.parametrize("name", ["rrr3", "ur5"])
def test_cli_evaluate_spatial_arm(spatial_model, tmp_path, name):
    import matplotlib.image

    arm = get_arm(name)
    out = tmp_path / name
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(spatial_model(name)), "--samples",
                                      str(SPATIAL_SAMPLES), "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = {"position_errors", "branch_coverage", "position_quiver"}
    if arm.pose_targets:
        figures.add("rotation_errors")
    assert set(figures_for(arm)) == figures
    files = {SPATIAL_FIGURES[f] for f in figures}
    assert {p.name for p in out.iterdir()} == {"metrics.json", "report.md", *files}
    for name_png in files:
        image = matplotlib.image.imread(out / name_png)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500, name_png
        assert image[..., :3].std() > 0.05, f"{name_png} looks blank"

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert metrics["figures"] == {f: SPATIAL_FIGURES[f] for f in figures_for(arm)}
    for method, stats in metrics["errors"].items():
        kinds = ("position_mm", "rotation_deg") if arm.pose_targets else ("position_mm",)
        assert ("rotation_deg" in stats) == arm.pose_targets
        for kind in kinds:
            spread = stats[kind]
            assert set(spread) == set(SPREAD_KEYS), (method, kind)
            assert all(np.isfinite(v) and v >= 0 for v in spread.values())
            assert spread["p50"] <= spread["p90"] <= spread["p99"] <= spread["max"]
        assert stats["position_mm"]["rms"] == pytest.approx(1000 * stats["rms"])
    errors = metrics["errors"]
    assert errors["min_over_modes"]["position_mm"]["rms"] <= errors["best_mode"]["position_mm"]["rms"]
    assert errors["refined"]["position_mm"]["p50"] < errors["best_mode"]["position_mm"]["p50"]
    assert 0 <= metrics["reachable"] <= 1 and 0 <= metrics["fallback"] <= metrics["reachable"]
    counts = metrics["solutions_per_target_counts"]
    assert len(counts) == metrics["model"]["components"] + 1 and sum(counts) == SPATIAL_SAMPLES
    assert metrics["solutions_per_target"] == pytest.approx(
        np.dot(np.arange(len(counts)), counts) / SPATIAL_SAMPLES)
    per_branch = metrics["coverage"]["per_branch"]
    assert [b["branch"] for b in per_branch] == list(range(BRANCHES[name]))
    assert [b["label"] for b in per_branch] == branch_labels(arm)
    assert all(0 <= b["matched"] <= b["valid"] <= SPATIAL_SAMPLES for b in per_branch)
    assert sum(b["valid"] for b in per_branch) == metrics["coverage"]["branches"]

    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(links) == files
    assert "### Position error (mm)" in report
    assert ("### Rotation error (degrees)" in report) == arm.pose_targets
    assert all(f"| {b['branch']} | {b['label']} |" in report for b in per_branch)
    assert f"{errors['refined']['position_mm']['rms']:.2e}" in report


def test_panda_evaluates_without_a_closed_form(spatial_model, tmp_path):
    job = EvaluationJob(spatial_model("panda"), tmp_path / "out", samples=40, seed=0)
    seen = []
    metrics = job.run(on_step=seen.append)
    assert seen == job.steps
    assert metrics["coverage"] is None and "closed_form_targets_per_s" not in metrics["throughput"]
    assert set(metrics["errors"]["refined"]["rotation_deg"]) == set(SPREAD_KEYS)
    assert set(metrics["figures"]) == {"position_errors", "rotation_errors", "position_quiver"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "no closed-form IK oracle" in report and "Per branch" not in report
