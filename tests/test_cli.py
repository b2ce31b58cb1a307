"""The `ikmdn` command line (click's CliRunner): exit codes, messages, output formats."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import workspace_targets
from helpers import NPZ_ARRAYS, assert_ok, assert_usage_error, invoke

from ikmdn.arms import list_arms
from ikmdn.cli import cli

CONTRACT_TOP = {"model", "arm", "joint_names", "solutions"}
CONTRACT_SOLUTION = {"target", "reachable", "candidates"}
CONTRACT_CANDIDATE = {"joints", "weight", "sigma", "position", "error", "within_limits"}


@pytest.fixture(scope="module")
def model(trained_models):
    return str(trained_models("bishop").onnx_path)


@pytest.fixture(scope="module")
def bishop_targets():
    """Targets (5, 2) inside the bishop workspace."""
    from ikmdn.arms import get_arm

    return workspace_targets(get_arm("bishop"), 5, seed=51)


# -- solve: output formats ------------------------------------------------------------------------

def test_solve_table(model):
    result = assert_ok(invoke("solve", "--model", model, "0.8", "0.4"))
    lines = result.stdout.splitlines()
    assert lines[0] == f"model {model} (arm bishop, K=3, refined)"
    assert "target (x=0.8, y=0.4): reachable" in result.stdout
    assert "weight" in result.stdout and "joints (rad)" in result.stdout
    rows = [line for line in lines if line.strip().startswith("1 ")]
    assert len(rows) == 1 and "ok" in rows[0]
    assert result.stderr == ""


def test_solve_table_unrefined(model):
    result = assert_ok(invoke("solve", "--model", model, "0.8", "0.4", "--no-refine"))
    assert "unrefined" in result.stdout.splitlines()[0]


def test_solve_table_unreachable(model):
    result = assert_ok(invoke("solve", "--model", model, "0.6", "0.4"))
    assert "NOT reachable (closest candidates shown)" in result.stdout


def _json(result) -> dict:
    return json.loads(result.stdout)


def test_solve_json_contract(model):
    data = _json(assert_ok(invoke("solve", "--model", model, "0.8", "0.4", "--format", "json")))
    assert set(data) == CONTRACT_TOP
    assert data["model"] == model and data["arm"] == "bishop"
    (solution,) = data["solutions"]
    assert set(solution) == CONTRACT_SOLUTION
    assert solution["target"] == [0.8, 0.4]
    assert solution["reachable"] is True
    candidates = solution["candidates"]
    assert 1 <= len(candidates) <= 3
    for c in candidates:
        assert set(c) == CONTRACT_CANDIDATE
        assert len(c["joints"]) == len(c["sigma"]) == 2 and len(c["position"]) == 2
        assert all(isinstance(v, float) for v in (*c["joints"], *c["sigma"], *c["position"]))
        assert isinstance(c["weight"], float) and isinstance(c["error"], float)
        assert isinstance(c["within_limits"], bool)
        assert all(s > 0 for s in c["sigma"])
    weights = [c["weight"] for c in candidates]
    assert weights == sorted(weights, reverse=True)
    assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert min(c["error"] for c in candidates) <= 1e-9


def test_solve_json_best(model, tmp_path, bishop_targets):
    path = tmp_path / "t.npy"
    np.save(path, bishop_targets)
    data = _json(assert_ok(invoke("solve", "--model", model, "--targets", path, "--format", "json",
                                  "--best")))
    assert len(data["solutions"]) == len(bishop_targets)
    assert all(len(s["candidates"]) == 1 for s in data["solutions"])
    for s in data["solutions"]:
        assert set(s["candidates"][0]) == CONTRACT_CANDIDATE


def test_solve_csv(model):
    result = assert_ok(invoke("solve", "--model", model, "0.8", "0.4", "--format", "csv"))
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["target", "x", "y", "reachable", "rank", "weight", "q1", "q2", "error",
                             "within_limits", "reached_x", "reached_y"]  # joint names of the arm
    assert any(abs(float(r["reached_x"]) - 0.8) < 1e-6 and abs(float(r["reached_y"]) - 0.4) < 1e-6
               and float(r["error"]) < 1e-6 for r in rows)
    assert 1 <= len(rows) <= 3
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    assert all(r["target"] == "0" and float(r["x"]) == 0.8 and float(r["y"]) == 0.4 for r in rows)
    assert rows[0]["reachable"] == "true"
    weights = [float(r["weight"]) for r in rows]
    assert weights == sorted(weights, reverse=True)


def test_solve_csv_best(model, tmp_path, bishop_targets):
    path = tmp_path / "t.npy"
    np.save(path, bishop_targets)
    result = assert_ok(invoke("solve", "--model", model, "--targets", path, "--format", "csv",
                              "--best"))
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["target"] for r in rows] == [str(i) for i in range(len(bishop_targets))]
    assert all(r["rank"] == "1" for r in rows)


def test_solve_table_best(model, tmp_path, bishop_targets):
    path = tmp_path / "t.npy"
    np.save(path, bishop_targets)
    result = assert_ok(invoke("solve", "--model", model, "--targets", path, "--best"))
    assert result.stdout.count("\ntarget (") == len(bishop_targets)
    assert sum(line.strip().startswith("1 ") for line in result.stdout.splitlines()) == 5
    assert not any(line.strip().startswith("2 ") for line in result.stdout.splitlines())


def test_negative_coordinates_are_numbers(model):
    data = _json(assert_ok(invoke("solve", "--model", model, "-0.3", "0.5", "--format", "json")))
    assert data["solutions"][0]["target"] == [-0.3, 0.5]
    data = _json(assert_ok(invoke("solve", "--model", model, "--format", "json", "-.3", "-5e-1")))
    assert data["solutions"][0]["target"] == [-0.3, -0.5]


def test_checkpoint_model(trained_models):
    run_dir = trained_models("bishop").run_dir
    data = _json(assert_ok(invoke("solve", "--model", run_dir, "0.8", "0.4", "--format", "json")))
    assert data["arm"] == "bishop"
    assert data["solutions"][0]["reachable"] is True


# -- solve: target files --------------------------------------------------------------------------

def test_targets_csv_with_header_and_comments(model, tmp_path):
    path = tmp_path / "targets.csv"
    path.write_text("# targets for the bishop arm\nx, y\n0.8, 0.4  # first\n\n-0.3,0.5\n"
                    "# the end\n0.7,0.6\n")
    data = _json(assert_ok(invoke("solve", "--model", model, "--targets", path, "--format", "json")))
    assert [s["target"] for s in data["solutions"]] == [[0.8, 0.4], [-0.3, 0.5], [0.7, 0.6]]


def test_targets_npy(model, tmp_path, bishop_targets):
    path = tmp_path / "targets.npy"
    np.save(path, bishop_targets.astype(np.float32))
    data = _json(assert_ok(invoke("solve", "--model", model, "--targets", path, "--format", "json")))
    got = np.array([s["target"] for s in data["solutions"]])
    np.testing.assert_allclose(got, bishop_targets.astype(np.float32))
    assert sum(s["reachable"] for s in data["solutions"]) >= 4


def test_output_npz(model, tmp_path, bishop_targets):
    targets = tmp_path / "t.npy"
    np.save(targets, bishop_targets)
    out = tmp_path / "out.npz"
    result = assert_ok(invoke("solve", "--model", model, "--targets", targets, "--output", out))
    assert result.stdout.strip() == f"wrote {out}: 5 targets"
    with np.load(out) as f:
        arrays = {name: f[name] for name in f.files}
    assert set(arrays) == NPZ_ARRAYS
    n, k, dof = 5, 3, 2
    expected = {"targets": (n, 2), "joints": (n, k, dof), "weights": (n, k), "sigmas": (n, k, dof),
                "positions": (n, k, 2), "errors": (n, k), "rotation_errors": (n, k),
                "within_limits": (n, k),
                "distinct": (n, k), "reachable": (n,), "fallback": (n,)}
    assert {name: a.shape for name, a in arrays.items()} == expected
    np.testing.assert_array_equal(arrays["targets"], bishop_targets)
    assert arrays["reachable"].dtype == bool
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz", "t.npy"]  # no temporaries


def test_output_npz_many_batches(trained_models, tmp_path):
    """More targets than the solver's batch: the .npz is assembled batch by batch."""
    bishop = trained_models("bishop")
    x = workspace_targets(bishop.arm, 16384 + 10, seed=52)
    targets = tmp_path / "t.npy"
    np.save(targets, x)
    out = tmp_path / "out.npz"
    assert_ok(invoke("solve", "--model", bishop.onnx_path, "--targets", targets, "--output", out,
                     "--no-refine"))
    with np.load(out) as f:
        assert f["joints"].shape == (len(x), 3, 2)
        np.testing.assert_array_equal(f["targets"], x)


