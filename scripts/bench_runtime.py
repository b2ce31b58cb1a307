"""Benchmark inference: ONNX Runtime vs PyTorch eager, and the refined solver of ONNX format 2.

Format 1 (the network): batches of 1, 1,000, 10,000 and 100,000 targets on 2 threads for the
bishop model, and the latency of a single-target call (median over many calls, through
OnnxModel.predict with its input checks, and the raw session.run).

Format 2 (issue 12, the shipped exported_models/*.onnx): Bishop's arm, the whole graph (network and
refinement) on 100,000 targets against the closed-form solver in the same process (their
speed ratio; the bar is 0.20) and the share of targets whose best candidate is within 1e-9;
OnnxModel.predict of the format-2 file (its network-only session) against the same network as a
format-1 file; bishop, planar2 and planar3 on 10,000 targets: solved share, coverage and
per-target solution counts of the graph and of the Python solver; UR5 and Panda on 1,000 poses:
solved share, distinct solutions per pose and poses
per second of the graph and of the Python solver (IKSolver, numba refinement, with no fallback
seeds: the same candidates under the same rules; and with its default fallback seeds); file
sizes. The machine's 1-minute load average is printed beside every figure (2 shared cores).

    python scripts/bench_runtime.py [--part all|format1|format2] [--checkpoint runs/bishop]
                                    [--threads 2]

The checkpoint (for the PyTorch side of format 1) defaults to runs/bishop as written by
scripts/build_exported_models.py; without it a default model is trained first (about a minute).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import MODELS, ROOT, best_time, call_times, load_average, write_results

from ikmdn.arms.closed_form import closed_form_ik
from ikmdn.data import make_ik_dataset
from ikmdn.evaluate import coverage
from ikmdn.export import format1_bytes
from ikmdn.runtime import OnnxModel
from ikmdn.solve import IKSolver, solved_mask

BATCHES = (1, 1_000, 10_000, 100_000)
BISHOP_TARGETS = 100_000
POSES = 1_000
RATIO_BAR = 0.20


def single_call_us(fn, calls: int = 3000) -> float:
    """Median microseconds of fn() over calls (after 100 warm-up calls)."""
    return statistics.median(call_times(fn, calls, warmup=100)) * 1e6


def format1(args) -> dict:
    import torch

    from ikmdn.export import onnx_bytes
    from ikmdn.train import default_config, load_checkpoint, train_run

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
        rows.append({"batch": batch, "onnxruntime_per_s": batch / ort_s, "torch_per_s": batch / torch_s,
                     "load": load_average()})
        print(f"batch {batch:>7,}: onnxruntime {batch / ort_s:>12,.0f} targets/s   "
              f"pytorch eager {batch / torch_s:>12,.0f} targets/s   (load {load_average():.2f})", flush=True)
    one = arm.fk(arm.sample_joints(1, rng)).astype(np.float32)
    feeds = {"targets": one}
    latency = {"predict_us": single_call_us(lambda: onnx.predict(one)),
               "session_run_us": single_call_us(lambda: onnx.session.run(None, feeds))}
    with torch.inference_mode():
        latency["torch_us"] = single_call_us(lambda: model(torch.from_numpy(one)))
    latency["load"] = load_average()
    print(f"single target: OnnxModel.predict {latency['predict_us']:.1f} us, raw session.run "
          f"{latency['session_run_us']:.1f} us, pytorch eager {latency['torch_us']:.1f} us "
          f"(load {load_average():.2f})")
    return {"batches": rows, "single_call": latency}


def _best_error(out) -> np.ndarray:
    """(N,) per target the smallest error of a distinct in-limit candidate (inf if none)."""
    usable = out.distinct & out.within_limits
    return np.where(usable, np.maximum(out.errors, out.rotation_errors), np.inf).min(axis=1)


def _graph_solved(out, tol: float = 1e-6) -> np.ndarray:
    """(N, K) the candidates a client counts as solutions (as Solutions.solved)."""
    return solved_mask(out.distinct, out.within_limits, out.errors, out.rotation_errors, tol)


def bishop(args) -> dict:
    """The format-2 graph on 100,000 Bishop targets vs the closed-form solver, same process."""
    model = OnnxModel(MODELS / "bishop.onnx", threads=args.threads)
    arm = model.arm
    x = arm.fk(arm.sample_joints(BISHOP_TARGETS, np.random.default_rng(0)))
    model.refined(x[:10])  # the graph's session, made on first use
    closed_form_ik(arm, x)
    # interleaved, so that both see the same load; the best of each
    graph_s = closed_s = float("inf")
    for _ in range(2 * args.repeats):
        graph_s = min(graph_s, call_times(lambda: model.refined(x), 1, warmup=0)[0])
        closed_s = min(closed_s, call_times(lambda: closed_form_ik(arm, x), 1, warmup=0)[0])
    out = model.refined(x)
    best = _best_error(out)
    # predict of the format-2 file (network-only session) vs the same network as a format-1 file
    raw = OnnxModel(format1_bytes((MODELS / "bishop.onnx").read_bytes()), threads=args.threads)
    predict2_s = best_time(lambda: model.predict(x), args.repeats)
    predict1_s = best_time(lambda: raw.predict(x), args.repeats)
    result = {"targets": len(x), "graph_s": graph_s, "closed_form_s": closed_s,
              "ratio": closed_s / graph_s, "bar": RATIO_BAR,
              "best_error_within_1e-9": float(np.mean(best <= 1e-9)),
              "predict_format2_s": predict2_s, "predict_format1_s": predict1_s, "load": load_average()}
    print(f"bishop, {len(x):,} targets: format-2 graph {graph_s * 1e3:.1f} ms "
          f"({len(x) / graph_s:,.0f} targets/s), closed form {closed_s * 1e3:.1f} ms: ratio "
          f"{result['ratio']:.3f} (bar {RATIO_BAR}) (load {load_average():.2f})")
    print(f"  best error <= 1e-9 for {result['best_error_within_1e-9']:.3%} of targets; "
          f"predict: format 2 {predict2_s * 1e3:.1f} ms, format 1 {predict1_s * 1e3:.1f} ms "
          f"(load {load_average():.2f})", flush=True)
    return result


def spatial(args, name: str) -> dict:
    """Graph vs Python solver on 1,000 poses of a spatial arm."""
    model = OnnxModel(MODELS / f"{name}.onnx", threads=args.threads)
    arm = model.arm
    x = arm.fk(arm.sample_joints(POSES, np.random.default_rng(3)))
    start = time.perf_counter()
    model.refined(x[:2])
    session_s = time.perf_counter() - start
    graph_s = best_time(lambda: model.refined(x), args.repeats)
    out = model.refined(x)
    solved = _graph_solved(out)
    same_rules = IKSolver(model, fallback_seeds=0)
    same_rules.solve(x[:2])   # numba's compiled kernel loads
    python_s = best_time(lambda: same_rules.solve(x), args.repeats)
    sol = same_rules.solve(x)
    default = IKSolver(model)
    default_s = best_time(lambda: default.solve(x), args.repeats)
    dsol = default.solve(x)
    result = {
        "poses": len(x), "load": load_average(), "graph_session_s": session_s,
        "graph": {"solved": float(solved.any(axis=1).mean()),
                  "distinct_per_pose": float(solved.sum(axis=1).mean()),
                  "poses_per_s": len(x) / graph_s},
        "python": {"solved": float(sol.reachable.mean()),
                   "distinct_per_pose": float(sol.solved.sum(axis=1).mean()),
                   "poses_per_s": len(x) / python_s},
        "python_default": {"solved": float(dsol.reachable.mean()),
                           "distinct_per_pose": float(dsol.solved.sum(axis=1).mean()),
                           "poses_per_s": len(x) / default_s,
                           "fallback_seeds": default.fallback_seeds},
        "same_solved_poses": float(np.mean(solved.any(axis=1) == sol.reachable)),
        "same_distinct_count": float(np.mean(solved.sum(axis=1) == sol.solved.sum(axis=1))),
    }
    g, p, d = result["graph"], result["python"], result["python_default"]
    print(f"{name}, {len(x):,} poses (load {load_average():.2f}): graph solved {g['solved']:.2%}, "
          f"{g['distinct_per_pose']:.3f} distinct solutions per pose, {g['poses_per_s']:,.0f} poses/s "
          f"(session made in {session_s:.1f} s)")
    print(f"  Python solver, no fallback seeds: solved {p['solved']:.2%}, "
          f"{p['distinct_per_pose']:.3f} per pose, {p['poses_per_s']:,.0f} poses/s; same solved flag "
          f"{result['same_solved_poses']:.2%}, same count {result['same_distinct_count']:.2%} of poses")
    print(f"  Python solver, default ({d['fallback_seeds']} fallback seeds): solved {d['solved']:.2%}, "
          f"{d['distinct_per_pose']:.3f} per pose, {d['poses_per_s']:,.0f} poses/s "
          f"(load {load_average():.2f})", flush=True)
    return result


def planar(args, name: str, n: int = 10_000) -> dict:
    """Graph vs Python solver on 10,000 targets of a planar arm: solved share, coverage of the
    closed-form solutions and per-target solution counts."""
    model = OnnxModel(MODELS / f"{name}.onnx", threads=args.threads)
    arm = model.arm
    x = make_ik_dataset(arm, n, seed=2024).inputs
    out, sol = model.refined(x), IKSolver(model).solve(x)
    solved = _graph_solved(out)
    def covered(mask, joints):
        return coverage(arm, x, np.where(mask[..., None], joints, np.nan))["coverage"]

    result = {
        "targets": n, "load": load_average(),
        "graph": {"solved": float(solved.any(axis=1).mean()), "coverage": covered(solved, out.joints)},
        "python": {"solved": float(sol.reachable.mean()), "coverage": covered(sol.solved, sol.joints)},
        "same_solution_count": float(np.mean(solved.sum(axis=1) == sol.solved.sum(axis=1))),
    }
    g, p = result["graph"], result["python"]
    print(f"{name}, {n:,} targets: solved graph {g['solved']:.2%} / Python {p['solved']:.2%}, coverage "
          f"{g['coverage']:.2%} / {p['coverage']:.2%}, same solution count for "
          f"{result['same_solution_count']:.2%} of targets (load {load_average():.2f})", flush=True)
    return result


def sizes() -> list[dict]:
    rows = []
    for path in sorted(MODELS.glob("*.onnx")):
        data = path.read_bytes()
        network = len(format1_bytes(data))
        rows.append({"model": path.name, "bytes": len(data), "network_bytes": network})
        print(f"{path.name:<13} {len(data) / 1024:>6.0f} KiB (network {network / 1024:.0f} KiB, "
              f"refinement {(len(data) - network) / 1024:.0f} KiB)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "format1", "format2"), default="all")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "bishop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per format-2 figure (best)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "runtime.json")
    args = parser.parse_args()
    results: dict = {"bench": "runtime", "threads": args.threads}
    if args.part in ("all", "format2"):
        results["format2"] = {"bishop": bishop(args),
                              **{f"{name}_parity": planar(args, name)
                                 for name in ("bishop", "planar2", "planar3")},
                              "ur5": spatial(args, "ur5"), "panda": spatial(args, "panda"),
                              "sizes": sizes()}
    if args.part in ("all", "format1"):
        results.update(format1(args))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
