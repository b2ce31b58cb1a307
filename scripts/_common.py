"""Shared helpers for the benchmark scripts: timing and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "exported_models"


def call_times(fn, calls: int, warmup: int = 1) -> list[float]:
    """Wall times in seconds of `calls` calls of fn(), after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_time(fn, repeats: int = 5) -> float:
    """Smallest wall time in seconds of fn() over repeats (after one warm-up call)."""
    return min(call_times(fn, repeats))


def load_average() -> float:
    """The machine's 1-minute load average (report it beside every speed figure)."""
    return os.getloadavg()[0]


def write_results(path: Path, results: dict) -> None:
    """Write results (plus the machine and its load average now) as JSON, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpu": platform.processor() or platform.machine(),
                           "python": platform.python_version(), "numpy": np.__version__,
                           "load_average": load_average()},
               **results}
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
