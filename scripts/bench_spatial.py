"""Benchmark the spatial arms (rrr3, ur5, panda): MDN candidates vs random-restart LM.

On random reachable poses per arm (fk of joints drawn within the limits), in one process:
- the shipped MDN's refined candidates alone (no fallback seeds): share of closed-form branches
  found (rrr3, ur5), share of poses solved (<= 1e-6 m and <= 1e-6 rad), mean distinct solutions
  per pose, unrefined best-mode and min-over-modes errors (mm, degrees), poses/s at batch 1,000;
- the default solve (MDN candidates, then 64 fallback seeds where no mode converged): poses
  solved, share answered by a fallback seed, poses/s;
- random-restart LM with the same number of seeds (K), the same refinement settings and no
  fallback: the same measures as the MDN's candidates alone.

    python scripts/bench_spatial.py [--arms rrr3,ur5,panda] [--poses 1000]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from _common import MODELS, ROOT, write_results

from ikmdn.arms.closed_form import closed_form_ik, has_closed_form
from ikmdn.data import make_ik_dataset
from ikmdn.evaluate import branch_matches, mode_errors
from ikmdn.mixture import Mixture
from ikmdn.solve import IKSolver, Solutions


class RandomSeeds:
    """A stand-in model whose K 'modes' are joint vectors drawn uniformly within the limits."""

    def __init__(self, arm, components: int, seed: int):
        self.arm, self.components = arm, components
        self.rng = np.random.default_rng(seed)

    def predict(self, targets, threads=None) -> Mixture:
        n, k, dof = len(targets), self.components, self.arm.dof
        means = self.arm.sample_joints(n * k, self.rng).reshape(n, k, dof)
        return Mixture(np.full((n, k), 1.0 / k), means, np.ones((n, k, dof)))


def quality(arm, targets: np.ndarray, sol: Solutions) -> dict:
    out = {"solved": float(np.mean(sol.reachable)),
           "distinct_solutions_per_pose": float(np.mean(sol.solved.sum(axis=1)))}
    if has_closed_form(arm):
        branches, valid = closed_form_ik(arm, targets)
        solved_joints = np.where(sol.solved[..., None], sol.joints, np.nan)
        matched = branch_matches(solved_joints, branches, valid)
        out["branches_found"] = float(matched.sum() / valid.sum())
        out["branches_per_pose"] = float(valid.sum(axis=1).mean())
    return out


def timed_solve(solver: IKSolver, targets: np.ndarray) -> tuple[Solutions, float]:
    start = time.perf_counter()
    sol = solver.solve(targets)
    return sol, len(targets) / (time.perf_counter() - start)


def bench_arm(path: Path, n_poses: int, threads: int) -> dict:
    default = IKSolver.load(path, threads=threads)
    arm, k, settings = default.arm, default.model.components, default.refine_settings
    targets = make_ik_dataset(arm, n_poses, seed=31).inputs
    alone = IKSolver(default.model, settings, default.reach_tol, fallback_seeds=0)
    sol, speed = timed_solve(alone, targets)
    mixture = default.model.predict(targets)
    raw = mode_errors(arm, mixture, targets)
    best = np.argmax(mixture.weights, axis=1)
    reached = arm.fk(mixture.means[np.arange(len(best)), best].astype(np.float64))
    mdn = {**quality(arm, targets, sol), "poses_per_s": speed,
           "best_mode_position_mm": 1e3 * float(np.mean(arm.target_error(reached, targets))),
           "min_over_modes_position_mm": 1e3 * float(np.mean(raw["min_over_modes"]))}
    if arm.pose_targets:
        mdn["best_mode_rotation_deg"] = float(np.degrees(np.mean(arm.rotation_error(reached, targets))))
    full, full_speed = timed_solve(default, targets)
    with_fallback = {"solved": float(np.mean(full.reachable)), "fallback": float(np.mean(full.fallback)),
                     "fallback_seeds": default.fallback_seeds, "poses_per_s": full_speed}
    restarts, restart_speed = timed_solve(
        IKSolver(RandomSeeds(arm, k, seed=5), settings, default.reach_tol, fallback_seeds=0), targets)
    return {"model": str(path), "components": k, "poses": n_poses, "refine": asdict(settings),
            "mdn": mdn, "default_solve": with_fallback,
            "random_restarts": {**quality(arm, targets, restarts), "poses_per_s": restart_speed}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="rrr3,ur5,panda")
    parser.add_argument("--models", type=Path, default=MODELS)
    parser.add_argument("--poses", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "spatial.json")
    args = parser.parse_args()
    rows = {}
    for arm in args.arms.split(","):
        rows[arm] = r = bench_arm(args.models / f"{arm}.onnx", args.poses, args.threads)
        print(arm, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r["mdn"].items()})
        print(" " * len(arm), "default solve:", r["default_solve"])
        print(" " * len(arm), "random restarts:",
              {k: round(v, 4) for k, v in r["random_restarts"].items()}, flush=True)
    write_results(args.out, {"bench": "spatial", "arms": rows})
    print("\n| arm | K | method | poses solved | branches found | distinct solutions/pose "
          "| best-mode position (mm) | best-mode rotation (deg) | min-over-modes position (mm) "
          "| poses/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arm, r in rows.items():
        fallback = r["default_solve"]
        for name, m in (("MDN candidates + LM", r["mdn"]),
                        (f"default solve (+{r['default_solve']['fallback_seeds']} fallback seeds, "
                         f"used for {r['default_solve']['fallback']:.1%})", fallback),
                        ("random restarts + LM", r["random_restarts"])):
            def cell(key, fmt, m=m):
                return format(m[key], fmt) if key in m else "n/a"
            print(f"| {arm} | {r['components']} | {name} | {cell('solved', '.1%')} "
                  f"| {cell('branches_found', '.1%')} | {cell('distinct_solutions_per_pose', '.2f')} "
                  f"| {cell('best_mode_position_mm', '.1f')} | {cell('best_mode_rotation_deg', '.1f')} "
                  f"| {cell('min_over_modes_position_mm', '.1f')} | {cell('poses_per_s', ',.0f')} |")


if __name__ == "__main__":
    main()
