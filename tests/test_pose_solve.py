"""Solving pose targets (ur5, panda): pose-aware errors, refinement, the --pose CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import PerturbedOracle

from ikmdn.arms import get_arm
from ikmdn.arms.rotations import matrix_to_quat
from ikmdn.arms.serial import targets_to_poses
from ikmdn.cli import cli
from ikmdn.export import export_onnx
from ikmdn.mixture import Mixture
from ikmdn.solve import IKSolver
from ikmdn.train import TrainConfig, train_run


def test_ur5_pose_refinement_reaches_every_branch():
    arm = get_arm("ur5")
    rng = np.random.default_rng(0)
    q = arm.sample_joints(200, rng)
    targets = arm.fk(q)
    sol = IKSolver(PerturbedOracle(arm, 0.02, seed=1)).solve(targets)
    assert sol.pose and sol.rotation_errors.shape == sol.errors.shape
    assert np.mean(sol.reachable) >= 0.99
    ok = sol.solved
    assert np.all(sol.errors[ok] <= 1e-6) and np.all(sol.rotation_errors[ok] <= 1e-6)
    # errors are hand position distances, rotation errors angles in radians
    np.testing.assert_allclose(sol.errors, arm.target_error(sol.positions, targets[:, None]))
    np.testing.assert_allclose(np.degrees(sol.rotation_errors[0]),
                               arm.rotation_error_deg(sol.positions[0], np.repeat(targets[:1], 8, 0)),
                               atol=1e-9)


def test_pose_solution_json_has_rotation_error():
    arm = get_arm("ur5")
    targets = arm.fk(arm.sample_joints(3, np.random.default_rng(2)))
    sol = IKSolver(PerturbedOracle(arm, 0.01, seed=3)).solve(targets)
    candidate = sol.distinct_solutions(0)[0]
    assert set(candidate) == {"joints", "weight", "sigma", "position", "error", "within_limits",
                              "rotation_error_deg"}


@pytest.fixture(scope="module")
def tiny_ur5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ur5")
    config = TrainConfig(arm="ur5", samples=2000, epochs=1, hidden=(16, 16), components=4,
                         batch_size=256)
    checkpoint = train_run(config, folder / "run")
    export_onnx(checkpoint, folder / "ur5.onnx")
    return folder / "ur5.onnx"


def test_cli_pose(tiny_ur5):
    arm = get_arm("ur5")
    target = arm.fk(arm.sample_joints(1, np.random.default_rng(4)))
    pose = targets_to_poses(target)[0]
    coords = [*pose[:3, 3], *matrix_to_quat(pose[None, :3, :3])[0]]
    args = ["solve", "--model", str(tiny_ur5), "--pose", *map(str, coords), "--format", "json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["arm"] == "ur5" and len(out["solutions"]) == 1
    first = out["solutions"][0]["candidates"][0]
    assert "rotation_error_deg" in first and len(first["joints"]) == 6
    np.testing.assert_allclose(out["solutions"][0]["target"], target[0], atol=1e-9)


def test_cli_pose_errors(tiny_ur5, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["solve", "--model", str(tiny_ur5), "0.1", "0.2", "0.3"])
    assert result.exit_code == 2
    assert "takes 7 coordinates (x, y, z, qw, qx, qy, qz), got 3" in result.output
    result = runner.invoke(cli, ["solve", "--model", str(tiny_ur5), "--pose", *["0"] * 7])
    assert result.exit_code == 2 and "quaternion" in result.output.lower()
    targets = tmp_path / "poses.csv"
    targets.write_text("x,y,z,qw,qx,qy,qz\n0.3,0.2,0.4,0,1,0,0\n0.3,0.2,0.4,1,0,0,0\n")
    result = runner.invoke(cli, ["solve", "--model", str(tiny_ur5), "--targets", str(targets),
                                 "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert {line.split(",")[0] for line in result.output.splitlines()[1:]} == {"0", "1"}


def test_cli_pose_flag_needs_pose_arm(tmp_path):
    checkpoint = train_run(TrainConfig(samples=2000, epochs=1, hidden=(8,), components=2),
                           tmp_path / "run")
    export_onnx(checkpoint, tmp_path / "b.onnx")
    result = CliRunner().invoke(cli, ["solve", "--model", str(tmp_path / "b.onnx"), "--pose",
                                      "0.6", "0.4"])
    assert result.exit_code == 2 and "not a pose" in result.output


def test_fallback_seeds_rescue_targets_no_mode_solves(monkeypatch):
    """When no refined mode solves a target, extra seeds are refined and the best replaces the
    last candidate (weight 0, fallback flagged). The modes' refinement is made to fail here."""
    import ikmdn.solve as solve_module

    arm = get_arm("rrr3")
    targets = arm.fk(arm.sample_joints(40, np.random.default_rng(6)))
    real_refine, calls = solve_module.refine, []

    def modes_fail(arm_, q0, x, settings, threads=None):
        calls.append(len(q0))
        if len(calls) == 1:  # the modes: leave them where they are, 3 rad away
            q = np.asarray(q0, dtype=np.float64)
            return q, arm_.fk(q), arm_.target_error(arm_.fk(q), x)
        return real_refine(arm_, q0, x, settings, threads=threads)

    monkeypatch.setattr(solve_module, "refine", modes_fail)

    class FarModes(PerturbedOracle):
        def predict(self, x, threads=None):
            mix = super().predict(x)
            return Mixture(mix.weights, mix.means + 3.0, mix.sigmas)

    without = IKSolver(FarModes(arm, 0.0, 0), fallback_seeds=0).solve(targets)
    assert not without.reachable.any() and not without.fallback.any()
    calls.clear()
    rescued = IKSolver(FarModes(arm, 0.0, 0), fallback_seeds=16).solve(targets)
    assert calls == [40 * 4, 40 * 16]  # rrr3: 4 branches, so 4 modes
    assert rescued.reachable.mean() >= 0.95
    np.testing.assert_array_equal(rescued.fallback, rescued.reachable)
    fixed = np.flatnonzero(rescued.fallback)
    k = rescued.best_index[fixed]
    assert np.all(rescued.weights[fixed, k] == 0)
    assert np.all(rescued.errors[fixed, k] <= 1e-6)


