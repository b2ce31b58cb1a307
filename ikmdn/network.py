"""Build the network a model config describes (MDN, least squares or autoregressive mixture)."""

from __future__ import annotations

from ikmdn.autoregressive import AutoregressiveMixture
from ikmdn.mdn import MDN, ConditionalDensity, MDNConfig


def build_network(config: MDNConfig) -> ConditionalDensity:
    """A freshly initialised network of config.kind (torch's global RNG draws the weights)."""
    return AutoregressiveMixture(config) if config.kind == "autoregressive" else MDN(config)
