"""The Node.js client (examples/node/solve.js, onnxruntime-node) against `ikmdn solve --format json`.

Skipped, with the reason, where `node` is not installed or examples/node/node_modules is absent
and `npm ci` cannot fetch it. Three kinds of test:

- Hand-built format-2 models: a graph of constants holding what the Python solver computes for a
  given set of targets (every mode refined by ikmdn.refine, forward-checked, `distinct` flagged),
  in the network's component order, with a shipped model's metadata and ikmdn.format "2". The
  client's bookkeeping (heaviest first, duplicates merged, reachable, pose targets from
  quaternions, Python's number layout) must then print exactly the bytes `ikmdn solve` prints.
  This pins the client to the contract without the format-2 exporter.
- The shipped models, once they are format 2 (skipped while a file is still format 1): the
  client's output against `ikmdn solve` on the same file, within the parity tolerances (the graph
  refines in ONNX, the CLI in Python). IKMDN_NODE_MODEL=path.onnx runs it on another model too.
- Bad input: a one-line error and exit status 2, with the CLI's own message for a bad targets file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import invoke, model_format
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "examples" / "node"
SOLVE_JS = NODE_DIR / "solve.js"
SHIPPED = ROOT / "exported_models"
NODE_TIMEOUT = 300  # s, per run of the client

# Parity tolerances (absolute): the format-2 graph refines in ONNX, `ikmdn solve` in Python. The
# tight ones hold for candidates that are solutions in both (in limits, errors <= REACH_TOL);
# candidates stalled in a local minimum (a target out of reach, a solution beyond a limit) stop
# where the LM stall rule stops them, which the graph's fixed phases may reach a step apart
# (planar2: 1.1e-6 rad, 4e-7 in the error), so they get the loose ones.
REACH_TOL = 1e-6
JOINT_TOL = 1e-9
ERROR_TOL = 1e-9
WEIGHT_TOL = 1e-6
STALLED_JOINT_TOL = 1e-4
STALLED_ERROR_TOL = 1e-6
# A redundant arm (Panda, 7 joints for a 6-D pose) drifts along its self-motion: onnxruntime's
# float64 sin/cos differ from libm's in the last bit, and damped steps amplify that to ~6e-6 rad
# on ~3% of converged candidates (both are exact solutions; tests/test_export_format2.py).
REDUNDANT_JOINT_TOL = 1e-4


# -- the client -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def node_client():
    """A function args -> CompletedProcess running examples/node/solve.js; skips the test where
    node or onnxruntime-node (examples/node/node_modules, installed here by `npm ci`) is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js client (examples/node) is not tested")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=60)
    try:
        major = int(version.stdout.strip().lstrip("v").split(".")[0])
    except ValueError:
        major = 0
    if major < 18:
        pytest.skip(f"the Node.js client needs node >= 18, found {version.stdout.strip() or '?'}")
    if not (NODE_DIR / "node_modules" / "onnxruntime-node" / "package.json").is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("examples/node/node_modules is absent and npm is not installed "
                        "(run `npm ci` in examples/node)")
        # The CPU binaries ship in the package; skip the postinstall download of GPU parts.
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
        try:
            done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, env=env,
                                  capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"`npm ci` in examples/node failed: {exc}")
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"`npm ci` in examples/node failed (exit {done.returncode}): {last}")

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([node, str(SOLVE_JS), *map(str, args)], capture_output=True,
                              text=True, timeout=NODE_TIMEOUT)

    return run


