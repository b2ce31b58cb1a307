"""Gaussian mixture predictions as numpy arrays: sort by weight, best mode, sampling (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mixture:
    """A diagonal Gaussian mixture per target.

    weights (N, K) summing to 1 per row; means and sigmas (N, K, dof), in radians for joints.
    """

    weights: np.ndarray
    means: np.ndarray
    sigmas: np.ndarray

    @property
    def components(self) -> int:
        """K, the number of mixture components."""
        return self.weights.shape[1]

    def sorted_by_weight(self) -> Mixture:
        """The same mixture with components ordered heaviest first (stable for ties)."""
        order = np.argsort(-self.weights, axis=1, kind="stable")
        arrays = (self.weights.copy(), self.means.copy(), self.sigmas.copy())
        reorder(order, *arrays)
        return Mixture(*arrays)

    def best_mode(self) -> np.ndarray:
        """Means of the heaviest component (N, dof)."""
        best = np.argmax(self.weights, axis=1)
        return self.means[np.arange(len(best)), best]

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One draw per target (N, dof): a component chosen by weight, then a Gaussian draw from it."""
        cdf = np.cumsum(self.weights, axis=1)
        u = rng.random((len(cdf), 1)) * cdf[:, -1:]
        idx = np.minimum((u > cdf).sum(axis=1), self.components - 1)
        rows = np.arange(len(idx))
        mean, sigma = self.means[rows, idx], self.sigmas[rows, idx]
        return mean + sigma * rng.standard_normal(mean.shape)


def reorder(order: np.ndarray, *arrays: np.ndarray) -> None:
    """Put each row's K entries of arrays (N, K, ...) in order (N, K) (a permutation per row), in
    place; rows already in order (often all of them) are not copied."""
    n, k = order.shape
    moved = np.flatnonzero((order != np.arange(k)).any(axis=1))
    if moved.size == 0:
        return
    pick = (order[moved] + k * moved[:, None]).ravel()
    for a in arrays:
        a[moved] = a.reshape(n * k, *a.shape[2:])[pick].reshape(moved.size, *a.shape[1:])
