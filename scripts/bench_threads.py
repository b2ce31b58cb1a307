"""Benchmark thread settings: training steps and batch inference at 1 or 2 threads, with
spin-waiting threads on or off, on an idle machine and beside a competing busy process.

    python scripts/bench_threads.py [--rounds 3] [--seconds 6]

Training: Adam steps of the pose-chain default network (4 x 256, K = 32, batch 1024, UR5 data),
torch.set_num_threads(n), OMP_WAIT_POLICY=PASSIVE (threads sleep) or ACTIVE (they spin).
Inference: OnnxModel.predict on batches of 1,000 UR5 poses (exported_models/ur5.onnx), with
onnxruntime's session.intra_op.allow_spinning 0 or 1. Each setting runs in its own process (an
OpenMP wait policy is read once per process); rounds interleave the settings; medians reported,
with the load average beside each figure. "busy" runs a pure-Python spin loop in another process
for the whole measurement, like another job on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import MODELS, ROOT, write_results

SETTINGS = [(threads, wait) for threads in (1, 2) for wait in ("PASSIVE", "ACTIVE")]


def child(kind: str, threads: int, wait: str, seconds: float) -> float:
    """Rate (steps/s for training, poses/s for inference) of one setting, in this process."""
    import numpy as np

    from ikmdn.arms import get_arm

    arm = get_arm("ur5")
    rng = np.random.default_rng(0)
    if kind == "train":
        import torch

        from ikmdn.train import build_model, default_config

        torch.set_num_threads(threads)
        config = default_config("ur5")
        model = build_model(arm, config)
        q = arm.sample_joints(1024, rng)
        x, y = (torch.as_tensor(a, dtype=torch.float32) for a in (arm.fk(q), q))
        model.set_normalization(x.numpy(), y.numpy())
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad()
            model.loss(x, y).backward()
            opt.step()
    else:
        from ikmdn.runtime import OnnxModel

        model = OnnxModel(MODELS / "ur5.onnx", threads=threads, spinning=wait == "ACTIVE")
        x = arm.fk(arm.sample_joints(1000, rng))

        def step():
            model.predict(x)
    step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    rate = count / (time.perf_counter() - start)
    return rate * (1 if kind == "train" else 1000)


def spin_forever() -> None:
    while True:
        pass


def measure(kind: str, threads: int, wait: str, seconds: float) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": wait, "PYTHONPATH": str(ROOT / "scripts")}
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(threads), wait, str(seconds)],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "threads.json"))
    args = parser.parse_args()
    if args.child:
        kind, threads, wait, seconds = args.child
        print(child(kind, int(threads), wait, float(seconds)))
        return
    results = {}
    for load in ("idle", "busy"):
        competitor = None
        if load == "busy":
            competitor = multiprocessing.Process(target=spin_forever, daemon=True)
            competitor.start()
        try:
            for kind in ("train", "infer"):
                rates: dict[str, list[float]] = {f"{t} threads, {w}": [] for t, w in SETTINGS}
                loads = []
                for _ in range(args.rounds):
                    for threads, wait in SETTINGS:
                        rates[f"{threads} threads, {wait}"].append(measure(kind, threads, wait,
                                                                           args.seconds))
                        loads.append(os.getloadavg()[0])
                unit = "steps/s" if kind == "train" else "poses/s"
                for name, values in rates.items():
                    median = statistics.median(values)
                    results[f"{load} {kind} {name}"] = {"median": median, "all": values,
                                                        "load1": statistics.median(loads)}
                    print(f"{load:<5} {kind:<6} {name:<20} {median:10.1f} {unit} "
                          f"(load average {statistics.median(loads):.2f})", flush=True)
        finally:
            if competitor is not None:
                competitor.terminate()
    write_results(Path(args.out), results)


if __name__ == "__main__":
    main()
