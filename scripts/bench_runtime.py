"""Benchmark inference: ONNX Runtime vs PyTorch eager, targets per second (issue: ONNX export).

Batches of 1, 1,000, 10,000 and 100,000 targets on 2 threads for the bishop model, and the
latency of a single-target call (median over many calls, through OnnxModel.predict with its
input checks, and the raw session.run).

    python scripts/bench_runtime.py [--checkpoint runs/bishop] [--threads 2]

The checkpoint (for the PyTorch side) defaults to runs/bishop as written by
scripts/build_exported_models.py; without it a default model is trained first (about a minute).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, best_time, call_times, write_results

from ikmdn.export import onnx_bytes
from ikmdn.runtime import OnnxModel
from ikmdn.train import default_config, load_checkpoint, train_run

BATCHES = (1, 1_000, 10_000, 100_000)


def single_call_us(fn, calls: int = 3000) -> float:
    """Median microseconds of fn() over calls (after 100 warm-up calls)."""
    return statistics.median(call_times(fn, calls, warmup=100)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "bishop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "runtime.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint.exists():
        checkpoint = load_checkpoint(args.checkpoint)
    else:
        print(f"{args.checkpoint} not found: training a default bishop model first")
        checkpoint = train_run(default_config("bishop"), Path(tempfile.mkdtemp()) / "bishop")
    onnx = OnnxModel(onnx_bytes(checkpoint), threads=args.threads)
    model = checkpoint.model.eval()
    arm = checkpoint.arm
    rng = np.random.default_rng(0)
    rows = []
    for batch in BATCHES:
        x = arm.fk(arm.sample_joints(batch, rng)).astype(np.float32)
        xt = torch.from_numpy(x)
        repeats = max(3, min(200, 200_000 // batch))

        def run_torch(xt=xt):
            with torch.inference_mode():
                model(xt)

        ort_s = best_time(lambda x=x: onnx.predict(x), repeats)
        torch_s = best_time(run_torch, repeats)
        rows.append({"batch": batch, "onnxruntime_per_s": batch / ort_s, "torch_per_s": batch / torch_s})
        print(f"batch {batch:>7,}: onnxruntime {batch / ort_s:>12,.0f} targets/s   "
              f"pytorch eager {batch / torch_s:>12,.0f} targets/s", flush=True)
    one = arm.fk(arm.sample_joints(1, rng)).astype(np.float32)
    feeds = {"targets": one}
    latency = {"predict_us": single_call_us(lambda: onnx.predict(one)),
               "session_run_us": single_call_us(lambda: onnx.session.run(None, feeds))}
    with torch.inference_mode():
        latency["torch_us"] = single_call_us(lambda: model(torch.from_numpy(one)))
    print(f"single target: OnnxModel.predict {latency['predict_us']:.1f} us, raw session.run "
          f"{latency['session_run_us']:.1f} us, pytorch eager {latency['torch_us']:.1f} us")
    write_results(args.out, {"bench": "runtime", "threads": args.threads, "batches": rows,
                             "single_call": latency})


if __name__ == "__main__":
    main()