def error_line(done: subprocess.CompletedProcess) -> str:
    """The client's refusal: exit 2, nothing on stdout, one 'Error: ...' line on stderr."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


# -- models and targets ---------------------------------------------------------------------------

def format2_fixture(source: Path, x: np.ndarray, dest: Path, fmt: str = "2") -> Path:
    """A hand-built format-2 model (DESIGN.md, "ONNX format 2") for exactly the targets x (N, d):
    constant outputs holding the network's mixture for x (source: a shipped model of either
    format, read by the Python runtime), every mode refined by ikmdn.refine with the solver's
    settings, forward-checked and flagged distinct (as `merge_duplicates` does, heaviest first),
    in the network's component order."""
    from ikmdn.refine import refine
    from ikmdn.runtime import OnnxModel
    from ikmdn.solve import IKSolver, merge_duplicates

    model = OnnxModel.load(source)
    arm = model.arm
    settings = IKSolver(model).refine_settings
    mixture = model.predict(x)                       # the network's order
    n, k = mixture.weights.shape
    q, reached, _ = refine(arm, mixture.means.astype(np.float64).reshape(n * k, arm.dof),
                           np.repeat(x, k, axis=0), settings)
    targets = np.repeat(x, k, axis=0)
    errors = arm.target_error(reached, targets).reshape(n, k)
    rotation_errors = arm.rotation_error(reached, targets).reshape(n, k)
    within = arm.within_limits(q).reshape(n, k)
    joints = q.reshape(n, k, arm.dof)
    order = np.argsort(-mixture.weights, axis=1, kind="stable")
    _, distinct_sorted = merge_duplicates(np.take_along_axis(joints, order[..., None], axis=1),
                                          np.take_along_axis(mixture.weights.astype(np.float64),
                                                             order, axis=1))
    distinct = np.empty_like(distinct_sorted)
    np.put_along_axis(distinct, order, distinct_sorted, axis=1)
    outputs = {
        "weights": (mixture.weights.astype(np.float32), ("N", k)),
        "means": (mixture.means.astype(np.float32), ("N", k, arm.dof)),
        "sigmas": (mixture.sigmas.astype(np.float32), ("N", k, arm.dof)),
        "joints": (joints, ("N", k, arm.dof)),
        "positions": (reached.reshape(n, k, arm.target_dim), ("N", k, arm.target_dim)),
        "errors": (errors, ("N", k)),
        "rotation_errors": (rotation_errors, ("N", k)),
        "within_limits": (within, ("N", k)),
        "distinct": (distinct, ("N", k)),
    }
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
             for name, (value, _) in outputs.items()]
    graph = helper.make_graph(
        nodes, "format2_fixture",
        [helper.make_tensor_value_info("targets", TensorProto.DOUBLE, ("N", arm.target_dim))],
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), shape)
         for name, (value, shape) in outputs.items()])
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    meta = {p.key: p.value for p in onnx.load(source).metadata_props}
    meta["ikmdn.format"] = fmt
    meta["ikmdn.refine"] = json.dumps({**{f: getattr(settings, f) for f in settings.__dataclass_fields__},
                                       "phases": []})
    helper.set_model_props(out, meta)
    onnx.checker.check_model(out, full_check=True)
    onnx.save(out, dest)
    return dest


def sample_targets(arm, n: int, seed: int) -> np.ndarray:
    """n reachable targets (fk of joints drawn within the limits) and, for position arms, two out
    of reach."""
    x = arm.fk(arm.sample_joints(n, np.random.default_rng(seed)))
    if not arm.pose_targets:
        x = np.concatenate([x, np.full((1, arm.target_dim), 5.0), -np.full((1, arm.target_dim), 0.01)])
    return x


