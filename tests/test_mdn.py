"""The mixture density network and numpy mixtures against independent references (scipy, loops)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_stats = pytest.importorskip("scipy.stats")

import torch.nn.functional as F  # noqa: E402

from ikmdn.errors import IKMDNError  # noqa: E402
from ikmdn.mdn import MDN, MDNConfig, mixture_log_prob, mixture_nll  # noqa: E402
from ikmdn.mixture import Mixture  # noqa: E402


def scipy_log_prob(weights, means, sigmas, y):
    """log sum_k w_k N(y; mu_k, diag(sigma_k^2)) per row, one scipy density at a time: (N,)."""
    out = []
    for n in range(len(y)):
        p = sum(weights[n, k] * scipy_stats.multivariate_normal(
            mean=means[n, k], cov=np.diag(sigmas[n, k] ** 2)).pdf(y[n]) for k in range(weights.shape[1]))
        out.append(math.log(p))
    return np.array(out)


def random_mixture(n, k, c, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    log_weights = F.log_softmax(torch.randn(n, k, generator=g, dtype=dtype), dim=-1)
    means = torch.randn(n, k, c, generator=g, dtype=dtype)
    sigmas = 0.3 + 1.2 * torch.rand(n, k, c, generator=g, dtype=dtype)
    y = 1.5 * torch.randn(n, c, generator=g, dtype=dtype)
    return log_weights, means, sigmas, y


def make_model(seed=0, **config):
    """An MDN with parameters drawn from a seeded generator (no global RNG)."""
    config.setdefault("hidden", (16, 16))
    model = MDN(MDNConfig(**config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model.eval()


def forward_np(model, x):
    """model(x) as numpy arrays (weights, means, sigmas); x is converted to the model's dtype."""
    dtype = model.head.weight.dtype
    with torch.no_grad():
        return tuple(t.numpy() for t in model(torch.as_tensor(np.asarray(x), dtype=dtype)))


def set_head(model, bias):
    """Zero the head's weights and set its bias, so every input gets the same raw head output."""
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.as_tensor(bias, dtype=model.head.bias.dtype))


# -- log-likelihood ---------------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 3])
def test_mixture_log_prob_matches_scipy(c):
    log_weights, means, sigmas, y = random_mixture(7, 4, c, seed=c)
    got = mixture_log_prob(log_weights, means, sigmas, y)
    assert got.shape == (7,)
    expected = scipy_log_prob(log_weights.exp().numpy(), means.numpy(), sigmas.numpy(), y.numpy())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    nll = mixture_nll(log_weights, means, sigmas, y)
    assert nll.ndim == 0
    np.testing.assert_allclose(nll.item(), -expected.mean(), rtol=1e-5)