def test_output_npz_refuses_to_overwrite(model, tmp_path):
    out = tmp_path / "out.npz"
    out.write_bytes(b"precious")
    assert_usage_error(invoke("solve", "--model", model, "0.8", "0.4", "--output", out),
                       "already exists", "--force")
    assert out.read_bytes() == b"precious"
    assert_ok(invoke("solve", "--model", model, "0.8", "0.4", "--output", out, "--force"))
    with np.load(out) as f:
        assert f["joints"].shape == (1, 3, 2)


def test_output_must_be_npz(model, tmp_path):
    out = tmp_path / "out.txt"
    assert_usage_error(invoke("solve", "--model", model, "0.8", "0.4", "--output", out), ".npz")
    assert not out.exists()


def test_output_npz_zero_targets(model, tmp_path):
    targets = tmp_path / "t.csv"
    targets.write_text("x,y\n")
    out = tmp_path / "out.npz"
    assert_ok(invoke("solve", "--model", model, "--targets", targets, "--output", out))
    with np.load(out) as f:
        assert set(f.files) == NPZ_ARRAYS
        assert f["joints"].shape == (0, 3, 2)


def test_zero_targets_json(model, tmp_path):
    targets = tmp_path / "t.csv"
    targets.write_text("x,y\n# nothing yet\n")
    data = _json(assert_ok(invoke("solve", "--model", model, "--targets", targets, "--format", "json")))
    assert data["solutions"] == []


