"""Compare conditional-density models of one arm: raw candidates, refinement effort, whole solves.

Each variant is a model file or training run (MDN or autoregressive mixture). On the same fresh
reachable poses (fk of joints drawn within the limits), in one process:

- raw (no refinement): the best candidate by one FK pass (the solver's ranking: residual norm),
  its mean position error (mm) and rotation error (deg); the heaviest candidate's; for arms with
  a closed form, the share of analytic in-limit branches with a candidate within 0.1 rad in
  every joint (and within 0.3 rad);
- LM effort: the median number of LM iterations of the candidates that converge (the smallest
  max_iter at which half of them have converged, by the same rules and settings);
- the default solve (mode "all"): poses solved, branches found (closed form), distinct
  solutions per pose, poses/s at batch 1,000 (median of interleaved rounds) and its ratio to the
  first variant's; inference alone (ms per 1,000 poses);
- from the file: training seconds and validation NLL;
- autoregressive variants: the raw figures again with the last factor's joint set by a 1-D
  search given the others (`snap_last_joint`): what a closed-form-aware last factor could give.

    python scripts/bench_model.py --arm ur5 mdn=exported_models/ur5.onnx ar=runs/ur5-ar/ur5.onnx
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import ROOT, write_results

from ikmdn.arms import get_arm
from ikmdn.arms.closed_form import closed_form_ik, has_closed_form
from ikmdn.data import make_ik_dataset
from ikmdn.errors import IKMDNError
from ikmdn.evaluate import branch_matches
from ikmdn.mixture import Mixture
from ikmdn.refine import refine, residual_norm
from ikmdn.solve import IKSolver


def raw_quality(arm, mixture: Mixture, targets: np.ndarray, branches) -> dict:
    n, k, dof = mixture.means.shape
    means = mixture.means.astype(np.float64)
    reached = arm.fk(means.reshape(n * k, dof))
    flat_targets = np.repeat(targets, k, axis=0)
    norm = residual_norm(arm, reached, flat_targets).reshape(n, k)
    rows = np.arange(n)
    out = {}
    for name, pick in (("best_by_fk", norm.argmin(1)), ("heaviest", mixture.weights.argmax(1))):
        chosen = (rows * k + pick)
        out[f"{name}_position_mm"] = 1e3 * float(np.mean(
            arm.target_error(reached[chosen], targets)))
        if arm.pose_targets:
            out[f"{name}_rotation_deg"] = float(np.degrees(np.mean(
                arm.rotation_error(reached[chosen], targets))))
    if branches is not None:
        joints, valid = branches
        for tol in (0.1, 0.3):
            out[f"branches_within_{tol}_rad"] = float(
                branch_matches(means, joints, valid, tol=tol).sum() / valid.sum())
    return out


def snap_last_joint(arm, order, means: np.ndarray, targets: np.ndarray, grid: int = 720,
                    steps: int = 30) -> np.ndarray:
    """Candidates means (N, K, dof) with the last factor's joint (order[-1]) set to the value
    within its limits that minimises the refinement's residual given the other joints: a grid,
    then a ternary search in the best cell (the ceiling of a closed-form-aware last factor,
    measured offline; not what the model or solver do)."""
    n, k, dof = means.shape
    last = order[-1]
    lo, hi = arm.joint_limits[last]
    flat, x = means.reshape(n * k, dof).astype(np.float64), np.repeat(targets, k, axis=0)

    def cost(values):  # residual norm with the last joint at values (M,)
        q = flat.copy()
        q[:, last] = values
        return residual_norm(arm, arm.fk(q), x)

    cells = np.linspace(lo, hi, grid)
    best = np.argmin(np.stack([cost(np.full(len(flat), v)) for v in cells], axis=1), axis=1)
    width = cells[1] - cells[0]
    a, b = np.maximum(cells[best] - width, lo), np.minimum(cells[best] + width, hi)
    for _ in range(steps):
        m1, m2 = a + (b - a) / 3, b - (b - a) / 3
        left = cost(m1) < cost(m2)
        a, b = np.where(left, a, m1), np.where(left, m2, b)
    flat[:, last] = (a + b) / 2
    return flat.reshape(n, k, dof)


def median_iterations(solver: IKSolver, mixture: Mixture, targets: np.ndarray) -> dict:
    """Median LM iterations of the candidates (mixture.means) that converge under the solver's
    settings."""
    arm, settings = solver.arm, solver.refine_settings
    means = mixture.means.astype(np.float64)
    n, k, dof = means.shape
    q0, x = means.reshape(n * k, dof), np.repeat(targets, k, axis=0)
    converged = refine(arm, q0, x, settings)[2] <= settings.tol
    total = int(converged.sum())
    for cap in range(settings.max_iter + 1):
        done = refine(arm, q0, x, replace(settings, max_iter=cap))[2] <= settings.tol
        if (done & converged).sum() * 2 >= total:
            return {"median_lm_iterations": cap, "converged_candidates": total / (n * k)}
    return {"median_lm_iterations": None, "converged_candidates": total / (n * k)}


def solve_quality(solver: IKSolver, targets: np.ndarray, branches) -> dict:
    sol = solver.solve(targets)
    out = {"solved": float(np.mean(sol.reachable)),
           "distinct_solutions_per_pose": float(np.mean(sol.solved.sum(axis=1)))}
    if branches is not None:
        joints, valid = branches
        solved_joints = np.where(sol.solved[..., None], sol.joints, np.nan)
        out["branches_found"] = float(branch_matches(solved_joints, joints, valid).sum() / valid.sum())
    return out


def speeds(solvers: dict[str, IKSolver], targets: np.ndarray, rounds: int) -> dict:
    """Median poses/s of solve and ms per 1,000 poses of predict, interleaved rounds."""
    solve_t = {name: [] for name in solvers}
    predict_t = {name: [] for name in solvers}
    for s in solvers.values():
        s.solve(targets[:50])  # warm-up (kernel cache, sessions)
    for _ in range(rounds):
        for name, s in solvers.items():
            start = time.perf_counter()
            s.model.predict(targets)
            mid = time.perf_counter()
            s.solve(targets)
            predict_t[name].append(mid - start)
            solve_t[name].append(time.perf_counter() - mid)
    return {name: {"poses_per_s": len(targets) / float(np.median(solve_t[name])),
                   "predict_ms_per_1000": 1e3 * float(np.median(predict_t[name])) * 1000 / len(targets)}
            for name in solvers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="NAME=PATH (a .onnx file or a training run)")
    parser.add_argument("--arm", required=True, help="the preset the variants were trained on")
    parser.add_argument("--poses", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    try:
        arm = get_arm(args.arm)
    except IKMDNError as exc:
        parser.error(str(exc))
    targets = make_ik_dataset(arm, args.poses, seed=4242).inputs
    branches = closed_form_ik(arm, targets) if has_closed_form(arm) else None
    solvers, rows = {}, {}
    for text in args.variants:
        name, sep, path = text.partition("=")
        if not sep or not name or not Path(path).exists():
            parser.error(f"a variant is NAME=PATH with an existing .onnx file or run folder, "
                         f"got {text!r}")
        try:
            solver = IKSolver.load(path, threads=args.threads)
        except IKMDNError as exc:
            parser.error(f"variant {name}: {exc}")
        if solver.arm.spec() != arm.spec():
            parser.error(f"variant {name} ({path}) is a model of {solver.arm.name}, not of the "
                         f"preset {args.arm}")
        solvers[name] = solver
        mixture = solver.model.predict(targets)
        meta = getattr(solver.model, "metrics", None) or {}
        config = getattr(solver.model, "train_config", None) or {}
        order = config.get("joint_order")
        snapped = {} if not order else {
            f"last_joint_searched_{key}": value for key, value in raw_quality(
                arm, Mixture(mixture.weights, snap_last_joint(arm, order, mixture.means, targets),
                             mixture.sigmas), targets, branches).items()}
        rows[name] = {"path": path, "kind": config.get("kind", "mdn"),
                      "joint_order": config.get("joint_order"), "components": solver.model.components,
                      "train_seconds": meta.get("train_seconds"), "val_nll": meta.get("val_nll"),
                      **raw_quality(arm, mixture, targets, branches),
                      **median_iterations(solver, mixture, targets),
                      **solve_quality(solver, targets, branches), **snapped}
        print(name, rows[name], flush=True)
    timing = speeds(solvers, targets, args.rounds)
    first = next(iter(timing.values()))["poses_per_s"]
    for name in rows:
        rows[name].update(timing[name], speed_ratio=timing[name]["poses_per_s"] / first)
    load = os.getloadavg()
    write_results(args.out or ROOT / "bench_out" / f"model_{args.arm}.json",
                  {"bench": "model", "arm": args.arm, "poses": args.poses, "load": load,
                   "variants": rows})
    print(f"\n{args.arm}, {args.poses} poses, load {load[0]:.2f} {load[1]:.2f}")
    print("| variant | kind | order | train s | best raw by FK | heaviest | branches <= 0.1 rad "
          "| median LM iters | solved | branches found | solutions/pose | poses/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def cell(r, key, fmt):
        return "n/a" if r.get(key) is None else format(r[key], fmt)

    for name, r in rows.items():
        rot = arm.pose_targets
        best = f"{r['best_by_fk_position_mm']:.1f} mm" + (
            f" / {r['best_by_fk_rotation_deg']:.2f} deg" if rot else "")
        heavy = f"{r['heaviest_position_mm']:.1f} mm" + (
            f" / {r['heaviest_rotation_deg']:.1f} deg" if rot else "")
        print(f"| {name} | {r['kind']} | {r['joint_order'] or '-'} | {cell(r, 'train_seconds', '.0f')} "
              f"| {best} | {heavy} | {cell(r, 'branches_within_0.1_rad', '.1%')} "
              f"| {cell(r, 'median_lm_iterations', 'd')} | {r['solved']:.2%} "
              f"| {cell(r, 'branches_found', '.2%')} | {r['distinct_solutions_per_pose']:.2f} "
              f"| {r['poses_per_s']:,.0f} | {r['speed_ratio']:.2f} |")
    for name, r in rows.items():
        if "last_joint_searched_best_by_fk_position_mm" in r:
            rot = (f" / {r['last_joint_searched_best_by_fk_rotation_deg']:.2f} deg"
                   if arm.pose_targets else "")
            within = r.get("last_joint_searched_branches_within_0.1_rad")
            print(f"{name}, the last factor's joint set by a 1-D search (a closed-form-aware last "
                  f"factor's ceiling): best raw {r['last_joint_searched_best_by_fk_position_mm']:.1f} "
                  f"mm{rot}" + ("" if within is None else f", branches within 0.1 rad {within:.1%}"))


if __name__ == "__main__":
    main()
