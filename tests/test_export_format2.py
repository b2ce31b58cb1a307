"""ONNX format 2 (DESIGN.md "ONNX format 2"): the file contract, and the refinement graph pinned to
the Python refinement (the numba kernel of ikmdn.refine) candidate by candidate on every arm family.

Parity is measured on the exported refinement graph itself (the part of every format-2 file after
the network, run by ONNX Runtime on chosen seeds) for planar arms with and without a hand angle,
DH chains with position and pose targets, a redundant 7-joint arm, and URDF chains with
prismatic and continuous joints; and end to end (network + refinement in one file) against
IKSolver for the tiny trained planar models of conftest.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT, outside_targets, workspace_targets

import ikmdn
from ikmdn.arms import get_arm, load_urdf
from ikmdn.arms.base import TWO_PI
from ikmdn.errors import IKMDNError
from ikmdn.export import export_onnx, format2_bytes, refine_graph_proto
from ikmdn.refine import RefineSettings, default_settings, refine, residual_norm
from ikmdn.refine_graph import RefineGraph, default_phases
from ikmdn.runtime import OUTPUT_NAMES, REFINED_OUTPUT_NAMES, OnnxModel, session_options
from ikmdn.solve import IKSolver, merge_duplicates

torch = pytest.importorskip("torch")

DATA = ROOT / "tests" / "data"
SHIPPED = ROOT / "exported_models"
JOINT_TOL = 1e-9          # rad: graph vs kernel where both converged
AGREEMENT = 0.999         # share of candidates whose converged flags agree
K = 4


def _arms():
    return {
        "bishop": lambda: get_arm("bishop"),
        "planar2": lambda: get_arm("planar2"),
        "planar3": lambda: get_arm("planar3"),          # (x, y, phi): the wrapped hand angle
        "rrr3": lambda: get_arm("rrr3"),                # DH chain, position targets
        "ur5": lambda: get_arm("ur5"),                  # DH chain, pose targets, +-2 pi joints
        "urdf-ur5": lambda: load_urdf(DATA / "ur5_ros.urdf", "tool0", base_link="base"),
        # revolute, prismatic and continuous joints, tilted axes, fixed joints folded in
        "urdf-small-position": lambda: load_urdf(DATA / "small_chain.urdf", "tool",
                                                 target="position"),
        "urdf-small-pose": lambda: load_urdf(DATA / "small_chain.urdf", "tool"),
    }


ARMS = _arms()
_SESSIONS: dict[str, tuple] = {}


def refinement_session(name: str):
    """(arm, settings, ONNX Runtime session of the exported refinement graph) per arm, cached."""
    if name not in _SESSIONS:
        arm = ARMS[name]() if name in ARMS else get_arm(name)
        settings = default_settings(arm)
        proto = refine_graph_proto(arm, K, settings)
        onnx.checker.check_model(proto, full_check=True)
        session = ort.InferenceSession(proto.SerializeToString(), session_options(1),
                                       providers=["CPUExecutionProvider"])
        _SESSIONS[name] = (arm, settings, session)
    return _SESSIONS[name]


def seeds_and_targets(arm, n: int, seed: int):
    """Targets (n, td) (fk of random joints; for planar position arms a tenth beyond reach) and
    seeds (n, K, dof) float32 as a network gives them: the true joints plus noise, some uniform."""
    rng = np.random.default_rng(seed)
    truth = arm.sample_joints(n, rng)
    x = arm.fk(truth)
    if arm.kind == "planar":
        far = n // 10
        x[:far] = outside_targets(arm, far, seed)
    seeds = truth[:, None, :] + rng.normal(scale=0.25, size=(n, K, arm.dof))
    seeds[:, -1] = arm.sample_joints(n, rng)
    weights = rng.dirichlet(np.ones(K), n).astype(np.float32)
    weights[: n // 5, 1] = weights[: n // 5, 0]       # ties: the lower index counts as heavier
    return x, seeds.astype(np.float32), weights


def graph_vs_kernel(name: str, n: int, seed: int = 0):
    arm, settings, session = refinement_session(name)
    x, seeds, weights = seeds_and_targets(arm, n, seed)
    out = dict(zip(REFINED_OUTPUT_NAMES,
                   session.run(list(REFINED_OUTPUT_NAMES),
                               {"targets": x, "weights": weights, "means": seeds}), strict=True))
    xs = np.repeat(x, K, axis=0)
    q, reached, err = refine(arm, seeds.astype(np.float64).reshape(-1, arm.dof), xs, settings)
    return arm, settings, x, weights, out, xs, q, reached, err


def _converged(arm, settings, out, xs, err):
    graph = residual_norm(arm, out["positions"].reshape(len(xs), -1), xs) <= settings.tol
    return err <= settings.tol, graph


# -- the refinement graph against the kernel, candidate by candidate ------------------------------

@pytest.mark.parametrize("name", list(ARMS))
def test_refinement_graph_matches_the_kernel(name):
    arm, settings, x, weights, out, xs, q, reached, err = graph_vs_kernel(name, 120)
    kernel_conv, graph_conv = _converged(arm, settings, out, xs, err)
    assert np.mean(kernel_conv == graph_conv) >= AGREEMENT
    both = kernel_conv & graph_conv
    assert both.sum() >= 0.3 * len(both), f"too few converged candidates to compare ({both.sum()})"
    joints = out["joints"].reshape(-1, arm.dof)
    assert np.abs(joints[both] - q[both]).max() <= JOINT_TOL
    # the other outputs agree with numpy on the graph's own joints (everywhere) ...
    positions = out["positions"].reshape(-1, arm.target_dim)
    np.testing.assert_allclose(positions, arm.fk(joints), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["errors"].reshape(-1), arm.target_error(positions, xs),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out["rotation_errors"].reshape(-1), arm.rotation_error(positions, xs),
                               rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["within_limits"].reshape(-1), arm.within_limits(joints))
    # ... and with the kernel's results where both converged
    np.testing.assert_allclose(out["errors"].reshape(-1)[both], arm.target_error(reached, xs)[both],
                               rtol=0, atol=1e-12)
    assert np.all(out["within_limits"].reshape(-1)[both] == arm.within_limits(q)[both])


@pytest.mark.parametrize("name", list(ARMS))
def test_distinct_is_the_solver_merge(name):
    """distinct = IKSolver's merge (heaviest first, each compared with the heavier distinct ones,
    1e-6 rad modulo 2 pi), on the graph's joints and on the kernel's where they agree."""
    arm, settings, x, weights, out, xs, q, reached, err = graph_vs_kernel(name, 120, seed=1)
    n = len(x)
    order = np.argsort(-weights, axis=1, kind="stable")
    rows = np.arange(n)[:, None]
    _, distinct = merge_duplicates(out["joints"][rows, order], weights[rows, order].astype(np.float64))
    expected = np.empty_like(distinct)
    expected[rows, order] = distinct
    np.testing.assert_array_equal(out["distinct"], expected)
    kernel_conv, graph_conv = _converged(arm, settings, out, xs, err)
    same = (kernel_conv & graph_conv).reshape(n, K).all(axis=1)   # every candidate converged
    _, kernel_distinct = merge_duplicates(q.reshape(n, K, arm.dof)[rows, order],
                                          weights[rows, order].astype(np.float64))
    np.testing.assert_array_equal(distinct[same], kernel_distinct[same])
    assert (~out["distinct"]).any() or name == "urdf-small-pose", "no duplicate was exercised"


def test_redundant_arm_converges_with_the_kernel():
    """Panda (7 joints, 6-D pose targets): converged flags agree and the converged joints agree
    to rounding along the self-motion. On a redundant arm LM's damped steps leave the null space
    to rounding, amplified by 1 / lam (lam down to 1e-12): ONNX Runtime's sin and cos differ from
    libm's in the last bit, so a few converged candidates (about 3%) drift apart by up to ~1e-5
    rad along the self-motion, each still an exact solution."""
    arm, settings, x, weights, out, xs, q, reached, err = graph_vs_kernel("panda", 100)
    kernel_conv, graph_conv = _converged(arm, settings, out, xs, err)
    assert np.mean(kernel_conv == graph_conv) >= AGREEMENT
    both = kernel_conv & graph_conv
    diff = np.abs(out["joints"].reshape(-1, arm.dof) - q).max(axis=1)[both]
    assert np.mean(diff <= JOINT_TOL) >= 0.9 and diff.max() <= 1e-4
    joints = out["joints"].reshape(-1, arm.dof)
    assert np.all(residual_norm(arm, arm.fk(joints), xs)[both] <= 10 * settings.tol)


def test_torch_module_matches_the_kernel():
    """The torch module run eagerly (the medium tracing exports) agrees with the kernel too."""
    for name in ("planar3", "ur5", "urdf-small-position"):
        arm = ARMS[name]()
        settings = default_settings(arm)
        x, seeds, _ = seeds_and_targets(arm, 60, 3)
        q0 = seeds.astype(np.float64).reshape(-1, arm.dof)
        xs = np.repeat(x, K, axis=0)
        q, _, err = refine(arm, q0, xs, settings)
        with torch.no_grad():
            gq, _, gerr = (t.numpy() for t in RefineGraph(arm, settings).refine(
                torch.from_numpy(q0), torch.from_numpy(xs)))
        both = (err <= settings.tol) & (gerr <= settings.tol)
        assert np.mean((err <= settings.tol) == (gerr <= settings.tol)) >= AGREEMENT, name
        assert np.abs(gq[both] - q[both]).max() <= JOINT_TOL, name


def test_stopping_rules_and_settings_reach_the_graph():
    """Other settings (few iterations, other phases, big damping) change graph and kernel alike."""
    arm = get_arm("planar3")
    settings = RefineSettings(max_iter=5, damping=1e-2, stall=0.5)
    proto = refine_graph_proto(arm, K, settings, phases=(1, 4))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x, seeds, weights = seeds_and_targets(arm, 100, 4)
    joints, = session.run(["joints"], {"targets": x, "weights": weights, "means": seeds})
    q, _, _ = refine(arm, seeds.astype(np.float64).reshape(-1, arm.dof), np.repeat(x, K, axis=0),
                     settings)
    assert np.abs(joints.reshape(-1, arm.dof) - q).max() <= 1e-9


def test_default_phases():
    assert default_phases(30) == (2, 2, 2, 2, 4, 4, 14)
    assert default_phases(100) == (2, 2, 2, 2, 4, 4, 8, 8, 16, 16, 36)
    assert default_phases(3) == (3,) and default_phases(5) == (2, 3) and default_phases(0) == ()
    with pytest.raises(IKMDNError, match="sum to max_iter"):
        RefineGraph(get_arm("bishop"), RefineSettings(max_iter=10), phases=(2, 2))


# -- end to end: network and refinement in one file, against IKSolver ---------------------------

@pytest.fixture(scope="module")
def format2_models(trained_models, tmp_path_factory):
    """name -> (format-2 path, format-1 path) of the tiny trained models of conftest."""
    out = {}
    for name in ("bishop", "planar2", "planar3"):
        trained = trained_models(name)
        path = tmp_path_factory.mktemp(f"f2-{name}") / f"{name}.onnx"
        report = export_onnx(trained.checkpoint, path, onnx_format=2)
        assert report.ok and report.refine is not None and report.refine.ok, report.summary()
        out[name] = (path, trained.onnx_path)
    return out


def _merged(weights, joints, distinct):
    """Weights (K,) after a client's merge: each duplicate's weight added to the heaviest distinct
    candidate it matches within 1e-6 rad modulo 2 pi (DESIGN.md)."""
    w = weights.astype(np.float64).copy()
    for j in np.flatnonzero(~distinct):
        d = np.abs(joints[distinct] - joints[j]) % TWO_PI
        match = np.flatnonzero(distinct)[np.minimum(d, TWO_PI - d).max(axis=1) <= 1e-6]
        heaviest = match[np.argsort(-w[match], kind="stable")][0]
        w[heaviest] += w[j]
        w[j] = 0.0
    return w


@pytest.mark.parametrize("name", ["bishop", "planar2", "planar3"])
def test_graph_solutions_equal_the_python_solver(format2_models, name):
    path, _ = format2_models[name]
    model = OnnxModel(path)
    arm = model.arm
    x = np.concatenate([workspace_targets(arm, 300, 11), outside_targets(arm, 30, 12)])
    out = model.refined(x)
    sol = IKSolver(model, fallback_seeds=0).solve(x)
    tol = model.refine_settings.tol
    assert np.mean(out.distinct.sum(axis=1) == sol.distinct.sum(axis=1)) >= AGREEMENT
    solved = (out.distinct & out.within_limits & (out.errors <= 1e-6)).any(axis=1)
    np.testing.assert_array_equal(solved, sol.reachable)
    checked = 0
    for i in range(len(x)):
        merged = _merged(out.weights[i], out.joints[i], out.distinct[i])
        for k in np.flatnonzero(out.distinct[i] & (out.errors[i] <= tol)):
            d = np.abs(sol.joints[i][sol.distinct[i]] - out.joints[i, k]).max(axis=1)
            j = np.flatnonzero(sol.distinct[i])[np.argmin(d)]
            assert d.min() <= JOINT_TOL, (i, k)
            assert sol.within_limits[i, j] == out.within_limits[i, k]
            assert abs(sol.errors[i, j] - out.errors[i, k]) <= 1e-9   # both solved to 1e-9
            assert abs(sol.weights[i, j] - merged[k]) <= 1e-6
            checked += 1
    assert checked >= len(x)


def test_predict_of_format2_is_format1s(format2_models):
    """The network-only session of a format-2 file returns what the format-1 file returns."""
    path2, path1 = format2_models["planar3"]
    m2, m1 = OnnxModel(path2), OnnxModel(path1)
    x = workspace_targets(m1.arm, 50, 5)
    a, b = m2.predict(x), m1.predict(x)
    for field in ("weights", "means", "sigmas"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    out = m2.refined(x)
    np.testing.assert_array_equal(out.means, b.means)
    assert m2.session.get_inputs()[0].type == "tensor(double)"
    assert [o.name for o in m2.session.get_outputs()] == list(OUTPUT_NAMES)


# -- the file contract -------------------------------------------------------------------------

def _dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value.type.tensor_type.shape.dim]


def test_format2_file_contract(format2_models, trained_models):
    path, _ = format2_models["planar3"]
    trained = trained_models("planar3")
    arm, k = trained.arm, trained.checkpoint.config.components
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # one self-contained file
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto, full_check=True)
    assert all(o.version >= 17 for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    graph = proto.graph
    assert [i.name for i in graph.input] == ["targets"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    batch, width = _dims(graph.input[0])
    assert isinstance(batch, str) and width == arm.target_dim
    f32, f64, boolean = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.BOOL
    expected = {"weights": (f32, [batch, k]), "means": (f32, [batch, k, arm.dof]),
                "sigmas": (f32, [batch, k, arm.dof]), "joints": (f64, [batch, k, arm.dof]),
                "positions": (f64, [batch, k, arm.target_dim]), "errors": (f64, [batch, k]),
                "rotation_errors": (f64, [batch, k]), "within_limits": (boolean, [batch, k]),
                "distinct": (boolean, [batch, k])}
    assert [o.name for o in graph.output] == list(expected)
    for o in graph.output:
        assert (o.type.tensor_type.elem_type, _dims(o)) == expected[o.name], o.name
    for t in graph.initializer:
        assert t.data_location != onnx.TensorProto.EXTERNAL and not t.external_data
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["ikmdn.format"] == "2" and meta["ikmdn.version"] == ikmdn.__version__
    assert json.loads(meta["ikmdn.arm"]) == arm.spec()
    assert json.loads(meta["ikmdn.train"]) == trained.checkpoint.config.to_dict()
    refine_meta = json.loads(meta["ikmdn.refine"])
    settings = default_settings(arm)
    assert refine_meta == {**settings.__dict__, "phases": list(default_phases(settings.max_iter))}
    model = OnnxModel(path)   # every model-file check of the runtime
    assert (model.format, model.components, model.refine_settings) == (2, k, settings)
    # batch axis dynamic; outputs typed as the contract says
    for n in (1, 7):
        out = model.refined(workspace_targets(arm, n, n))
        assert out.joints.shape == (n, k, arm.dof) and out.joints.dtype == np.float64
        assert out.positions.shape == (n, k, arm.target_dim)
        assert out.errors.dtype == out.rotation_errors.dtype == np.float64
        assert out.within_limits.dtype == out.distinct.dtype == np.bool_
        assert out.weights.dtype == out.means.dtype == out.sigmas.dtype == np.float32
        assert np.all(out.distinct.any(axis=1))


def test_raw_export_is_format1(trained_models, tmp_path):
    path = tmp_path / "raw.onnx"
    report = export_onnx(trained_models("bishop").checkpoint, path, onnx_format=1)
    assert report.refine is None
    model = OnnxModel(path)
    assert model.format == 1 and model.refine_settings is None
    with pytest.raises(IKMDNError, match="ikmdn.format 1.*re-export"):
        model.refined([[0.6, 0.3]])


def test_cli_export_writes_format2_and_raw_format1(trained_models, tmp_path):
    from click.testing import CliRunner

    from ikmdn.cli import cli

    run = trained_models("bishop").run_dir
    for extra, fmt in (((), 2), (("--raw",), 1)):
        out = tmp_path / f"f{fmt}.onnx"
        result = CliRunner().invoke(cli, ["export", str(run), "-o", str(out), *extra])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].startswith("parity PyTorch vs ONNX Runtime") and lines[0].endswith(": ok")
        assert ("refinement graph vs Python" in lines[0]) == (fmt == 2)
        assert lines[-1].startswith(f"wrote {out} (ikmdn.format {fmt}, ")
        assert OnnxModel(out).format == fmt


def test_refine_check_of_shipped_models():
    """The export-time check (export.refine_check) passes on the shipped files; a redundant arm's
    joints are reported, not bounded."""
    from ikmdn.export import refine_check

    for name, redundant in (("planar3", False), ("ur5", False), ("panda", True)):
        check = refine_check(OnnxModel(SHIPPED / f"{name}.onnx"), n=32)
        assert check.ok and check.redundant == redundant, (name, check.summary())
        assert check.agreement >= AGREEMENT
        if not redundant:
            assert check.joints_agreement == 1.0 and check.joints_max <= JOINT_TOL


def test_format2_export_is_deterministic():
    """Same network, same bytes (a shipped file rebuilt from its own network is itself)."""
    from ikmdn.export import format1_bytes

    shipped = (SHIPPED / "bishop.onnx").read_bytes()
    assert format2_bytes(format1_bytes(shipped), source=str(SHIPPED / "bishop.onnx")) == shipped


def test_format2_from_a_format2_file_is_refused():
    with pytest.raises(IKMDNError, match="built around a format-1 network"):
        format2_bytes((SHIPPED / "bishop.onnx").read_bytes())


def test_shipped_models_are_format2():
    for path in sorted(SHIPPED.glob("*.onnx")):
        model = OnnxModel(path)
        assert model.format == 2, path.name
        assert model.refine_settings == default_settings(model.arm), path.name
        x = model.arm.fk(model.arm.sample_joints(3, np.random.default_rng(0)))
        assert model.predict(x).means.shape == (3, model.components, model.arm.dof)


# -- format-2 metadata read as untrusted input ---------------------------------------------------

def _with_refine(value: str | None) -> bytes:
    proto = onnx.load_from_string((SHIPPED / "bishop.onnx").read_bytes())
    props = [(p.key, p.value) for p in proto.metadata_props if p.key != "ikmdn.refine"]
    if value is not None:
        props.append(("ikmdn.refine", value))
    del proto.metadata_props[:]
    for key, v in props:
        proto.metadata_props.add(key=key, value=v)
    return proto.SerializeToString()


GOOD = {**RefineSettings().__dict__, "phases": [2, 2, 2, 2, 4, 4, 14]}


@pytest.mark.parametrize("value, fragment", [
    (None, "lacks ikmdn.refine"),
    ("[]", "must be a JSON object"),
    (json.dumps({**GOOD, "phases": [2, 2]}), "summing to max_iter (30)"),
    (json.dumps({**GOOD, "phases": [30.0]}), "phases must be"),
    (json.dumps({**GOOD, "tol": "small"}), "tol must be a finite non-negative number"),
    (json.dumps({**GOOD, "max_iter": 2.5}), "max_iter must be a non-negative integer"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "stall"}), "missing ['stall']"),
    (json.dumps({**GOOD, "extra": 1}), "unknown ['extra']"),
], ids=["missing", "not-object", "phases-sum", "phases-float", "tol-string", "max-iter-float",
        "missing-field", "unknown-field"])
def test_bad_refine_metadata_is_a_one_line_error(value, fragment):
    with pytest.raises(IKMDNError) as exc:
        OnnxModel(_with_refine(value))
    assert fragment in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
