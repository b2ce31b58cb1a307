"""The autoregressive mixture: its density (scipy oracle, normalisation by quadrature), the beam
search (against enumeration), the joint-order search (against UR5's closed-form decoupling),
training, checkpoints, export parity (formats 1 and 2) and solving with it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from helpers import assert_ok, invoke
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from ikmdn.arms import get_arm
from ikmdn.autoregressive import AutoregressiveMixture, wrapped_mixture_log_prob
from ikmdn.data import make_ik_dataset
from ikmdn.errors import IKMDNError
from ikmdn.joint_order import find_joint_order
from ikmdn.mdn import MDNConfig
from ikmdn.train import TrainConfig, default_config


def _model(arm_name: str, components: int, m: int = 3, order=(), seed: int = 0,
           periodic: bool | None = None) -> AutoregressiveMixture:
    arm = get_arm(arm_name)
    flags = arm.continuous_joints if periodic is None else np.full(arm.dof, periodic)
    config = MDNConfig(input_dim=arm.target_dim, output_dim=arm.dof, components=components,
                       hidden=(16,), factor_hidden=(16, 8), kind="autoregressive",
                       factor_components=m, joint_order=order,
                       angular_inputs=tuple(arm.angular_targets), periodic_outputs=tuple(flags))
    torch.manual_seed(seed)
    model = AutoregressiveMixture(config).double()
    data = make_ik_dataset(arm, 500, seed)
    model.set_normalization(data.inputs, data.outputs)
    with torch.no_grad():  # spread the outputs so that the test is not about an untrained net
        for p in model.parameters():
            p.mul_(3.0)
    return model


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.booleans(), st.integers(0, 10_000))
def test_log_prob_matches_scipy(m, periodic, seed):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(m))
    mu, sigma, y = rng.uniform(-3, 3, m), rng.uniform(0.05, 1.5, m), rng.uniform(-3.5, 3.5)
    shifts = (-2 * np.pi, 0.0, 2 * np.pi) if periodic else (0.0,)
    expected = special.logsumexp([np.log(w[i]) + stats.norm.logpdf(y + s, mu[i], sigma[i])
                                  for i in range(m) for s in shifts])
    got = wrapped_mixture_log_prob(*(torch.tensor(np.asarray(a), dtype=torch.float64)
                                     for a in (np.log(w), mu, sigma, y)), torch.tensor(periodic))
    assert float(got) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_density_integrates_to_one():
    """exp(-nll) over a grid of both periodic joints of planar2 sums to 1: the factors are
    normalised conditionals and the chain rule is applied in the right order."""
    model = _model("planar2", components=4, order=(1, 0), periodic=True)
    with torch.no_grad():  # spreads of 0.04-1.5 rad: the +-1 wrap images hold all but 1e-5
        model.factors.biases[-1][..., 2 * 3:] -= 1.0
    n = 800
    grid = torch.linspace(-math.pi, math.pi, n + 1, dtype=torch.float64)[:-1]
    q = torch.cartesian_prod(grid, grid)
    x = torch.tensor([[0.7, -0.4]], dtype=torch.float64).expand(len(q), -1)
    with torch.no_grad():
        log_p = model.factor_log_probs(x, q).sum(0) - torch.log(model.out_std).sum()
    integral = float(log_p.exp().sum()) * (2 * math.pi / n) ** 2
    assert integral == pytest.approx(1.0, abs=1e-4)


def _enumerate(model: AutoregressiveMixture, x: torch.Tensor):
    """All joint combinations of factor means for one target x (1, in), scored one by one by
    the sum of the chosen log weights; periodic joints wrapped into [-pi, pi). Returns
    [(score, joints, spreads)], best first."""
    c, m = model.config.output_dim, model.config.factor_components
    mean, std, _ = model._ordered_stats()
    contexts = model._contexts(x)
    rows = []
    for combo in itertools.product(range(m), repeat=c):
        values, score, spread = torch.zeros(1, 0, dtype=x.dtype), 0.0, []
        for j, comp in enumerate(combo):
            first = model._first_layer(contexts[:, j], values, mean, std, j)
            log_w, mu, sigma = (t[0].numpy() for t in model._head(model.factors.factor(j, first)))
            score += float(log_w[comp])
            q = mu[comp] * float(std[j]) + float(mean[j])
            if model.config.periodic_outputs[model.config.joint_order[j]]:  # later factors see
                q = (q + np.pi) % (2 * np.pi) - np.pi                    # it within [-pi, pi)
            values = torch.cat([values, torch.tensor([[q]], dtype=x.dtype)], 1)
            spread.append(float(sigma[comp] * std[j]))
        rows.append((score, values[0, model.inverse_order].numpy(),
                     np.array(spread)[model.inverse_order.numpy()]))
    return sorted(rows, key=lambda r: -r[0])


def test_earlier_joints_are_fed_as_the_beam_sees_them():
    """In-limit joints (all training sees) enter the later factors as they are; a non-periodic
    joint's far-off value at 4 standard deviations, a periodic joint's (a URDF's +-2 pi)
    wrapped into [-pi, pi), in training as in the beam."""
    rng = np.random.default_rng(0)
    flat = _model("planar3", components=4, periodic=False)
    mean, std, _ = flat._ordered_stats()
    q = torch.tensor(get_arm("planar3").sample_joints(200, rng))
    expected = torch.stack([torch.cos(q), torch.sin(q), (q - mean) / std], dim=-1).reshape(200, -1)
    assert torch.equal(flat._joint_features(q, mean, std), expected)
    far = mean + torch.tensor([1e4, -1e4, 0.5], dtype=mean.dtype) * std
    features = flat._joint_features(far[None], mean, std).reshape(3, 3)
    np.testing.assert_allclose(features[:, 2].numpy(), [4.0, -4.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(features[0, 0].numpy(), np.cos(float(mean[0] + 4 * std[0])), rtol=1e-12)
    turning = _model("planar3", components=4, periodic=True)
    mean, std, _ = turning._ordered_stats()
    turned = torch.tensor([[5.0, -5.0, 1.0]], dtype=mean.dtype)
    wrapped = torch.tensor([[5.0 - 2 * math.pi, 2 * math.pi - 5.0, 1.0]], dtype=mean.dtype)
    np.testing.assert_allclose(turning._joint_features(turned, mean, std).numpy(),
                               turning._joint_features(wrapped, mean, std).numpy(), atol=1e-12)


@pytest.mark.parametrize("beam", [9, 4])
def test_beam_search_matches_enumeration(beam):
    """With 3 components and 2 joints every prefix survives the first step, so the beam holds
    the best `beam` of all 9 combinations, in score order, with softmax(score) weights."""
    model = _model("planar2", components=beam, order=(1, 0))
    x = torch.tensor([[0.6, 0.5]], dtype=torch.float64)
    with torch.no_grad():
        weights, means, sigmas = model(x)
        rows = _enumerate(model, x)[:beam]
    scores = np.array([r[0] for r in rows])
    np.testing.assert_allclose(means[0].numpy(), np.stack([r[1] for r in rows]), atol=1e-12)
    np.testing.assert_allclose(sigmas[0].numpy(), np.stack([r[2] for r in rows]), atol=1e-12)
    np.testing.assert_allclose(weights[0].numpy(), np.exp(scores - scores.max())
                               / np.exp(scores - scores.max()).sum(), atol=1e-12)


def _plain_beam(model: AutoregressiveMixture, x: torch.Tensor, beam: int):
    """The beam search written plainly for one target x (1, in): every beam a Python list of
    its joint values, each factor run beam by beam through _first_layer, candidates sorted by
    score (ties: beam, then component order). Returns (scores, joints, spreads), best first."""
    c = model.config.output_dim
    mean, std, _ = model._ordered_stats()
    contexts = model._contexts(x)
    beams = [(0.0, [], [])]
    for j in range(c):
        grown = []
        for score, values, spreads in beams:
            prefix = torch.tensor([values], dtype=x.dtype)
            first = model._first_layer(contexts[:, j], prefix, mean, std, j)
            log_w, mu, sigma = (t[0] for t in model._head(model.factors.factor(j, first)))
            for comp in range(len(log_w)):
                q = mu[comp] * std[j] + mean[j]
                if model.config.periodic_outputs[model.config.joint_order[j]]:
                    q = torch.remainder(q + math.pi, 2 * math.pi) - math.pi
                grown.append((score + float(log_w[comp]), values + [float(q)],
                              spreads + [float(sigma[comp] * std[j])]))
        beams = sorted(grown, key=lambda r: -r[0])[:beam]
    inverse = model.inverse_order.numpy()
    return (np.array([b[0] for b in beams]), np.array([b[1] for b in beams])[:, inverse],
            np.array([b[2] for b in beams])[:, inverse])


@pytest.mark.parametrize("periodic", [True, False])
def test_beam_search_matches_a_plain_beam_search(periodic):
    """Three joints with pruning at every step (3 components, beam 4): the graph's beam (state
    rows moved by one gather per step) keeps the plain search's candidates, in its order."""
    model = _model("planar3", components=4, order=(2, 0, 1), periodic=periodic)
    targets = torch.tensor(make_ik_dataset(get_arm("planar3"), 20, 5).inputs)
    with torch.no_grad():
        weights, means, sigmas = model(targets)
        for i in range(len(targets)):
            scores, joints, spreads = _plain_beam(model, targets[i:i + 1], 4)
            np.testing.assert_allclose(means[i].numpy(), joints, atol=1e-12)
            np.testing.assert_allclose(sigmas[i].numpy(), spreads, atol=1e-12)
            expected = np.exp(scores - scores.max())
            np.testing.assert_allclose(weights[i].numpy(), expected / expected.sum(), atol=1e-12)


