"""IK datasets made by forward kinematics, Bishop's inverted 1-D toy problems, and .npz I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ikmdn.arms import Arm
from ikmdn.errors import IKMDNError


@dataclass(frozen=True)
class Dataset:
    """Pairs for learning an inverse map: inputs (N, in_dim) -> outputs (N, out_dim), float64.

    For IK datasets the inputs are targets (physical units) and the outputs joints (radians).
    """

    inputs: np.ndarray
    outputs: np.ndarray

    def __post_init__(self):
        if self.inputs.ndim != 2 or self.outputs.ndim != 2 or len(self.inputs) != len(self.outputs):
            raise IKMDNError(
                f"dataset needs inputs (N, d) and outputs (N, c) of equal N, got "
                f"{self.inputs.shape} and {self.outputs.shape}")

    def __len__(self) -> int:
        return len(self.inputs)

    def split(self, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        """(rest, held_out): a random `fraction` in (0, 1) of the rows held out, reproducibly."""
        if not 0 < fraction < 1:
            raise IKMDNError(f"held-out fraction must be in (0, 1), got {fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        n_held = max(1, int(round(fraction * len(self))))
        held, rest = order[:n_held], order[n_held:]
        return (Dataset(self.inputs[rest], self.outputs[rest]),
                Dataset(self.inputs[held], self.outputs[held]))

    def save(self, path: str | Path) -> None:
        """Write inputs and outputs to an .npz file."""
        np.savez(path, inputs=self.inputs, outputs=self.outputs)

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read a dataset written by save."""
        try:
            with np.load(path) as f:
                return cls(f["inputs"], f["outputs"])
        except (OSError, KeyError, ValueError) as exc:
            raise IKMDNError(f"cannot read dataset {path}: {exc}") from None


def _check_size(n: int) -> None:
    if n <= 0:
        raise IKMDNError(f"number of samples must be positive, got {n}")


def make_ik_dataset(arm: Arm, n: int, seed: int) -> Dataset:
    """n joint vectors drawn uniformly within the limits; inputs = fk(joints), outputs = joints."""
    _check_size(n)
    joints = arm.sample_joints(n, np.random.default_rng(seed))
    return Dataset(arm.fk(joints), joints)


def sinusoid_post(n: int, seed: int) -> Dataset:
    """The blog post's problem, inverted: y = 7 sin(0.75 x) + 0.5 x + N(0, 1), x ~ U(-10.5, 10.5).

    Returns inputs y (n, 1) and outputs x (n, 1): for most y several x fit.
    """
    _check_size(n)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-10.5, 10.5, (n, 1))
    y = 7.0 * np.sin(0.75 * x) + 0.5 * x + rng.normal(size=(n, 1))
    return Dataset(y, x)


def sinusoid_bishop(n: int, seed: int) -> Dataset:
    """Bishop's (1994) problem, inverted: t = x + 0.3 sin(2 pi x) + U(-0.1, 0.1), x ~ U(0, 1).

    Returns inputs t (n, 1) and outputs x (n, 1).
    """
    _check_size(n)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (n, 1))
    t = x + 0.3 * np.sin(2 * math.pi * x) + rng.uniform(-0.1, 0.1, (n, 1))
    return Dataset(t, x)


TOY_PROBLEMS = {"post": sinusoid_post, "bishop": sinusoid_bishop}


@dataclass(frozen=True)
class ArmStream:
    """IK pairs made on the fly by forward kinematics, chunk by chunk (bounded memory).

    `samples` pairs per epoch in chunks of `chunk` rows. Chunk c of epoch e is drawn from
    np.random.default_rng([seed, 1, e if resample else 0, c]): with resample=False every epoch
    sees the same pairs (a fixed dataset that is never held in memory whole), with resample=True
    every epoch sees fresh ones. The validation set comes from its own stream.
    """

    arm: Arm
    samples: int
    seed: int
    resample: bool = False
    chunk: int = 65536

    def __post_init__(self):
        _check_size(self.samples)

    def __len__(self) -> int:
        return self.samples

    def _draw(self, n: int, key: list[int]) -> Dataset:
        joints = self.arm.sample_joints(n, np.random.default_rng([self.seed, *key]))
        return Dataset(self.arm.fk(joints), joints)

    def chunks(self, epoch: int):
        """The epoch's pairs as Datasets of at most `chunk` rows (epochs count from 1)."""
        for index, start in enumerate(range(0, self.samples, self.chunk)):
            yield self._draw(min(self.chunk, self.samples - start),
                             [1, epoch if self.resample else 0, index])

    def validation(self, n: int) -> Dataset:
        """n held-out pairs, never drawn by chunks()."""
        _check_size(n)
        return self._draw(n, [0])
