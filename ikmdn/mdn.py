"""The mixture density network: MLP body, mixture head, log-space NLL, sampling and modes.

Shapes: inputs x (N, in_dim) in physical units; outputs y (N, out_dim). The model standardises
inputs and outputs with stored buffers, so `forward` speaks physical units. Angular inputs
(e.g. a hand angle) enter the body as (cos, sin) so the network sees no seam at +-pi. Periodic
outputs (joints that turn a full circle) use a wrapped Gaussian: the density of angle y is
summed over y + 2 pi k, k in {-1, 0, 1}, so a mode at +-pi is one component, not two halves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ikmdn.errors import IKMDNError

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU}
MODEL_KINDS = ("mdn", "least_squares", "autoregressive")


@dataclass
class MDNConfig:
    """Network shape. kind "least_squares" is Bishop's baseline: one component, trained by MSE.

    kind "autoregressive" (ikmdn.autoregressive): one 1-D mixture of factor_components components
    per joint, in joint_order (a permutation of the joints; empty: 0, 1, ...), each conditioned on
    the target (through the shared body of widths `hidden`) and the joints before it (through the
    factor's own layers of widths factor_hidden); `components` is then the beam width, the number
    of candidates one forward pass returns.
    """

    input_dim: int
    output_dim: int
    components: int = 8
    hidden: tuple[int, ...] = (128, 128, 128)
    activation: str = "silu"
    sigma_floor: float = 1e-4
    kind: str = "mdn"
    angular_inputs: tuple[bool, ...] = field(default_factory=tuple)
    periodic_outputs: tuple[bool, ...] = field(default_factory=tuple)
    joint_order: tuple[int, ...] = field(default_factory=tuple)
    factor_components: int = 6
    factor_hidden: tuple[int, ...] = (128, 128)

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        self.factor_hidden = tuple(int(h) for h in self.factor_hidden)
        self.angular_inputs = tuple(bool(a) for a in self.angular_inputs) or (False,) * self.input_dim
        self.periodic_outputs = (tuple(bool(a) for a in self.periodic_outputs)
                                 or (False,) * self.output_dim)
        if self.kind not in MODEL_KINDS:
            raise IKMDNError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise IKMDNError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.kind == "least_squares":
            self.components = 1
        for name in ("input_dim", "output_dim", "components"):
            if getattr(self, name) <= 0:
                raise IKMDNError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.hidden or min(self.hidden) <= 0:
            raise IKMDNError(f"hidden widths must be positive, got {self.hidden}")
        if len(self.angular_inputs) != self.input_dim:
            raise IKMDNError(f"angular_inputs needs {self.input_dim} flags, got {self.angular_inputs}")
        if len(self.periodic_outputs) != self.output_dim:
            raise IKMDNError(f"periodic_outputs needs {self.output_dim} flags, "
                             f"got {self.periodic_outputs}")
        if not self.sigma_floor > 0:
            raise IKMDNError(f"sigma_floor must be positive, got {self.sigma_floor}")
        if not all(isinstance(j, int) and not isinstance(j, bool) for j in self.joint_order) \
                or isinstance(self.factor_components, bool) or not isinstance(self.factor_components, int):
            raise IKMDNError(f"joint_order must hold joint indices and factor_components must be an "
                             f"integer, got {self.joint_order!r} and {self.factor_components!r}")
        self.joint_order = tuple(self.joint_order)
        if self.kind != "autoregressive":
            if self.joint_order:
                raise IKMDNError(f"joint_order is for autoregressive models, not {self.kind!r} ones")
            return
        self.joint_order = self.joint_order or tuple(range(self.output_dim))
        if sorted(self.joint_order) != list(range(self.output_dim)):
            raise IKMDNError(f"joint_order must list the joints 0 to {self.output_dim - 1} once "
                             f"each, got {list(self.joint_order)}")
        if not 1 <= self.factor_components <= 64:
            raise IKMDNError(f"factor_components must be 1 to 64, got {self.factor_components}")
        if not self.factor_hidden or min(self.factor_hidden) <= 0:
            raise IKMDNError(f"factor_hidden widths must be positive, got {self.factor_hidden}")
        if self.components > self.factor_components ** self.output_dim:
            raise IKMDNError(f"a beam of {self.components} candidates needs at least that many "
                             f"joint combinations; {self.factor_components} components per joint "
                             f"give {self.factor_components ** self.output_dim}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["angular_inputs"] = list(self.angular_inputs)
        d["periodic_outputs"] = list(self.periodic_outputs)
        d["joint_order"] = list(self.joint_order)
        d["factor_hidden"] = list(self.factor_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MDNConfig:
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(d) - known), [k for k in ("input_dim", "output_dim") if k not in d]
        if unknown or missing:
            raise IKMDNError(f"invalid model config: unknown keys {unknown}, missing keys {missing}")
        return cls(**d)


def mixture_log_prob(log_weights: torch.Tensor, means: torch.Tensor, sigmas: torch.Tensor,
                     y: torch.Tensor, periods: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y) (N,) of diagonal Gaussian mixtures, all in log space (log-sum-exp).

    log_weights (N, K); means, sigmas (N, K, c); y (N, c). periods (c,) or None (no periodic
    dimension): 0 for an ordinary dimension, P > 0 for a periodic one, whose kernel is wrapped:
    summed over y + P k, k = -1, 0, 1 (exact to within exp(-P^2 / (2 sigma^2)), negligible for
    sigma < P / 6).
    """
    log_kernel = gaussian_log_kernel(y[:, None, :] - means, sigmas, periods)
    return torch.logsumexp(log_weights + log_kernel.sum(-1), dim=-1)


def gaussian_log_kernel(residual: torch.Tensor, sigmas: torch.Tensor,
                        periods: torch.Tensor | None = None) -> torch.Tensor:
    """log N(residual; 0, sigma), element by element (shapes broadcast). Where periods (None: no
    periodic element) holds P > 0 the kernel is wrapped: summed over residual + P k, k = -1, 0, 1
    (exact to within exp(-P^2 / (2 sigma^2)))."""
    z = residual / sigmas
    log_kernel = -0.5 * z.pow(2)
    if periods is not None:
        step = periods / sigmas
        wrapped = torch.logsumexp(torch.stack([log_kernel, -0.5 * (z - step).pow(2),
                                               -0.5 * (z + step).pow(2)]), dim=0)
        log_kernel = torch.where(periods > 0, wrapped, log_kernel)
    return log_kernel - torch.log(sigmas) - 0.5 * math.log(2 * math.pi)


def mixture_nll(log_weights, means, sigmas, y, periods=None) -> torch.Tensor:
    """Mean negative log-likelihood (scalar) of y (N, c) under the mixtures (see mixture_log_prob)."""
    return -mixture_log_prob(log_weights, means, sigmas, y, periods).mean()


class ConditionalDensity(nn.Module):
    """What every ikmdn network shares: standardisation buffers (inputs x (N, in_dim) and outputs
    y (N, c) in physical units outside, standardised inside; angles and periodic outputs stay in
    radians), the body's input features, and (weights, means, sigmas) from forward in physical
    units."""

    def __init__(self, config: MDNConfig):
        super().__init__()
        self.config = config
        c = config.output_dim
        self.register_buffer("angular", torch.tensor(config.angular_inputs, dtype=torch.bool))
        self.register_buffer("periodic", torch.tensor(config.periodic_outputs, dtype=torch.bool))
        self.register_buffer("in_mean", torch.zeros(config.input_dim))
        self.register_buffer("in_std", torch.ones(config.input_dim))
        self.register_buffer("out_mean", torch.zeros(c))
        self.register_buffer("out_std", torch.ones(c))

    @property
    def feature_dim(self) -> int:
        """Width of the body's input: each angular input becomes (cos, sin)."""
        return self.config.input_dim + sum(self.config.angular_inputs)

    def _make_body(self) -> tuple[nn.Sequential, int]:
        """The MLP of widths config.hidden on the body's input features, each layer followed by
        the activation: (body, its output width)."""
        features, layers = self.feature_dim, []
        for width in self.config.hidden:
            layers += [nn.Linear(features, width), ACTIVATIONS[self.config.activation]()]
            features = width
        return nn.Sequential(*layers), features

    def set_normalization(self, inputs: np.ndarray, outputs: np.ndarray) -> None:
        """Standardise with the mean and std of training inputs (N, in_dim) and outputs (N, c)."""
        def stats(a):
            a = torch.as_tensor(np.asarray(a), dtype=torch.float32)
            return a.mean(0), a.std(0).clamp_min(1e-8)
        with torch.no_grad():
            for (mean_buf, std_buf), data in (((self.in_mean, self.in_std), inputs),
                                              ((self.out_mean, self.out_std), outputs)):
                mean, std = stats(data)
                mean_buf.copy_(mean)
                std_buf.copy_(std)
            self.in_mean[self.angular] = 0.0
            self.in_std[self.angular] = 1.0
            # Periodic outputs stay in radians, so their period stays 2 pi.
            self.out_mean[self.periodic] = 0.0
            self.out_std[self.periodic] = 1.0

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Body input (N, features): standardised coordinates, angles as (cos, sin)."""
        z = (x - self.in_mean) / self.in_std
        if not any(self.config.angular_inputs):
            return z
        a = x[:, self.angular]
        return torch.cat([z[:, ~self.angular], torch.cos(a), torch.sin(a)], dim=1)

    def _periods(self) -> torch.Tensor | None:
        """(c,) 2 pi for periodic outputs (standardised units = radians), 0 otherwise; None when
        no output is periodic (decided by the config: no data-dependent branch in the graph)."""
        if not any(self.config.periodic_outputs):
            return None
        return self.periodic.to(self.out_std.dtype) * (2 * math.pi)

    @torch.no_grad()
    def modes(self, x: torch.Tensor):
        """All K means sorted by weight, heaviest first: (weights (N,K), means (N,K,c))."""
        weights, means, _ = self(x)
        order = torch.argsort(weights, dim=1, descending=True, stable=True)
        return weights.gather(1, order), means.gather(1, order[..., None].expand_as(means))


class MDN(ConditionalDensity):
    """MLP body + mixture head. forward(x) -> (weights (N,K), means (N,K,c), sigmas (N,K,c))."""

    def __init__(self, config: MDNConfig):
        super().__init__(config)
        c, k = config.output_dim, config.components
        self.body, features = self._make_body()
        self.head = nn.Linear(features, k * c if config.kind == "least_squares" else k * (1 + 2 * c))
        # The least-squares model's spread: the RMS residual per output, set after training.
        self.register_buffer("fixed_sigma", torch.ones(c))

    def forward_normalized(self, x: torch.Tensor):
        """(log_weights (N,K), means (N,K,c), sigmas (N,K,c)) in standardised output units."""
        k, c = self.config.components, self.config.output_dim
        h = self.head(self.body(self._features(x)))
        n = h.shape[0]
        if self.config.kind == "least_squares":
            means = h.reshape(n, 1, c)
            return (torch.zeros(n, 1, dtype=h.dtype, device=h.device), means,
                    (self.fixed_sigma / self.out_std).expand_as(means))
        log_weights = F.log_softmax(h[:, :k], dim=-1)
        means = h[:, k:k + k * c].reshape(n, k, c)
        sigmas = F.softplus(h[:, k + k * c:].reshape(n, k, c)) + self.config.sigma_floor
        return log_weights, means, sigmas

    def forward(self, x: torch.Tensor):
        """(weights (N,K), means (N,K,c), sigmas (N,K,c)) in physical units."""
        log_weights, means, sigmas = self.forward_normalized(x)
        return log_weights.exp(), means * self.out_std + self.out_mean, sigmas * self.out_std

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss (scalar): NLL in standardised units, or MSE for the least-squares model."""
        log_weights, means, sigmas = self.forward_normalized(x)
        y_norm = (y - self.out_mean) / self.out_std
        if self.config.kind == "least_squares":
            return (means[:, 0] - y_norm).pow(2).sum(-1).mean()
        return mixture_nll(log_weights, means, sigmas, y_norm, self._periods())

    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean NLL (scalar) of outputs y (N, c) in physical units (nats per sample)."""
        log_weights, means, sigmas = self.forward_normalized(x)
        y_norm = (y - self.out_mean) / self.out_std
        return (mixture_nll(log_weights, means, sigmas, y_norm, self._periods())
                + torch.log(self.out_std).sum())

    @torch.no_grad()
    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw per input (N, c): a component chosen by weight, then a Gaussian draw."""
        weights, means, sigmas = self(x)
        idx = torch.multinomial(weights, 1, generator=generator)[:, 0]
        rows = torch.arange(len(idx))
        noise = torch.randn(means[rows, idx].shape, generator=generator, dtype=means.dtype)
        return means[rows, idx] + sigmas[rows, idx] * noise