def test_mixed_periodic_dimensions_match_scipy():
    """A periodic dimension's kernel is summed over its +-2 pi images; an ordinary one beside it
    keeps its plain kernel (no log 3 added)."""
    log_weights, means, sigmas, y = (t.double() for t in random_mixture(7, 4, 2, seed=5))
    periods = torch.tensor([2 * np.pi, 0.0], dtype=torch.float64)
    got = mixture_log_prob(log_weights, means, sigmas, y, periods).numpy()
    w, m, s, yy = (t.numpy() for t in (log_weights.exp(), means, sigmas, y))
    expected = np.log(sum(
        w[:, k] * sum(scipy_stats.norm.pdf(yy[:, 0] + shift, m[:, k, 0], s[:, k, 0])
                      for shift in (-2 * np.pi, 0.0, 2 * np.pi))
        * scipy_stats.norm.pdf(yy[:, 1], m[:, k, 1], s[:, k, 1]) for k in range(4)))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nll_finite_far_from_narrow_components(dtype):
    n, k, c, floor = 4, 3, 2, 1e-4
    log_weights = F.log_softmax(torch.tensor([[0.1, -0.4, 1.0]] * n, dtype=dtype), dim=-1)
    means = torch.zeros(n, k, c, dtype=dtype)
    sigmas = torch.full((n, k, c), floor, dtype=dtype)
    y = torch.full((n, c), 1e3 * floor, dtype=dtype)  # 1000 sigmas away in every coordinate
    for t in (log_weights, means, sigmas):
        t.requires_grad_(True)

    nll = mixture_nll(log_weights, means, sigmas, y)
    grads = torch.autograd.grad(nll, (log_weights, means, sigmas))
    assert torch.isfinite(nll)
    assert all(torch.isfinite(g).all() for g in grads)
    # every component has the same density, and the weights sum to one
    expected = c * (0.5 * 1e6 + math.log(floor) + 0.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(nll.item(), expected, rtol=1e-6)

    # The naive form (densities first, then log of the weighted sum) underflows: this is what
    # the test above would catch if the library used it.
    density = torch.exp(-0.5 * ((y[:, None, :] - means) / sigmas) ** 2) / (sigmas * math.sqrt(2 * math.pi))
    naive = -torch.log((log_weights.exp() * density.prod(-1)).sum(-1)).mean()
    assert not torch.isfinite(naive)


# -- the network ------------------------------------------------------------------------------

def test_forward_shapes_weights_and_sigmas():
    model = make_model(input_dim=2, output_dim=3, components=5)
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(1))
    weights, means, sigmas = model(x)
    assert weights.shape == (10, 5) and means.shape == (10, 5, 3) and sigmas.shape == (10, 5, 3)
    assert (weights > 0).all()
    np.testing.assert_allclose(weights.sum(1).detach().numpy(), 1.0, atol=1e-6)
    assert (sigmas > 0).all()


def _data(n=500, seed=0, in_dim=2, out_scale=(1.0, 10.0, 100.0)):
    rng = np.random.default_rng(seed)
    x = rng.normal([1.0, -2.0][:in_dim], [0.5, 3.0][:in_dim], (n, in_dim))
    y = rng.normal(0.0, 1.0, (n, len(out_scale))) * out_scale + [5.0, -50.0, 500.0][:len(out_scale)]
    return x, y


