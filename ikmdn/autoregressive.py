"""The autoregressive mixture: p(q | x) = prod_j p(q_{o_j} | x, q_{o_1}, ..., q_{o_{j-1}}).

Each factor is a 1-D mixture of M Gaussians (wrapped for periodic joints) over one joint, in the
joint order o stored in the config, conditioned on the target x and on the joints before it
(each entering as (cos q, sin q, standardised q), q wrapped into [-pi, pi) for a periodic joint,
else held within 4 standard deviations of its training mean). A body shared by all factors maps
x to one context vector per factor (once per target); a factor's own layers take its context
plus a linear map of the earlier joints' features. The beam search therefore runs only the
small factor layers per candidate. Training is teacher-forced: every factor sees the true
earlier joints, so one pass scores the exact log-likelihood. A forward pass runs a beam
search over the factors' components (beam width B = config.components) and returns the B
surviving joint vectors as the candidates, with the same contract as the MDN's forward:

    weights (N, B): softmax of the beam scores, the log probabilities of the chosen component
                    paths (sum of the chosen components' log weights),
    means   (N, B, c): the candidates in physical units, joints in the arm's order,
    sigmas  (N, B, c): the chosen components' spreads.

The beam search is a fixed unrolled graph (TopK with static k), so it exports to ONNX as is.
Scores are continuous in the network's outputs, so PyTorch and ONNX Runtime keep the same beams
except where two scores tie within float rounding (see beam_margins).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ikmdn.mdn import ACTIVATIONS, ConditionalDensity, MDNConfig, gaussian_log_kernel

JOINT_FEATURES = 3  # each earlier joint enters a factor as (cos q, sin q, standardised q)
STATE_COLUMNS = JOINT_FEATURES + 2  # per joint in a beam's state: its features, q, raw spread
FEATURE_BOUND = 4.0  # non-periodic joints reach later factors within 4 deviations (see _seen)


class StackedLayers(nn.Module):
    """F independent MLPs of the same shape, the activation applied first (inputs are
    pre-activations), run as one batched matmul per layer.

    forward(x (F, N, in)) -> (F, N, out); factor(j, x (N, in)) -> (N, out) runs MLP j alone.
    Initialised like nn.Linear (uniform within 1 / sqrt(fan_in)).
    """

    def __init__(self, factors: int, widths: tuple[int, ...], activation: str):
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            bound = 1 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(factors, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(factors, 1, fan_out).uniform_(-bound, bound)))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w, b in zip(self.weights, self.biases, strict=True):
            x = torch.baddbmm(b, self.activation(x), w)
        return x

    def factor(self, j: int, x: torch.Tensor) -> torch.Tensor:
        for w, b in zip(self.weights, self.biases, strict=True):
            x = torch.addmm(b[j], self.activation(x), w[j])
        return x


def wrapped_mixture_log_prob(log_weights: torch.Tensor, means: torch.Tensor, sigmas: torch.Tensor,
                             y: torch.Tensor, periodic: torch.Tensor) -> torch.Tensor:
    """log p(y) (..., ) of 1-D Gaussian mixtures, in log space.

    log_weights, means, sigmas (..., M); y (...,); periodic: bool, broadcastable to y: those
    values are angles whose kernel is wrapped (summed over y + 2 pi k, k = -1, 0, 1).
    """
    periods = periodic[..., None].to(means.dtype) * (2 * math.pi)
    return torch.logsumexp(log_weights + gaussian_log_kernel(y[..., None] - means, sigmas, periods),
                           dim=-1)


class AutoregressiveMixture(ConditionalDensity):
    """See the module docstring. loss/nll score true joints; forward runs the beam search."""

    def __init__(self, config: MDNConfig):
        super().__init__(config)
        c, m, first = config.output_dim, config.factor_components, config.factor_hidden[0]
        order = torch.tensor(config.joint_order, dtype=torch.long)
        self.register_buffer("order", order)
        self.register_buffer("inverse_order", torch.argsort(order))
        self.body, features = self._make_body()
        self.context = nn.Linear(features, c * first)      # per factor: its first layer's share of x
        bound = 1 / math.sqrt(c * JOINT_FEATURES)
        # factor j's first layer on the earlier joints' features; rows of later joints stay unused
        self.prefix_weight = nn.Parameter(torch.empty(c, c * JOINT_FEATURES, first).uniform_(-bound, bound))
        mask = torch.zeros(c, c * JOINT_FEATURES, 1)
        for j in range(c):
            mask[j, :j * JOINT_FEATURES] = 1.0
        self.register_buffer("prefix_mask", mask)
        self.factors = StackedLayers(c, (*config.factor_hidden, 3 * m), config.activation)

    def _ordered_stats(self):
        """(mean (c,), std (c,), periodic (c,)) of the joints in factor order."""
        return self.out_mean[self.order], self.out_std[self.order], self.periodic[self.order]

    def _seen(self, values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, first: int,
              wrapped: bool = False) -> torch.Tensor:
        """Values (..., j) of factors first .. first + j - 1 (mean, std (j,) theirs) as later
        factors see them: a periodic joint's wrapped into [-pi, pi) (wrapped=True: they already
        are, as the beam's), the others held within FEATURE_BOUND standard deviations of their
        training mean. Training joints lie within the limits (|z| <= 1.8), so the bound changes
        nothing there; a far-off target's extrapolated values (thousands of radians) would
        otherwise feed cos, sin and the next layers numbers whose float32 rounding decides the
        beam. Wrapping makes training see a joint of more than one turn (a URDF's +-2 pi) as the
        beam does."""
        order, periodic = self.config.joint_order, self.config.periodic_outputs
        flags = [periodic[order[i]] for i in range(first, first + values.shape[-1])]
        turned = values if wrapped else torch.remainder(values + math.pi, 2 * math.pi) - math.pi
        if all(flags):
            return turned
        bounded = torch.minimum(torch.maximum(values, mean - FEATURE_BOUND * std),
                                mean + FEATURE_BOUND * std)
        if not any(flags):
            return bounded
        return torch.where(torch.tensor(flags, device=values.device), turned, bounded)

    def _joint_features(self, values: torch.Tensor, mean: torch.Tensor,
                        std: torch.Tensor) -> torch.Tensor:
        """(..., j * 3) features of the first j factors' values (..., j) in physical units:
        (cos q, sin q, standardised q) of q as later factors see it (`_seen`), joint by joint
        (one concatenation and one constant gather)."""
        j = values.shape[-1]
        seen = self._seen(values, mean, std, 0)
        blocks = torch.cat([torch.cos(seen), torch.sin(seen), (seen - mean) / std], dim=-1)
        order = [i + f * j for i in range(j) for f in range(JOINT_FEATURES)]
        return blocks.index_select(-1, torch.tensor(order, device=values.device))

    def _physical(self, z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                  j: int) -> torch.Tensor:
        """Factor j's standardised values z in physical units; a periodic joint's wrapped into
        [-pi, pi), the range its value had in training when later factors see it (a mixture
        mean may lie a turn away)."""
        q = z * std[j] + mean[j]
        if self.config.periodic_outputs[self.config.joint_order[j]]:
            q = torch.remainder(q + math.pi, 2 * math.pi) - math.pi
        return q

    def _first_layer(self, context: torch.Tensor, values: torch.Tensor, mean: torch.Tensor,
                     std: torch.Tensor, j: int) -> torch.Tensor:
        """Factor j's first-layer pre-activation (..., H): its context (..., H) plus the map of
        the earlier joints' values (..., j) in physical units."""
        if j == 0:
            return context
        rows = self.prefix_weight[j, :j * JOINT_FEATURES]
        return context + torch.matmul(self._joint_features(values, mean[:j], std[:j]), rows)

    def _head(self, out: torch.Tensor):
        """Split raw factor outputs (..., 3M) into (log_weights, means, sigmas), standardised."""
        m = self.config.factor_components
        return (F.log_softmax(out[..., :m], dim=-1), out[..., m:2 * m],
                F.softplus(out[..., 2 * m:]) + self.config.sigma_floor)

    def _contexts(self, x: torch.Tensor) -> torch.Tensor:
        """(N, c, H) the per-factor contexts of targets x (N, in_dim)."""
        c = self.config.output_dim
        return self.context(self.body(self._features(x))).reshape(-1, c, self.config.factor_hidden[0])

    def factor_log_probs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log p of each factor (c, N), standardised units; x (N, in), y (N, c)."""
        mean, std, periodic = self._ordered_stats()
        yo = y[:, self.order]
        prefix = self._joint_features(yo, mean, std)                       # (N, 3c)
        first = self._contexts(x).transpose(0, 1) + torch.matmul(
            prefix, self.prefix_weight * self.prefix_mask)                 # (c, N, H)
        log_weights, means, sigmas = self._head(self.factors(first))       # (c, N, M)
        return wrapped_mixture_log_prob(log_weights, means, sigmas, ((yo - mean) / std).T,
                                        periodic[:, None])

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss (scalar): the NLL in standardised units, summed over the factors."""
        return -self.factor_log_probs(x, y).sum(0).mean()

    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean NLL (scalar) of joints y (N, c) in physical units (nats per sample)."""
        return self.loss(x, y) + torch.log(self.out_std).sum()

    def forward(self, x: torch.Tensor):
        """Beam search: (weights (N,B), means (N,B,c), sigmas (N,B,c)) in physical units,
        candidates sorted by score, best first."""
        return self._beam(x, margins=False)[:3]

    @torch.no_grad()
    def beam_margins(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) the smallest gap (nats) between neighbouring scores among each step's kept
        candidates and the best dropped one, or (rad) between a kept periodic value and +-pi,
        where its wrap may go either way: where it is at float rounding level, another runtime
        may keep, order or wrap the beams differently (export parity allows that, see
        ikmdn.export)."""
        return self._beam(x, margins=True)[3]

    def _state_weight(self, j: int) -> torch.Tensor:
        """(STATE_COLUMNS j, H) factor j's first-layer rows over a beam state of j placed joints:
        its prefix weights on each joint's features, zeros on its value and raw spread."""
        rows = self.prefix_weight[j, :j * JOINT_FEATURES].reshape(j, JOINT_FEATURES, -1)
        padding = rows.new_zeros(j, STATE_COLUMNS - JOINT_FEATURES, rows.shape[-1])
        return torch.cat([rows, padding], dim=1).reshape(j * STATE_COLUMNS, -1)

    def _beam(self, x: torch.Tensor, margins: bool):
        """The beam search. Each beam carries one state row, per placed joint (cos q, sin q,
        standardised q, q, raw spread): one gather per step moves a beam's whole history, its
        features feed the next factor through one matmul, and the spreads' softplus runs once
        at the end on the B kept candidates, not on every scored component."""
        c, m, beam = self.config.output_dim, self.config.factor_components, self.config.components
        width = self.config.factor_hidden[0]
        mean, std, _ = self._ordered_stats()
        contexts = self._contexts(x)                                       # (N, c, H)
        # b (beams so far) is a Python int and reshapes say -1 for N: the exported graph carries
        # no shape arithmetic, which dominates a single pose's inference
        scores = torch.zeros_like(contexts[:, 0, :1])                      # (N, b)
        state = contexts[:, :1, :0]                             # (N, b, 5 j), empty before j = 0
        gap = torch.full_like(contexts[:, 0, 0], math.inf)
        b = 1
        for j in range(c):
            first = contexts[:, j:j + 1]                                   # (N, b, H)
            if j:
                first = first + torch.matmul(state, self._state_weight(j))
            out = self.factors.factor(j, first.reshape(-1, width)).reshape(-1, b, 3 * m)
            candidates = (scores[..., None] + F.log_softmax(out[..., :m], dim=-1)).reshape(-1, b * m)
            k = min(beam, b * m)
            if margins:
                top = torch.topk(candidates, min(k + 1, b * m), dim=1).values
                gap = torch.minimum(gap, (top[:, :-1] - top[:, 1:]).min(1).values
                                    if top.shape[1] > 1 else gap)
            scores, pick = torch.topk(candidates, k, dim=1)
            pick = pick[..., None]                                         # (N, k, 1)
            q = self._physical(out[..., m:2 * m].reshape(-1, b * m, 1).gather(1, pick), mean, std, j)
            raw_spread = out[..., 2 * m:].reshape(-1, b * m, 1).gather(1, pick)
            if margins and self.config.periodic_outputs[self.config.joint_order[j]]:
                # a value at +-pi may be wrapped to either end: the next factors see another input
                gap = torch.minimum(gap, (math.pi - q.abs()).amin((1, 2)))
            seen = self._seen(q, mean[j:j + 1], std[j:j + 1], j, wrapped=True)
            placed = torch.cat([torch.cos(seen), torch.sin(seen), (seen - mean[j]) / std[j], q,
                                raw_spread], dim=-1)                       # (N, k, 5)
            if j:   # each kept candidate's parent beam, by a constant lookup and a broadcast
                parent = torch.tensor([i // m for i in range(b * m)], device=x.device)[pick]
                index = parent + torch.zeros(1, 1, j * STATE_COLUMNS, dtype=torch.long,
                                             device=x.device)
                placed = torch.cat([state.gather(1, index), placed], dim=-1)
            state, b = placed, k
        order = self.config.joint_order
        columns = [STATE_COLUMNS * order.index(a) for a in range(c)]     # joints in arm order
        values = state[..., torch.tensor(columns, device=x.device) + JOINT_FEATURES]
        raw = state[..., torch.tensor(columns, device=x.device) + JOINT_FEATURES + 1]
        spreads = (F.softplus(raw) + self.config.sigma_floor) * self.out_std
        return torch.softmax(scores, dim=1), values, spreads, gap

    @torch.no_grad()
    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One ancestral draw per input (N, c): each factor's component by weight, then a
        Gaussian draw, fed to the next factor."""
        mean, std, _ = self._ordered_stats()
        contexts = self._contexts(x)
        n = contexts.shape[0]
        values = contexts.new_zeros(n, 0)
        for j in range(self.config.output_dim):
            first = self._first_layer(contexts[:, j], values, mean, std, j)
            log_weights, means, sigmas = self._head(self.factors.factor(j, first))
            idx = torch.multinomial(log_weights.exp(), 1, generator=generator)
            draw = means.gather(1, idx) + sigmas.gather(1, idx) * torch.randn(
                n, 1, generator=generator, dtype=means.dtype)
            values = torch.cat([values, self._physical(draw, mean, std, j)], dim=1)
        return values[:, self.inverse_order]