def test_sample_is_seeded_and_follows_the_factors():
    model = _model("planar3", components=8)
    x = torch.tensor(make_ik_dataset(get_arm("planar3"), 4, 1).inputs)
    a = model.sample(x, torch.Generator().manual_seed(3))
    b = model.sample(x, torch.Generator().manual_seed(3))
    assert a.shape == (4, 3) and torch.equal(a, b)
    # a draw scores a finite likelihood under the teacher-forced factors
    assert torch.isfinite(model.nll(x, a))


def test_config_checks():
    arm = get_arm("ur5")
    base = dict(input_dim=arm.target_dim, output_dim=6, kind="autoregressive")
    with pytest.raises(IKMDNError, match="joint_order must list the joints 0 to 5"):
        MDNConfig(**base, joint_order=(0, 1, 2, 3, 4, 4))
    with pytest.raises(IKMDNError, match="joint_order is for autoregressive"):
        MDNConfig(input_dim=6, output_dim=6, joint_order=(0, 1, 2, 3, 4, 5))
    with pytest.raises(IKMDNError, match="a beam of 10 candidates"):
        MDNConfig(input_dim=2, output_dim=2, kind="autoregressive", factor_components=3,
                  components=10)
    with pytest.raises(IKMDNError, match="joint_order entry"):
        TrainConfig(arm="ur5", kind="autoregressive", joint_order=[0, 1, 2, 3, 4, 9])


