"""Build the network a model config describes (MDN, least squares or autoregressive mixture)."""

from __future__ import annotations

from dataclasses import replace

import torch

from ikmdn.autoregressive import AutoregressiveMixture
from ikmdn.mdn import MDN, ConditionalDensity, MDNConfig

# Buffers whose values follow from the config alone (not from data or training).
CONFIG_BUFFERS = ("angular", "periodic", "order", "inverse_order", "prefix_mask")


def build_network(config: MDNConfig) -> ConditionalDensity:
    """A freshly initialised network of config.kind (torch's global RNG draws the weights)."""
    return AutoregressiveMixture(config) if config.kind == "autoregressive" else MDN(config)


def config_buffers(config: MDNConfig) -> dict[str, torch.Tensor]:
    """The CONFIG_BUFFERS a network of config holds, by name (built on a one-unit copy: their
    values do not depend on the widths)."""
    with torch.device("cpu"), torch.random.fork_rng(devices=[]):
        tiny = build_network(replace(config, hidden=(1,), factor_hidden=(1,)))
    return {k: v for k, v in tiny.state_dict().items() if k in CONFIG_BUFFERS}