def target_rows(arm, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Targets x (N, target_dim) as a targets file's rows: pose arms as x,y,z,qw,qx,qy,qz with
    quaternions scaled and signed at random (not unit, w of either sign), others as they are."""
    from ikmdn.arms.rotations import matrix_to_quat, sixd_to_matrix

    if not arm.pose_targets:
        return x
    rng = np.random.default_rng(seed)
    quats = matrix_to_quat(sixd_to_matrix(x[:, 3:9]))
    quats *= rng.choice([-1.0, 1.0], size=(len(x), 1)) * rng.uniform(0.5, 2.0, size=(len(x), 1))
    return np.concatenate([x[:, :3], quats], axis=1)


def write_targets(path: Path, arm, rows: np.ndarray) -> tuple[Path, np.ndarray]:
    """rows written as a targets .csv with a header and a comment, as `ikmdn solve --targets`
    reads it; also returns the targets the model is given (pose arms: converted from the
    quaternions as `ikmdn solve` does)."""
    from ikmdn.arms.serial import pose_targets
    from ikmdn.solve_output import POSE_INPUT

    names = POSE_INPUT if arm.pose_targets else arm.target_names
    text = ",".join(names) + "\n" + "".join(",".join(repr(float(v)) for v in r) + "\n" for r in rows)
    path.write_text("# targets for the Node.js client test\n" + text)
    return path, pose_targets(rows[:, :3], rows[:, 3:]) if arm.pose_targets else rows


# -- hand-built format-2 models: the exact bytes of `ikmdn solve` -----------------------------------

@pytest.mark.parametrize("name", ["bishop", "planar3", "rrr3", "ur5"])
def test_prints_what_ikmdn_solve_prints(node_client, tmp_path, name):
    """On a format-2 model holding the Python solver's own results, the client's JSON is the
    CLI's, byte for byte: same candidates, merged weights, order, reachable flags, numbers."""
    from ikmdn.runtime import OnnxModel
    from ikmdn.solve import IKSolver
    from ikmdn.solve_output import write_json

    source = SHIPPED / f"{name}.onnx"
    model = OnnxModel.load(source)
    arm = model.arm
    rows = target_rows(arm, sample_targets(arm, 24, seed=1), seed=2)
    csv, x = write_targets(tmp_path / "targets.csv", arm, rows)
    solver = IKSolver(model)
    expected = solver.solve(x)
    # The CLI's extra seeds for targets no mode solves are not in a graph: keep targets without.
    if expected.fallback.any():
        csv, x = write_targets(tmp_path / "kept.csv", arm, rows[~expected.fallback])
        expected = solver.solve(x)
    assert not expected.fallback.any()
    fixture = format2_fixture(source, x, tmp_path / f"{name}-format2.onnx")
    text = io.StringIO()
    write_json(text, str(fixture), arm, [expected], best=False)

    done = node_client(fixture, csv)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == text.getvalue()
    printed = json.loads(done.stdout)
    assert len(printed["solutions"]) == len(x)
    assert any(s["reachable"] for s in printed["solutions"])
    if not arm.pose_targets:
        assert not all(s["reachable"] for s in printed["solutions"])  # the two out of reach
    if arm.kind != "planar":
        assert all(s["fallback"] is False for s in printed["solutions"])
    # Some target had modes that merged (Bishop's arm: most), so the merge was exercised.
    if name == "bishop":
        merged = expected.distinct.sum(axis=1) < expected.distinct.shape[1]
        assert merged.any()


def test_empty_targets_file(node_client, tmp_path):
    source = SHIPPED / "bishop.onnx"
    fixture = format2_fixture(source, np.array([[0.6, 0.7]]), tmp_path / "bishop-format2.onnx")
    empty = tmp_path / "empty.csv"
    empty.write_text("x,y\n# nothing to solve\n")
    done = node_client(fixture, empty)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ('{"model": ' + json.dumps(str(fixture)) + ', "arm": "bishop", '
                           '"joint_names": ["q1", "q2"], "solutions": [\n]}\n')


# -- the shipped models, once format 2: parity with `ikmdn solve` ----------------------------------

def _format2_models() -> list:
    paths = [SHIPPED / f"{n}.onnx" for n in ("bishop", "planar2", "planar3", "rrr3", "ur5", "panda")]
    if os.environ.get("IKMDN_NODE_MODEL"):
        paths.append(Path(os.environ["IKMDN_NODE_MODEL"]))
    return [pytest.param(p, id=p.name if p.parent == SHIPPED else f"env:{p.name}") for p in paths]


@pytest.mark.parametrize("model_path", _format2_models())
def test_matches_ikmdn_solve(node_client, tmp_path, model_path):
    """The client on a format-2 model (the refinement in the graph) against `ikmdn solve --format
    json` on the same file (the refinement in Python): the same arm, joint names, solutions,
    reachable flags and candidates per target; weights within 1e-6; joints within 1e-9 rad and
    errors within 1e-9 (absolute) on candidates that are solutions in both, 1e-4 and 1e-6 on
    those stalled in a local minimum (see STALLED_JOINT_TOL). Where the CLI answered from its
    extra seeds ("fallback": true), which a graph has not, only the flags are compared."""
    if not model_path.is_file():
        pytest.skip(f"{model_path} does not exist")
    fmt = model_format(model_path)
    if fmt != "2":
        pytest.skip(f"{model_path.name} is ikmdn format {fmt}; the client needs format 2 "
                    "(the refined solver in the graph): re-export it with `ikmdn export`")
    from ikmdn.runtime import OnnxModel

    arm = OnnxModel.load(model_path).arm
    csv, x = write_targets(tmp_path / "targets.csv", arm,
                           target_rows(arm, sample_targets(arm, 40, seed=3), seed=4))

    cli = invoke("solve", "--model", model_path, "--targets", csv, "--format", "json")
    assert cli.exit_code == 0, (cli.output, cli.exception)
    done = node_client(model_path, csv)
    assert done.returncode == 0, done.stderr
    python, node = json.loads(cli.stdout), json.loads(done.stdout)

    assert node["model"] == python["model"] == str(model_path)
    assert node["arm"] == python["arm"] == arm.name
    assert node["joint_names"] == python["joint_names"] == list(arm.joint_names)
    assert len(node["solutions"]) == len(python["solutions"]) == len(x)
    compared = solutions = 0
    for i, (ours, theirs) in enumerate(zip(node["solutions"], python["solutions"], strict=True)):
        where = f"target {i} {theirs['target']}"
        np.testing.assert_allclose(ours["target"], theirs["target"], rtol=0, atol=1e-15, err_msg=where)
        assert ours.keys() == theirs.keys(), where
        if theirs.get("fallback"):
            assert ours["fallback"] is False, where
            continue
        assert ours.get("fallback", False) is False, where
        assert ours["reachable"] == theirs["reachable"], where
        assert len(ours["candidates"]) == len(theirs["candidates"]), where
        for a, b in zip(ours["candidates"], theirs["candidates"], strict=True):
            assert a.keys() == b.keys(), where
            assert a["within_limits"] == b["within_limits"], where
            assert is_solution(a) == is_solution(b), (where, a, b)
            joint_tol, error_tol = ((JOINT_TOL, ERROR_TOL) if is_solution(b)
                                    else (STALLED_JOINT_TOL, STALLED_ERROR_TOL))
            if is_solution(b) and arm.dof > arm.residual_dim:   # redundant: see the constant
                joint_tol = REDUNDANT_JOINT_TOL
            np.testing.assert_allclose(a["joints"], b["joints"], rtol=0, atol=joint_tol, err_msg=where)
            np.testing.assert_allclose(a["weight"], b["weight"], rtol=0, atol=WEIGHT_TOL, err_msg=where)
            np.testing.assert_allclose(a["sigma"], b["sigma"], rtol=1e-6, err_msg=where)
            np.testing.assert_allclose(a["error"], b["error"], rtol=0, atol=error_tol, err_msg=where)
            np.testing.assert_allclose(a["position"], b["position"], rtol=0, atol=error_tol,
                                       err_msg=where)
            if "rotation_error_deg" in b:
                np.testing.assert_allclose(np.radians(a["rotation_error_deg"]),
                                           np.radians(b["rotation_error_deg"]), rtol=0,
                                           atol=error_tol, err_msg=where)
            solutions += is_solution(b)
        compared += 1
    assert compared >= len(python["solutions"]) // 2
    assert solutions >= compared // 2   # most candidates met the tight tolerances


def is_solution(candidate: dict) -> bool:
    """A candidate that counts as a solution: in limits, errors <= REACH_TOL (as `reachable`)."""
    return (candidate["within_limits"] and candidate["error"] <= REACH_TOL
            and np.radians(candidate.get("rotation_error_deg", 0.0)) <= REACH_TOL)


# -- bad input ------------------------------------------------------------------------------------

@pytest.fixture
def bishop_format2(tmp_path):
    return format2_fixture(SHIPPED / "bishop.onnx", np.array([[0.6, 0.7]]), tmp_path / "b2.onnx")


@pytest.mark.parametrize("content", [
    "x,y\n0.6;0.7\n",          # not a number
    "x,z\n0.6,0.7\n",          # a header that does not name the columns
    "0.6,nan\n",               # not finite
    "0.6,0.7,1\n",             # a column too many
    "0.6,1e10\n",              # beyond the range the model takes
    "0.6,1e39\n",              # beyond float32
    "\n# comment\n0.5,0.5\n0.6,0.7,\n",  # an empty field, line 4
])
def test_bad_targets_file_the_cli_message(node_client, tmp_path, bishop_format2, content):
    """A bad targets file: exit 2 and the one line `ikmdn solve` prints for it."""
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    cli = invoke("solve", "--model", SHIPPED / "bishop.onnx", "--targets", csv, "--format", "json")
    assert cli.exit_code == 2
    assert error_line(node_client(bishop_format2, csv)) == cli.stderr.strip().splitlines()[-1]


def test_bad_usage(node_client, tmp_path, bishop_format2):
    assert "usage: node solve.js MODEL.onnx TARGETS.csv" in error_line(node_client())
    assert "usage" in error_line(node_client(bishop_format2))
    csv = tmp_path / "t.csv"
    csv.write_text("0.6,0.7\n")
    assert error_line(node_client(tmp_path / "nope.onnx", csv)) == \
        f"Error: model file {tmp_path / 'nope.onnx'} does not exist"
    assert error_line(node_client(bishop_format2, tmp_path / "nope.csv")) == \
        f"Error: targets file {tmp_path / 'nope.csv'} does not exist"
    assert "must end in .csv" in error_line(node_client(bishop_format2, tmp_path / "t.npy"))
    not_onnx = tmp_path / "text.onnx"
    not_onnx.write_text("this is not a model\n" * 10)
    assert error_line(node_client(not_onnx, csv)) == \
        f"Error: {not_onnx} is not an ONNX model file (its protobuf does not parse)"


def test_refuses_a_format_1_model(node_client, tmp_path):
    old = format2_fixture(SHIPPED / "bishop.onnx", np.array([[0.6, 0.7]]), tmp_path / "old.onnx",
                          fmt="1")
    csv = tmp_path / "t.csv"
    csv.write_text("0.6,0.7\n")
    line = error_line(node_client(old, csv))
    assert "format 1" in line and "needs format 2" in line