def test_joint_order_finds_ur5_decoupling():
    """UR5's closed form solves the base, then the two wrist joints (q5, q6), then one of the
    elbow/shoulder/wrist-1 joints that the rest determine; the order search finds that."""
    order = find_joint_order(get_arm("ur5"), seed=0)
    assert order[:3] == (0, 4, 5) and sorted(order[3:]) == [1, 2, 3]
    assert find_joint_order(get_arm("ur5"), seed=0) == order  # seeded


def test_joint_order_of_a_redundant_arm_pins_one_joint_first():
    arm = get_arm("panda")
    order = find_joint_order(arm, seed=0)
    assert sorted(order) == list(range(7))
    assert find_joint_order(arm, seed=0) == order


def test_defaults_pick_the_model_by_the_arms_properties():
    assert default_config("ur5").kind == "autoregressive"
    assert default_config("panda").kind == "autoregressive"
    assert default_config("ur5").components == 16      # at most 16 solutions of a 6R arm
    panda = default_config("panda")                     # a redundant arm's continuum
    assert (panda.components, panda.factor_hidden, panda.epochs) == (24, (64, 64), 24)
    assert default_config("ur5").factor_hidden == (128, 128)
    assert default_config("bishop").kind == "mdn"
    assert default_config("ur5", kind="mdn").hidden == (256, 256, 256, 256)


@pytest.fixture(scope="module")
def planar3_ar(tmp_path_factory):
    from ikmdn.export import export_onnx
    from ikmdn.train import train_run

    config = TrainConfig(arm="planar3", kind="autoregressive", components=8, samples=4000,
                         epochs=3, hidden=(32, 32), factor_hidden=(32,), seed=0)
    run = tmp_path_factory.mktemp("ar-run")
    checkpoint = train_run(config, run)
    path = tmp_path_factory.mktemp("ar-onnx") / "planar3.onnx"
    report = export_onnx(checkpoint, path, onnx_format=2)
    assert report.ok, report.summary()
    return run, checkpoint, path


