"""Shared fixtures: tiny models trained in seconds, once per test session, for every preset arm.

Every path is built from tmp_path_factory or Path(__file__).parent, never the working directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PRESET_ARMS = ("bishop", "planar2", "planar3")
# Tiny networks: a few seconds for all three arms on two cores.
TINY = {"samples": 4000, "epochs": 3, "hidden": (32, 32)}
COMPONENTS = {"bishop": 3, "planar2": 4, "planar3": 4}


@dataclass
class TrainedModel:
    """A tiny trained model: run folder (model.pt, config.json, ...), checkpoint, exported .onnx."""

    name: str
    run_dir: Path
    checkpoint: object  # ikmdn.train.Checkpoint (torch), kept untyped so this file needs no torch
    onnx_path: Path

    @property
    def arm(self):
        return self.checkpoint.arm


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory):
    """A function name -> TrainedModel that trains and exports each arm once per session."""
    cache: dict[str, TrainedModel] = {}

    def get(name: str) -> TrainedModel:
        if name not in cache:
            from ikmdn.export import export_onnx
            from ikmdn.train import TrainConfig, train_run

            config = TrainConfig(arm=name, components=COMPONENTS[name], seed=0, **TINY)
            run_dir = tmp_path_factory.mktemp(f"run-{name}")
            checkpoint = train_run(config, run_dir)
            # The .onnx gets a folder of its own, so "no external data next to it" is checkable.
            onnx_path = tmp_path_factory.mktemp(f"onnx-{name}") / f"{name}.onnx"
            report = export_onnx(checkpoint, onnx_path)
            assert report.ok, report.summary()
            cache[name] = TrainedModel(name, run_dir, checkpoint, onnx_path)
        return cache[name]

    return get


@pytest.fixture(scope="session", params=PRESET_ARMS)
def trained(request, trained_models) -> TrainedModel:
    """Each preset arm in turn."""
    return trained_models(request.param)


@pytest.fixture(scope="session")
def bishop(trained_models) -> TrainedModel:
    return trained_models("bishop")


@pytest.fixture(scope="session")
def planar2(trained_models) -> TrainedModel:
    return trained_models("planar2")


@pytest.fixture(scope="session")
def planar3(trained_models) -> TrainedModel:
    return trained_models("planar3")


@pytest.fixture(scope="session")
def onnx_solver(trained):
    """IKSolver over the exported .onnx of each preset arm in turn."""
    from ikmdn.solve import IKSolver

    return IKSolver.load(trained.onnx_path)


def workspace_targets(arm, n: int, seed: int) -> np.ndarray:
    """Targets (n, target_dim) inside the workspace: fk of joints drawn within the limits."""
    return arm.fk(arm.sample_joints(n, np.random.default_rng(seed)))


def outside_targets(arm, n: int, seed: int) -> np.ndarray:
    """Targets (n, target_dim) beyond the arm's reach (position 1.5 to 4 times the total length)."""
    rng = np.random.default_rng(seed)
    reach = float(np.sum(arm.link_lengths))
    angle = rng.uniform(-np.pi, np.pi, n)
    radius = rng.uniform(1.5, 4.0, n) * reach
    cols = [radius * np.cos(angle), radius * np.sin(angle)]
    if arm.target_dim == 3:
        cols.append(rng.uniform(-np.pi, np.pi, n))
    return np.stack(cols, axis=1)


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (this one's), with this checkout first on sys.path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(ROOT))