def test_cli_pose_outputs_name_joints_and_print_quaternions():
    """CSV columns are the arm's joint names; pose arms print targets and reached poses as
    position + quaternion (w, x, y, z); the JSON names the joints at the top level."""
    import csv
    import io

    from ikmdn.cli import default_model

    model = str(default_model().parent / "ur5.onnx")
    pose = ["0.3", "0.2", "0.4", "0", "1", "0", "0"]
    result = CliRunner().invoke(cli, ["solve", "--model", model, "--pose", *pose, "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    arm = get_arm("ur5")
    assert list(rows[0])[:8] == ["target", "x", "y", "z", "qw", "qx", "qy", "qz"]
    assert all(name in rows[0] for name in arm.joint_names)
    for row in rows:
        q = np.array([float(row[n]) for n in arm.joint_names])
        reached = targets_to_poses(arm.fk(q))[0]
        position = [float(row[f"reached_{c}"]) for c in "xyz"]
        quat = np.array([float(row[f"reached_q{c}"]) for c in "wxyz"])
        np.testing.assert_allclose(position, reached[:3, 3], atol=1e-12)
        np.testing.assert_allclose(quat, matrix_to_quat(reached[None, :3, :3])[0], atol=1e-12)
        if float(row["error"]) < 1e-9:
            assert abs(abs(quat[1]) - 1.0) < 1e-6  # the target's quaternion (0, 1, 0, 0), up to sign
    table = CliRunner().invoke(cli, ["solve", "--model", model, "--pose", *pose])
    assert "joints: shoulder_pan, shoulder_lift" in table.output and "qw qx qy qz" in table.output
    data = json.loads(CliRunner().invoke(cli, ["solve", "--model", model, "--pose", *pose,
                                               "--format", "json"]).output)
    assert data["joint_names"] == list(arm.joint_names)