# -- solve: bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_non_finite_coordinate_is_refused(model, tmp_path, value, fmt):
    out = tmp_path / "out.npz"
    result = invoke("solve", "--model", model, "0.8", value, "--format", fmt)
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "finite" in result.stderr or "NaN" in result.stderr
    result = invoke("solve", "--model", model, "0.8", value, "--output", out)
    assert result.exit_code == 2
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_non_finite_coordinate_prints_nothing(model, fmt):
    result = invoke("solve", "--model", model, "0.8", "nan", "--format", fmt)
    assert_usage_error(result, "finite")


def test_wrong_number_of_coordinates(model):
    assert_usage_error(invoke("solve", "--model", model, "0.8"),
                       "arm bishop takes 2 coordinates (x, y), got 1")
    assert_usage_error(invoke("solve", "--model", model, "0.8", "0.4", "0.1"), "got 3")


def test_non_numeric_coordinate(model):
    assert_usage_error(invoke("solve", "--model", model, "0.8", "abc"),
                       "'abc' is neither an option nor a number")
    assert_usage_error(invoke("solve", "--model", model, "0.8", "--frobnicate"),
                       "'--frobnicate' is neither an option nor a number")


def test_coordinates_and_targets_file(model, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0.8,0.4\n")
    assert_usage_error(invoke("solve", "--model", model, "0.8", "0.4", "--targets", path),
                       "either target COORDINATES or --targets FILE")


def test_neither_coordinates_nor_targets(model):
    assert_usage_error(invoke("solve", "--model", model), "either target COORDINATES or --targets")


@pytest.mark.parametrize("with_output", [False, True])
def test_csv_bad_row(model, tmp_path, with_output):
    path = tmp_path / "t.csv"
    path.write_text("x,y\n0.8,0.4\n# comment\n0.5,oops\n0.7,0.6\n")
    out = tmp_path / "out.npz"
    args = ["--output", out] if with_output else []
    assert_usage_error(invoke("solve", "--model", model, "--targets", path, *args),
                       "t.csv line 4", "'oops' is not a number")
    assert not out.exists()


def test_csv_wrong_column_count(model, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0.8,0.4\n0.5,0.7,0.1\n")
    assert_usage_error(invoke("solve", "--model", model, "--targets", path, "--format", "json"),
                       "line 2", "expected 2 comma-separated numbers, got 3")


def test_csv_non_finite_value(model, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x,y\n0.8,0.4\n0.5,nan\n")
    assert_usage_error(invoke("solve", "--model", model, "--targets", path), "line 3", "NaN")


def test_npy_bad_shape_and_nan(model, tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.zeros((4, 3)))
    assert_usage_error(invoke("solve", "--model", model, "--targets", path), "(N, 2)", "(4, 3)")
    np.save(path, np.array([[0.8, 0.4], [np.nan, 0.1]]))
    assert_usage_error(invoke("solve", "--model", model, "--targets", path), "row 1", "NaN")


def test_targets_file_missing_or_wrong_suffix(model, tmp_path):
    assert_usage_error(invoke("solve", "--model", model, "--targets", tmp_path / "nope.csv"),
                       "does not exist")
    other = tmp_path / "t.txt"
    other.write_text("0.8,0.4\n")
    assert_usage_error(invoke("solve", "--model", model, "--targets", other), ".csv or .npy")


def test_missing_model(tmp_path):
    assert_usage_error(invoke("solve", "--model", tmp_path / "missing.onnx", "0.8", "0.4"),
                       "missing.onnx does not exist")
    assert_usage_error(invoke("solve", "--model", tmp_path / "missing", "0.8", "0.4"),
                       "does not exist")


def test_model_that_is_not_onnx(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    assert_usage_error(invoke("solve", "--model", path, "0.8", "0.4"),
                       "bad.onnx is not a readable ONNX model")


def test_model_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    assert_usage_error(invoke("solve", "--model", path, "0.8", "0.4"),
                       "bad.pt is not an ikmdn checkpoint")


def test_unknown_format(model):
    assert_usage_error(invoke("solve", "--model", model, "0.8", "0.4", "--format", "xml"),
                       "'xml' is not one of")


@pytest.mark.parametrize("option, message", [("--tol", "must be a positive number"),
                                             ("--max-iter", "not in the range 1<=x<=100000"),
                                             ("--threads", "not in the range 1<=x<=1024")])
def test_non_positive_solver_options(model, option, message):
    assert_usage_error(invoke("solve", "--model", model, "0.8", "0.4", option, "0"),
                       option, message)


# -- train ----------------------------------------------------------------------------------------

def test_train_unknown_arm(tmp_path):
    out = tmp_path / "run"
    assert {"bishop", "planar2", "planar3"} <= set(list_arms())
    assert_usage_error(invoke("train", "--arm", "octopus", "--out", out),
                       "unknown arm 'octopus'", "choose one of: " + ", ".join(list_arms()))
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("--samples", "0"), ("--epochs", "-1"),
                                           ("--components", "0"), ("--lr", "0"),
                                           ("--hidden", "16,0"), ("--hidden", "a,b")])
def test_train_bad_numbers(tmp_path, option, value):
    out = tmp_path / "run"
    assert_usage_error(invoke("train", "--arm", "bishop", "--out", out, option, value), option)
    assert not out.exists()


def test_train_refuses_non_empty_out(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_usage_error(invoke("train", "--arm", "bishop", "--out", out, "--samples", "100",
                              "--epochs", "1"), "already holds files", "--force")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_train_refuses_existing_export(tmp_path):
    out, onnx_file = tmp_path / "run", tmp_path / "m.onnx"
    onnx_file.write_bytes(b"precious")
    assert_usage_error(invoke("train", "--out", out, "--samples", "100", "--epochs", "1",
                              "--export", onnx_file), "already exists")
    assert onnx_file.read_bytes() == b"precious"


def test_train_refused_export_creates_no_folder(tmp_path):
    out, onnx_file = tmp_path / "run", tmp_path / "m.onnx"
    onnx_file.write_bytes(b"precious")
    assert_usage_error(invoke("train", "--out", out, "--samples", "100", "--epochs", "1",
                              "--export", onnx_file), "already exists")
    assert not out.exists()


def test_train_tiny_run(tmp_path):
    out, onnx_file = tmp_path / "run", tmp_path / "exported" / "m.onnx"
    result = assert_ok(invoke("train", "--arm", "bishop", "--out", out, "--samples", "2000",
                              "--epochs", "2", "--hidden", "16,16", "--export", onnx_file))
    assert {"model.pt", "config.json", "history.csv", "loss.png"} <= {p.name for p in out.iterdir()}
    assert onnx_file.is_file()
    config = json.loads((out / "config.json").read_text())
    assert (config["arm"], config["samples"], config["epochs"], config["hidden"]) == (
        "bishop", 2000, 2, [16, 16])
    with open(out / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out}/model.pt: validation NLL")
    parity = [line for line in lines if line.startswith("parity PyTorch vs ONNX Runtime")]
    assert len(parity) == 1 and parity[0].endswith(": ok")
    assert lines[-1].startswith(f"wrote {onnx_file} (")
    data = _json(assert_ok(invoke("solve", "--model", onnx_file, "0.8", "0.4", "--format", "json")))
    assert data["arm"] == "bishop"


# -- export ---------------------------------------------------------------------------------------

def test_export_run_folder(trained_models, tmp_path):
    run_dir = trained_models("planar2").run_dir
    out = tmp_path / "p2.onnx"
    result = assert_ok(invoke("export", run_dir, "-o", out))
    lines = result.stdout.splitlines()
    assert sum(line.startswith("parity PyTorch vs ONNX Runtime") for line in lines) == 1
    assert lines[0].endswith(": ok")
    assert lines[-1].startswith(f"wrote {out} (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p2.onnx"]
    info = json.loads(assert_ok(invoke("info", out)).stdout)
    assert info["arm"]["name"] == "planar2" and info["components"] == 4


def test_export_checkpoint_file(trained_models, tmp_path):
    out = tmp_path / "b.onnx"
    assert_ok(invoke("export", trained_models("bishop").run_dir / "model.pt", "--output", out))
    assert out.is_file()


def test_export_refuses_existing_file(trained_models, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"precious")
    assert_usage_error(invoke("export", trained_models("bishop").run_dir, "-o", out),
                       "already exists", "--force")
    assert out.read_bytes() == b"precious"
    assert_ok(invoke("export", trained_models("bishop").run_dir, "-o", out, "--force"))
    assert out.read_bytes() != b"precious"


def test_export_non_checkpoint_source(trained_models, tmp_path):
    out = tmp_path / "m.onnx"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert_usage_error(invoke("export", junk, "-o", out), "junk.pt is not an ikmdn checkpoint")
    assert_usage_error(invoke("export", trained_models("bishop").onnx_path, "-o", out),
                       "is not an ikmdn checkpoint")
    assert_usage_error(invoke("export", tmp_path / "nothing", "-o", out), "no checkpoint at")
    assert not out.exists()


def test_export_needs_onnx_suffix(trained_models, tmp_path):
    out = tmp_path / "m.bin"
    assert_usage_error(invoke("export", trained_models("bishop").run_dir, "-o", out), ".onnx")
    assert not out.exists()


# -- help -----------------------------------------------------------------------------------------

def test_every_command_has_an_example():
    assert cli.commands, "no commands registered"
    assert "Example:" in (cli.help or "")
    for name, command in cli.commands.items():
        assert "Example:" in (command.help or ""), name
        result = assert_ok(invoke(name, "--help"))
        assert "Example:" in result.stdout, name


def test_top_level_help_lists_commands():
    result = assert_ok(invoke("--help"))
    for name in ("solve", "train", "export"):
        assert name in result.stdout


def test_arms_command():
    result = assert_ok(invoke("arms"))
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == list_arms()
    assert {"bishop", "planar2", "planar3"} <= set(names)


def test_info(trained_models):
    path = trained_models("planar3").onnx_path
    info = json.loads(assert_ok(invoke("info", path)).stdout)
    assert set(info) == {"model", "frames", "joint_names", "arm", "components", "train", "metrics"}
    assert info["frames"] == "base -> hand" and info["joint_names"] == ["q1", "q2", "q3"]
    assert info["arm"]["name"] == "planar3" and info["arm"]["target_dim"] == 3
    assert "best_mode_rms" in info["metrics"]


def test_default_model_is_the_shipped_bishop():
    """`ikmdn solve X Y` with no --model uses exported_models/bishop.onnx (no training)."""
    result = CliRunner().invoke(cli, ["solve", "0.6", "0.7", "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["arm"] == "bishop" and out["model"].endswith("bishop.onnx")
    solution = out["solutions"][0]
    assert solution["reachable"] and len(solution["candidates"]) == 2  # elbow both ways
    assert all(c["error"] <= 1e-9 for c in solution["candidates"])