def test_training_stores_the_found_order_and_round_trips(planar3_ar):
    from ikmdn.checkpoint import load_checkpoint

    run, checkpoint, _ = planar3_ar
    assert checkpoint.config.joint_order == (0, 1, 2)
    again = load_checkpoint(run)
    assert again.model.config == checkpoint.model.config
    x = torch.tensor(make_ik_dataset(again.arm, 16, 5).inputs, dtype=torch.float32)
    for a, b in zip(again.model(x), checkpoint.model(x), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, value", [
    ("inverse_order", torch.tensor([0, 0, 0])),
    ("order", torch.tensor([0, 1, 99])),
    ("prefix_mask", None),      # all ones: each factor would see itself and later joints
    ("periodic", None),         # flags flipped
])
def test_checkpoint_buffers_must_follow_the_config(planar3_ar, tmp_path, name, value):
    from ikmdn.checkpoint import load_checkpoint

    run, _, _ = planar3_ar
    payload = torch.load(run / "model.pt", weights_only=True)
    state = payload["state_dict"]
    state[name] = value if value is not None else (
        torch.ones_like(state[name]) if name == "prefix_mask" else ~state[name])
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(IKMDNError, match=f"tensor {name} disagrees with its model_config"):
        load_checkpoint(tmp_path / "model.pt")


def test_checkpoint_joint_orders_must_agree(planar3_ar, tmp_path):
    import json

    from ikmdn.checkpoint import load_checkpoint

    run, _, _ = planar3_ar
    payload = torch.load(run / "model.pt", weights_only=True)
    train = json.loads(payload["train_config"])
    payload["train_config"] = json.dumps({**train, "joint_order": [2, 1, 0]})
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(IKMDNError, match="train_config joint_order \\[2, 1, 0\\] disagrees"):
        load_checkpoint(tmp_path / "model.pt")


def test_periodic_candidates_lie_within_one_turn(planar3_ar):
    """A periodic joint's chosen value is wrapped into [-pi, pi) before later factors see it
    (and in the output), the range the factors were trained on."""
    _, checkpoint, _ = planar3_ar
    x = torch.tensor(make_ik_dataset(checkpoint.arm, 200, 3).inputs, dtype=torch.float32)
    with torch.no_grad():
        means = checkpoint.model(x)[1]
    periodic = torch.tensor(checkpoint.model.config.periodic_outputs)
    assert periodic.any()
    assert bool((means[..., periodic].abs() <= math.pi + 1e-6).all())


def test_onnx_solves_like_the_checkpoint(planar3_ar):
    from ikmdn.solve import IKSolver

    run, _, path = planar3_ar
    targets = make_ik_dataset(get_arm("planar3"), 200, 9).inputs
    from_onnx, from_run = IKSolver.load(path), IKSolver.load(run)
    assert from_onnx.model.components == 8
    a, b = from_onnx.solve(targets), from_run.solve(targets)
    assert a.reachable.mean() > 0.9
    np.testing.assert_array_equal(a.reachable, b.reachable)