def test_sigma_floor_in_physical_units():
    floor = 1e-3
    x, y = _data()
    model = make_model(input_dim=2, output_dim=3, components=4, sigma_floor=floor)
    model.set_normalization(x, y)
    set_head(model, torch.full(model.head.bias.shape, -60.0))  # softplus(-60) ~ 0
    weights, means, sigmas = forward_np(model, x[:8])
    assert (sigmas >= floor * y.std(0, ddof=1) * (1 - 1e-6)).all()
    np.testing.assert_allclose(sigmas, np.broadcast_to(floor * y.std(0, ddof=1), (8, 4, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(weights, 0.25, rtol=1e-6)
    np.testing.assert_allclose(means, np.broadcast_to(y.mean(0) - 60 * y.std(0, ddof=1), (8, 4, 3)),
                               rtol=1e-5)


def test_zero_head_predicts_the_data_mean_in_physical_units():
    x, y = _data()
    model = make_model(input_dim=2, output_dim=3, components=4, sigma_floor=1e-4)
    model.set_normalization(x, y)
    set_head(model, torch.zeros(model.head.bias.shape))
    _, means, sigmas = forward_np(model, x[:5])
    np.testing.assert_allclose(means, np.broadcast_to(y.mean(0), (5, 4, 3)), rtol=1e-5)
    np.testing.assert_allclose(sigmas,
                               np.broadcast_to((math.log(2) + 1e-4) * y.std(0, ddof=1), (5, 4, 3)),
                               rtol=1e-5)


def test_output_normalization_scales_means_and_sigmas():
    x, y = _data()
    model = make_model(input_dim=2, output_dim=3, components=4)
    model.set_normalization(x, y)
    scaled = copy.deepcopy(model)
    scaled.set_normalization(x, 100.0 * y + 7.0)
    w1, m1, s1 = forward_np(model, x[:20])
    w2, m2, s2 = forward_np(scaled, x[:20])
    np.testing.assert_allclose(w2, w1, rtol=1e-6)
    np.testing.assert_allclose(m2, 100.0 * m1 + 7.0, rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(s2, 100.0 * s1, rtol=1e-5)


def test_input_normalization_makes_the_model_unit_free():
    x, y = _data()
    model = make_model(input_dim=2, output_dim=3, components=4)
    model.set_normalization(x, y)
    scaled = copy.deepcopy(model)
    scaled.set_normalization(100.0 * x - 3.0, y)
    for a, b in zip(forward_np(model, x[:20]), forward_np(scaled, 100.0 * x[:20] - 3.0), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("angular", [True, False])
def test_angular_inputs_have_no_seam(angular):
    model = make_model(input_dim=3, output_dim=2, components=3, angular_inputs=(False, False, angular))
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.normal(size=300), rng.normal(size=300), rng.uniform(2.0, 3.0, 300)])
    model.set_normalization(x, rng.normal(size=(300, 2)))
    base = [[0.5, -0.2, math.pi], [0.5, -0.2, 0.3]]
    other = [[0.5, -0.2, -math.pi], [0.5, -0.2, 0.3 + 2 * math.pi]]
    out1, out2 = forward_np(model, base), forward_np(model, other)
    if angular:
        for a, b in zip(out1, out2, strict=True):
            np.testing.assert_allclose(b, a, atol=1e-5)
    else:  # control: a plain input sees pi and -pi as different numbers
        assert max(np.abs(a - b).max() for a, b in zip(out1, out2, strict=True)) > 1e-3


@pytest.mark.parametrize("c", [1, 3])
def test_mdn_nll_in_physical_units_matches_scipy(c):
    x, y = _data(out_scale=(1.0, 10.0, 100.0)[:c])
    model = make_model(input_dim=2, output_dim=c, components=4).double()
    model.set_normalization(x, y)
    xt, yt = torch.as_tensor(x[:25]), torch.as_tensor(y[:25])
    with torch.no_grad():
        weights, means, sigmas = model(xt)
        nll = model.nll(xt, yt).item()
        loss = model.loss(xt, yt).item()
    expected = -scipy_log_prob(weights.numpy(), means.numpy(), sigmas.numpy(), y[:25]).mean()
    np.testing.assert_allclose(nll, expected, rtol=1e-5)
    # the training loss is the same likelihood in standardised units (change of variables)
    std = model.out_std.numpy()
    np.testing.assert_allclose(loss, expected - np.log(std).sum(), rtol=1e-5)


@pytest.mark.parametrize("c", [1, 3])
def test_least_squares_is_one_component_trained_by_mse(c):
    config = MDNConfig(input_dim=2, output_dim=c, components=8, kind="least_squares", hidden=(16,))
    assert config.components == 1
    x, y = _data(out_scale=(1.0, 10.0, 100.0)[:c])
    model = make_model(input_dim=2, output_dim=c, components=8, kind="least_squares")
    model.set_normalization(x, y)
    xt, yt = torch.as_tensor(x[:30], dtype=torch.float32), torch.as_tensor(y[:30], dtype=torch.float32)
    weights, means, sigmas = model(xt)
    assert weights.shape == (30, 1) and means.shape == (30, 1, c) and sigmas.shape == (30, 1, c)
    np.testing.assert_array_equal(weights.detach().numpy(), 1.0)
    assert (sigmas > 0).all()
    loss = model.loss(xt, yt)
    std = torch.as_tensor(y.std(0, ddof=1), dtype=torch.float32)
    residual = (means[:, 0] - yt) / std  # in standardised units
    np.testing.assert_allclose(loss.item(), residual.pow(2).sum(-1).mean().item(), rtol=1e-4)
    if c == 1:
        np.testing.assert_allclose(loss.item(), F.mse_loss(means[:, 0] / std, yt / std).item(), rtol=1e-4)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_modes_sorted_by_weight():
    model = make_model(input_dim=2, output_dim=3, components=6)
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(3))
    weights, means, _ = model(x)
    w_sorted, m_sorted = model.modes(x)
    assert w_sorted.shape == (12, 6) and m_sorted.shape == (12, 6, 3)
    w, m = weights.detach().numpy(), means.detach().numpy()
    for n in range(12):
        order = sorted(range(6), key=lambda k, row=w[n]: -row[k])
        np.testing.assert_array_equal(w_sorted[n].numpy(), w[n, order])
        np.testing.assert_array_equal(m_sorted[n].numpy(), m[n, order])
    assert (w_sorted[:, :-1] >= w_sorted[:, 1:]).all()


def _three_spike_model(sigma):
    """K=3, c=2; weights 0.6/0.3/0.1, well-separated means, every sigma `sigma` (>= floor 1e-4)."""
    floor = 1e-4
    model = make_model(input_dim=2, output_dim=2, components=3, sigma_floor=floor)
    logits = np.log([0.6, 0.3, 0.1])
    centres = np.array([[0.0, 0.0], [1.0, -1.0], [-2.0, 3.0]])
    raw = -60.0 if sigma == floor else math.log(math.expm1(sigma - floor))  # softplus^-1
    set_head(model, np.concatenate([logits, centres.ravel(), np.full(6, raw)]))
    return model, centres


@pytest.mark.parametrize("sigma", [1e-4, 0.02], ids=["at-floor", "wider"])
def test_sample_reproducible_and_near_the_means(sigma):
    model, centres = _three_spike_model(sigma)
    x = torch.zeros(3000, 2)
    weights, means, sigmas = forward_np(model, x[:1])  # the head layout assumed by _three_spike_model
    np.testing.assert_allclose(weights[0], [0.6, 0.3, 0.1], rtol=1e-5)
    np.testing.assert_allclose(means[0], centres, atol=1e-6)
    np.testing.assert_allclose(sigmas, sigma, rtol=1e-4)

    draws = model.sample(x, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (3000, 2)
    again = model.sample(x, generator=torch.Generator().manual_seed(0))
    other = model.sample(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draws, again) and not torch.equal(draws, other)

    dist = np.linalg.norm(draws.numpy()[:, None, :] - centres[None], axis=-1)  # (N, K)
    assert dist.min(1).max() < 10 * sigma  # every draw near one of the means
    share = np.bincount(dist.argmin(1), minlength=3) / len(draws)
    np.testing.assert_allclose(share, [0.6, 0.3, 0.1], atol=0.03)
    first = draws.numpy()[dist.argmin(1) == 0]
    np.testing.assert_allclose(first.std(0), sigma, rtol=0.1)  # Gaussian noise of that sigma
    np.testing.assert_allclose(first.mean(0), 0.0, atol=0.2 * sigma)


# -- config -----------------------------------------------------------------------------------

def test_config_round_trip():
    config = MDNConfig(input_dim=3, output_dim=2, components=5, hidden=(32, 16), activation="tanh",
                       sigma_floor=1e-3, angular_inputs=(False, False, True))
    d = json.loads(json.dumps(config.to_dict()))
    again = MDNConfig.from_dict(d)
    assert again == config
    assert again.hidden == (32, 16) and again.angular_inputs == (False, False, True)
    assert MDNConfig(input_dim=2, output_dim=1).angular_inputs == (False, False)
    a, b = MDN(config).state_dict(), MDN(again).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


@pytest.mark.parametrize("changes", [
    {"kind": "gan"},
    {"activation": "sigmoidish"},
    {"input_dim": 0},
    {"output_dim": -1},
    {"components": 0},
    {"hidden": ()},
    {"hidden": (16, 0)},
    {"angular_inputs": (True,)},
    {"sigma_floor": 0.0},
    {"sigma_floor": -1e-3},
    {"sigma_floor": float("nan")},
], ids=lambda d: next(iter(d)) + "=" + repr(next(iter(d.values()))))
def test_bad_configs_raise(changes):
    kwargs = {"input_dim": 2, "output_dim": 2, **changes}
    with pytest.raises(IKMDNError):
        MDNConfig(**kwargs)


@pytest.mark.parametrize("drop, extra", [(None, {"colour": "red"}), ("input_dim", {})],
                         ids=["unknown-key", "missing-key"])
def test_config_from_dict_bad_keys_raise_ikmdn_error(drop, extra):
    d = MDNConfig(input_dim=2, output_dim=2).to_dict()
    d.update(extra)
    if drop:
        del d[drop]
    with pytest.raises(IKMDNError):
        MDNConfig.from_dict(d)


# -- numpy mixtures ---------------------------------------------------------------------------

def _random_numpy_mixture(n=40, k=5, dof=3, seed=0):
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(k), size=n)
    weights[0] = [0.25, 0.25, 0.0, 0.25, 0.25]  # ties: the order among them must be stable
    weights[1] = [0.0, 0.0, 0.0, 0.0, 1.0]
    return Mixture(weights, rng.normal(size=(n, k, dof)), rng.uniform(0.1, 1.0, (n, k, dof)))


def test_mixture_sorted_by_weight_matches_loop():
    mix = _random_numpy_mixture()
    out = mix.sorted_by_weight()
    assert out.components == 5
    for n in range(len(mix.weights)):
        order = sorted(range(5), key=lambda k, row=mix.weights[n]: -row[k])  # stable
        np.testing.assert_array_equal(out.weights[n], mix.weights[n, order])
        np.testing.assert_array_equal(out.means[n], mix.means[n, order])
        np.testing.assert_array_equal(out.sigmas[n], mix.sigmas[n, order])
    np.testing.assert_array_equal(out.means[0], mix.means[0, [0, 1, 3, 4, 2]])


def test_mixture_best_mode_matches_loop():
    mix = _random_numpy_mixture()
    best = mix.best_mode()
    assert best.shape == (40, 3)
    for n in range(40):
        w = mix.weights[n].tolist()
        np.testing.assert_array_equal(best[n], mix.means[n, w.index(max(w))])


def test_mixture_sample_matches_per_row_reference():
    rows = np.array([[0.6, 0.3, 0.1, 0.0], [0.0, 0.0, 0.5, 0.5], [0.0, 1.0, 0.0, 0.0]])
    reps = 2000
    weights = np.repeat(rows, reps, axis=0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    means = np.broadcast_to(centres, (len(weights), 4, 2)).copy()
    sigmas = np.full(means.shape, 0.01)
    mix = Mixture(weights, means, sigmas)
    draws = mix.sample(np.random.default_rng(0))
    assert draws.shape == (len(weights), 2)
    np.testing.assert_array_equal(draws, mix.sample(np.random.default_rng(0)))
    assert not np.array_equal(draws, mix.sample(np.random.default_rng(1)))

    # naive per-row reference: a component drawn by weight, then a Gaussian draw
    rng = np.random.default_rng(1)
    reference = np.array([rng.normal(means[i, k], sigmas[i, k])
                          for i in range(len(weights)) for k in [rng.choice(4, p=weights[i])]])
    for draw_set in (draws, reference):
        picked = np.linalg.norm(draw_set[:, None] - centres[None], axis=-1).argmin(1)
        assert np.linalg.norm(draw_set - centres[picked], axis=-1).max() < 0.1  # 10 sigma
        for r, row in enumerate(rows):
            share = np.bincount(picked[r * reps:(r + 1) * reps], minlength=4) / reps
            np.testing.assert_allclose(share, row, atol=0.035)
            assert np.all(share[row == 0] == 0)  # zero-weight components are never drawn
    near_origin = np.linalg.norm(draws[:reps], axis=-1) < 1  # row 0's component 0
    assert near_origin.sum() > 0.5 * reps
    np.testing.assert_allclose(draws[:reps][near_origin].std(0), 0.01, rtol=0.1)
    np.testing.assert_allclose(draws[:reps][near_origin].mean(0), 0.0, atol=0.002)
