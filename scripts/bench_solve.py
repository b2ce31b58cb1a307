"""Benchmark `ikmdn solve` quality and speed with the shipped models (issue: solve).

Quality on 10,000 random reachable targets per arm, with the closed-form IK as the oracle:
coverage (share of closed-form in-limit solutions matched within 1e-6 rad by a refined
candidate), share of best candidates with error <= 1e-9, unrefined best-mode RMS error.
Speed on 100,000 targets in batches (all modes, fk check, refinement, dedupe) on 2 threads,
with and without refinement, and the closed-form solver on the same targets (the speed of light
for a two-link arm).

    python scripts/bench_solve.py [--arms bishop,planar2,planar3] [--models exported_models]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import MODELS, ROOT, best_time, load_average, write_results

from ikmdn.arms.closed_form import closed_form_ik
from ikmdn.data import make_ik_dataset
from ikmdn.evaluate import coverage, mode_errors, rms
from ikmdn.solve import IKSolver


def bench_arm(path: Path, threads: int, n_quality: int, n_speed: int) -> dict:
    solver = IKSolver.load(path, threads=threads)
    arm = solver.arm
    targets = make_ik_dataset(arm, n_quality, seed=2024).inputs
    sol = solver.solve(targets)
    best_errors = sol.errors[np.arange(len(sol)), sol.best_index]
    raw = mode_errors(arm, solver.model.predict(targets), targets)
    result = {
        "model": str(path), "components": solver.model.components,
        **coverage(arm, targets, sol.joints),
        "best_error_le_1e-9": float(np.mean(best_errors <= 1e-9)),
        "reachable": float(np.mean(sol.reachable)),
        "distinct_solutions_per_target": float(np.mean(sol.solved.sum(axis=1))),
        "unrefined_best_mode_rms": rms(raw["best_mode"]),
        "unrefined_min_over_modes_rms": rms(raw["min_over_modes"]),
    }
    speed_targets = make_ik_dataset(arm, n_speed, seed=7).inputs
    refined_s = best_time(lambda: solver.solve(speed_targets), repeats=3)
    raw_s = best_time(lambda: solver.solve(speed_targets, refine=False), repeats=3)
    closed_s = best_time(lambda: closed_form_ik(arm, speed_targets), repeats=3)
    result.update({
        "targets_per_s_refined": n_speed / refined_s,
        "targets_per_s_unrefined": n_speed / raw_s,
        "closed_form_targets_per_s": n_speed / closed_s,
        "speed_of_light_ratio_refined": closed_s / refined_s,
        "load_average": load_average(),
    })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="bishop,planar2,planar3")
    parser.add_argument("--models", type=Path, default=MODELS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality-targets", type=int, default=10_000)
    parser.add_argument("--speed-targets", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "solve.json")
    args = parser.parse_args()
    rows = {}
    for arm in args.arms.split(","):
        r = bench_arm(args.models / f"{arm}.onnx", args.threads, args.quality_targets,
                      args.speed_targets)
        rows[arm] = r
        print(f"{arm:8} K={r['components']:<2} coverage {r['coverage']:.4%} of {r['branches']} "
              f"branches; best error <= 1e-9: {r['best_error_le_1e-9']:.4%}; unrefined best-mode "
              f"RMS {r['unrefined_best_mode_rms']:.2e}; refined {r['targets_per_s_refined']:,.0f}/s, "
              f"unrefined {r['targets_per_s_unrefined']:,.0f}/s, closed form "
              f"{r['closed_form_targets_per_s']:,.0f}/s (ratio {r['speed_of_light_ratio_refined']:.3f}, "
              f"load {r['load_average']:.2f})",
              flush=True)
    write_results(args.out, {"bench": "solve", "threads": args.threads, "arms": rows})
    print("\n| arm | K | coverage | best error <= 1e-9 | unrefined best-mode RMS | solutions/target "
          "| refined targets/s | unrefined targets/s | closed form targets/s | ratio | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arm, r in rows.items():
        print(f"| {arm} | {r['components']} | {r['coverage']:.2%} | {r['best_error_le_1e-9']:.2%} "
              f"| {r['unrefined_best_mode_rms']:.2e} | {r['distinct_solutions_per_target']:.2f} "
              f"| {r['targets_per_s_refined']:,.0f} | {r['targets_per_s_unrefined']:,.0f} "
              f"| {r['closed_form_targets_per_s']:,.0f} | {r['speed_of_light_ratio_refined']:.3f} "
              f"| {r['load_average']:.2f} |")


if __name__ == "__main__":
    main()