def test_a_narrower_beam_keeps_the_weights_and_the_best_candidates():
    """with_beam changes K alone: the same weights, the training metrics kept, the candidate
    metrics measured again; with 2 joints of 3 components every prefix survives the first step,
    so a beam of 3 holds exactly the first 3 candidates of a beam of 9."""
    from ikmdn.checkpoint import Checkpoint, CheckpointModel, with_beam

    model = _model("planar2", components=8, order=(1, 0)).float()
    config = TrainConfig(arm="planar2", kind="autoregressive", components=8, factor_components=3,
                         hidden=(16,), factor_hidden=(16, 8), joint_order=(1, 0), seed=0)
    checkpoint = Checkpoint(model, config, get_arm("planar2"),
                            {"val_nll": -3.0, "coverage": 0.9, "best_mode_rms": 1.0})
    narrow, wide = with_beam(checkpoint, 3), with_beam(checkpoint, 9)
    assert narrow.model.config.components == narrow.config.components == 3
    assert narrow.metrics["val_nll"] == -3.0 and "coverage" not in narrow.metrics
    assert narrow.metrics["best_mode_rms"] != 1.0 and narrow.metrics["trained_components"] == 8
    assert with_beam(narrow, 9).metrics["trained_components"] == 8
    for a, b in zip(narrow.model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    targets = make_ik_dataset(get_arm("planar2"), 50, 3).inputs
    few, many = CheckpointModel(narrow).predict(targets), CheckpointModel(wide).predict(targets)
    assert few.means.shape == (50, 3, 2) and many.means.shape == (50, 9, 2)
    np.testing.assert_allclose(few.means, many.means[:, :3], atol=1e-6)
    np.testing.assert_allclose(few.weights / few.weights[:, :1],
                               many.weights[:, :3] / many.weights[:, :1], rtol=1e-4)
    assert with_beam(checkpoint, 8) is checkpoint


def test_a_beam_is_refused_for_an_mdn_and_beyond_the_combinations(planar3_ar):
    from ikmdn.checkpoint import Checkpoint, with_beam
    from ikmdn.network import build_network

    _, checkpoint, _ = planar3_ar
    with pytest.raises(IKMDNError, match="a beam of 250 candidates needs at least that many"):
        with_beam(checkpoint, 250)   # 6 components per joint, 3 joints: 216 combinations
    mdn = Checkpoint(build_network(MDNConfig(input_dim=2, output_dim=3, components=4)),
                     checkpoint.config, checkpoint.arm)
    with pytest.raises(IKMDNError, match="a beam width is for autoregressive models"):
        with_beam(mdn, 2)


def test_training_does_not_depend_on_the_beam(tmp_path):
    """What with_beam relies on: two runs that differ in the beam alone train the same weights."""
    from ikmdn.train import train_run

    states = [train_run(TrainConfig(arm="planar3", kind="autoregressive", components=k,
                                    samples=2000, epochs=1, hidden=(16,), factor_hidden=(16,),
                                    seed=0), tmp_path / str(k)).model.state_dict()
              for k in (8, 4)]
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


def test_cli_exports_with_a_narrower_beam(planar3_ar, tmp_path):
    from ikmdn.runtime import OnnxModel

    run, _, _ = planar3_ar
    out = tmp_path / "narrow.onnx"
    assert_ok(invoke("export", str(run), "-o", str(out), "--beam", "4"))
    model = OnnxModel.load(out)
    assert model.components == model.train_config["components"] == 4
    assert model.metrics["trained_components"] == 8
    result = invoke("export", str(run), "-o", str(tmp_path / "bad.onnx"), "--beam", "0")
    assert result.exit_code == 2 and "--beam" in result.output
    assert not (tmp_path / "bad.onnx").exists()

def test_cli_trains_an_autoregressive_model(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--arm", "planar2", "--model", "autoregressive", "--joint-order",
                    "1,0", "--samples", "2000", "--epochs", "1", "--hidden", "16",
                    "--components", "4", "--out", str(out))
    assert_ok(result)
    assert "joint order: " in result.output
    import json
    assert json.loads((out / "config.json").read_text())["joint_order"] == [1, 0]


@pytest.mark.parametrize("args, fragment", [
    (["--model", "autoregressive", "--joint-order", "0,1,x"], "comma-separated joint indices"),
    (["--model", "autoregressive", "--joint-order", "0,0"], "joint_order must list the joints 0 to 1"),
    (["--model", "autoregressive", "--joint-order", "0,5"], "joint_order entry must be an integer"),
    (["--model", "mdn", "--joint-order", "1,0"], "joint_order is for autoregressive"),
    (["--model", "autoregressive", "--baseline"], "drop --model"),
])
def test_cli_refuses_bad_orders(tmp_path, args, fragment):
    result = invoke("train", "--arm", "planar2", *args, "--samples", "1000", "--epochs", "1",
                    "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("arm_name, kind", [("ur5", "autoregressive"), ("planar2", "mdn")])
def test_losses_trace_as_one_graph(arm_name, kind):
    """torch.compile sees each loss as one graph: no data-dependent Python branch."""
    from ikmdn.train import build_model

    config = default_config(arm_name, kind=kind, hidden=(16,), components=4,
                            **({"factor_hidden": (8,)} if kind == "autoregressive" else {}))
    model = build_model(config.build_arm(), config)
    data = make_ik_dataset(config.build_arm(), 64, 0)
    model.set_normalization(data.inputs, data.outputs)
    x, y = (torch.tensor(a, dtype=torch.float32) for a in (data.inputs, data.outputs))
    explained = torch._dynamo.explain(model.loss)(x, y)
    assert explained.graph_break_count == 0, explained.break_reasons
