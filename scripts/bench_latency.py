"""Benchmark online IK: single-pose latency, one answer per pose, all solutions, `near` and paths,
side by side with roboticstoolbox-python's C++ Levenberg-Marquardt (`ik_LM`) in one process.

    pip install -e '.[bench]'      # roboticstoolbox-python, for the peer solver
    python scripts/bench_latency.py [--arms ur5,panda] [--poses 1000] [--single 500]
                                    [--baseline-commit 6ded1e5] [--models DIR] [--suffix -mdn]

Same kinematics: the peer is a roboticstoolbox DHRobot built from the DH table of ikmdn's preset
(UR5; Panda to the flange), checked to agree with ikmdn's forward kinematics first. A pose is
solved when an in-limit answer is within 1e-6 m and 1e-6 rad, checked by ikmdn's FK for both.
The peer's one-answer mode is its own random restarts until success (q0=None, up to 100).

- single pose (median over --single poses, one call each): ikmdn mode "all", mode "best", mode
  "best" near the true joints perturbed by 0.05 rad; ik_LM random restarts; ik_LM seeded near;
- one answer per pose, a batch of --poses: ikmdn mode "best" (one call) vs ik_LM in a loop;
- all solutions, a batch of --poses: ikmdn mode "all" (poses/s, solved, closed-form branches
  found for UR5, distinct solutions per pose), and the same solve with the refinement of
  --baseline-commit (the numpy LM before the compiled kernel, loaded from git) in the same
  process, interleaved: the speed-up over "today";
- near (UR5): the reference 0.1 rad (Euclidean norm) from one closed-form solution; the share of
  answers that are that solution (mode "best", and mode "all" best());
- paths (UR5): 200-step straight Cartesian lines (0.2 m, fixed orientation) from random
  configurations, solve_path: discontinuities (jumps > 0.5 rad) and the largest joint jump.
Timings alternate between the solvers over --rounds rounds (median); the machine's 1-minute load
average is printed beside each figure. Results in bench_out/latency.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import MODELS, ROOT, load_average, write_results

import ikmdn.solve as solve_module
from ikmdn.arms.closed_form import closed_form_ik, has_closed_form
from ikmdn.arms.serial import poses_to_targets
from ikmdn.evaluate import branch_matches
from ikmdn.solve import IKSolver, joint_distance

TOL = 1e-6


def load() -> str:
    return f"load {load_average():.2f}"


def peer_robot(name: str):
    """roboticstoolbox's ETS of the arm built from the same DH table as ikmdn's preset (UR's
    standard DH; Franka's modified DH with the flange), joint limits included."""
    import roboticstoolbox as rtb
    from spatialmath import SE3

    from ikmdn.arms import get_arm

    limits = get_arm(name).joint_limits
    pi = np.pi
    if name == "ur5":
        a = [0.0, -0.425, -0.39225, 0.0, 0.0, 0.0]
        d = [0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823]
        alpha = [pi / 2, 0.0, 0.0, pi / 2, -pi / 2, 0.0]
        links = [rtb.RevoluteDH(a=a[i], d=d[i], alpha=alpha[i], qlim=limits[i]) for i in range(6)]
        return rtb.DHRobot(links, name="ur5").ets()
    a = [0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088]
    d = [0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0]
    alpha = [0.0, -pi / 2, pi / 2, pi / 2, -pi / 2, pi / 2, pi / 2]
    links = [rtb.RevoluteMDH(a=a[i], d=d[i], alpha=alpha[i], qlim=limits[i]) for i in range(7)]
    return rtb.DHRobot(links, tool=SE3(0, 0, 0.107), name="panda").ets()


def check_fk(arm, ets, rng) -> float:
    q = arm.sample_joints(200, rng)
    ours = arm.poses(q)
    theirs = np.array([ets.eval(row) for row in q])
    return float(np.abs(ours - theirs).max())


def solved(arm, q: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N,) answers q (N, dof) in limits and within TOL m and TOL rad of targets (N, 9)."""
    reached = arm.fk(q)
    return (arm.within_limits(q) & (arm.target_error(reached, targets) <= TOL)
            & (arm.rotation_error(reached, targets) <= TOL))


def peer_solve(ets, pose: np.ndarray, q0=None) -> np.ndarray:
    sol = ets.ik_LM(pose, q0=q0, ilimit=30, slimit=100, tol=1e-14, joint_limits=True)
    return np.asarray(sol.q, dtype=np.float64)


def interleaved(fns: dict, rounds: int) -> dict:
    """Median wall time of each fn over rounds, the fns alternating within each round."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def baseline_refine(commit: str):
    """The `refine` function of ikmdn/refine.py at commit (from git), or None where unavailable."""
    try:
        text = subprocess.run(["git", "show", f"{commit}:ikmdn/refine.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "baseline_refine.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("baseline_refine", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_refine"] = module
    spec.loader.exec_module(module)

    def refine(arm, q0, targets, settings, threads=None):   # the old numpy LM is one thread
        return module.refine(arm, q0, targets, settings)
    return refine


def single_pose(name, solver, ets, poses, targets, truth, rng, out):
    arm = solver.arm
    n = len(targets)
    lo, hi = arm.joint_limits.T   # a robot's current joints lie within its limits
    near = np.clip(truth + 0.05 * rng.standard_normal(truth.shape), lo, hi)
    ours = {"all": [], "best": [], "best near": []}
    peer = {"ik_LM random restarts": [], "ik_LM seeded near": []}
    ok = {key: 0 for key in [*ours, *peer]}
    for i in range(n):
        x = targets[i:i + 1]
        for key, kwargs in (("all", {}), ("best", {"mode": "best"}),
                            ("best near", {"mode": "best", "near": near[i]})):
            start = time.perf_counter()
            sol = solver.solve(x, **kwargs)
            ours[key].append(time.perf_counter() - start)
            ok[key] += bool(solved(arm, sol.best(), x)[0])
        for key, q0 in (("ik_LM random restarts", None), ("ik_LM seeded near", near[i])):
            start = time.perf_counter()
            q = peer_solve(ets, poses[i], q0)
            peer[key].append(time.perf_counter() - start)
            ok[key] += bool(solved(arm, q[None], x)[0])
    for key, values in {**ours, **peer}.items():
        ms = statistics.median(values) * 1e3
        out[f"single_{key}_ms"] = ms
        out[f"single_{key}_solved"] = ok[key] / n
        print(f"{name} single pose, {key:<22} median {ms:7.3f} ms, solved {ok[key] / n:7.2%} ({load()})",
              flush=True)


def one_answer_batch(name, solver, ets, poses, targets, rounds, out):
    arm = solver.arm
    answers = {}

    def ours():
        answers["ours"] = solver.solve(targets, mode="best").best()

    def peer():
        answers["peer"] = np.array([peer_solve(ets, p) for p in poses])

    t = interleaved({"ours": ours, "peer": peer}, rounds)
    for key, label in (("ours", "ikmdn mode best"), ("peer", "ik_LM random restarts")):
        rate = len(targets) / t[key]
        share = float(solved(arm, answers[key], targets).mean())
        out[f"one_answer_{key}_poses_per_s"] = rate
        out[f"one_answer_{key}_solved"] = share
        print(f"{name} one answer per pose, batch {len(targets)}: {label:<22} {rate:9.0f} poses/s, "
              f"solved {share:.2%} ({load()})", flush=True)
    out["one_answer_ratio"] = t["peer"] / t["ours"]
    print(f"{name} one answer per pose: ikmdn / ik_LM throughput {out['one_answer_ratio']:.2f}x", flush=True)


def all_solutions(name, solver, targets, rounds, baseline, out):
    arm = solver.arm
    result = {}

    def ours():
        result["ours"] = solver.solve(targets)

    fns = {"ours": ours}
    if baseline is not None:
        def today():
            current = solve_module.refine
            solve_module.refine = baseline
            try:
                result["today"] = solver.solve(targets)
            finally:
                solve_module.refine = current
        fns["today"] = today
    t = interleaved(fns, rounds)
    for key in fns:
        sol = result[key]
        rate = len(targets) / t[key]
        out[f"all_{key}_poses_per_s"] = rate
        out[f"all_{key}_solved"] = float(sol.reachable.mean())
        out[f"all_{key}_distinct_per_pose"] = float(sol.solved.sum(axis=1).mean())
        extra = ""
        if has_closed_form(arm):
            branches, valid = closed_form_ik(arm, targets)
            solved_joints = np.where(sol.solved[..., None], sol.joints, np.nan)  # solutions only
            found = branch_matches(solved_joints, branches, valid)
            out[f"all_{key}_branches_found"] = float(found.sum() / valid.sum())
            extra = f", branches found {out[f'all_{key}_branches_found']:.2%}"
        label = "ikmdn mode all" if key == "ours" else f"refinement of {args_commit}"
        print(f"{name} all solutions, batch {len(targets)}: {label:<28} {rate:8.0f} poses/s, solved "
              f"{out[f'all_{key}_solved']:.2%}, distinct {out[f'all_{key}_distinct_per_pose']:.2f}/pose"
              f"{extra} ({load()})", flush=True)
    if "today" in t:
        out["all_speedup_over_today"] = t["today"] / t["ours"]
        print(f"{name} all solutions: {out['all_speedup_over_today']:.2f}x the poses/s of {args_commit}",
              flush=True)


def near_check(solver, targets, rng, out):
    """The reference 0.1 rad from one closed-form solution: is the answer that solution? Also
    whether it is the closed-form solution nearest the reference (when another lies within
    0.1 rad of the reference, that one is the right answer) and the share on poses where every
    other solution is more than 0.3 rad from the chosen one (no ambiguity). Matches within
    1e-6 rad, and 1e-4 rad (badly conditioned poses: a 1e-9 residual can move joints by 5e-6)."""
    arm = solver.arm
    branches, valid = closed_form_ik(arm, targets)
    pick = np.array([rng.choice(np.flatnonzero(v)) for v in valid])
    rows = np.arange(len(targets))
    chosen = branches[rows, pick]
    direction = rng.standard_normal(chosen.shape)
    reference = chosen + 0.1 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    to_ref = np.where(valid, joint_distance(arm, branches, reference[:, None]), np.inf)
    nearest = branches[rows, np.argmin(to_ref, axis=1)]
    others = np.where(valid, joint_distance(arm, branches, chosen[:, None]), np.inf)
    others[rows, pick] = np.inf
    clear = others.min(axis=1) > 0.3
    out["near_unambiguous_poses"] = int(clear.sum())
    for key, kwargs in (("best", {"mode": "best"}), ("all", {})):
        answer = solver.solve(targets, near=reference, **kwargs).best()
        for tol in (1e-6, 1e-4):
            same = joint_distance(arm, answer, chosen) <= tol
            near = joint_distance(arm, answer, nearest) <= tol
            out[f"near_{key}_is_that_solution_{tol:g}"] = float(same.mean())
            out[f"near_{key}_is_nearest_solution_{tol:g}"] = float(near.mean())
            out[f"near_{key}_unambiguous_is_that_solution_{tol:g}"] = float(same[clear].mean())
            print(f"ur5 near (0.1 rad from a closed-form solution), mode {key}, match {tol:g} rad: "
                  f"that solution {same.mean():.2%}, the nearest closed-form solution "
                  f"{near.mean():.2%}, that solution where no other is within 0.3 rad "
                  f"{same[clear].mean():.2%} of {clear.sum()} ({load()})", flush=True)


def nearest_branch_gap(arm, targets, previous):
    """(N,) for each step, the largest joint change (wrap-aware) from our previous answer to the
    nearest closed-form in-limit solution: above the switch threshold, no continuous joint path
    from where we were exists (a singularity on our branch)."""
    branches, valid = closed_form_ik(arm, targets)
    gap = np.abs((branches - previous[:, None, :] + np.pi) % (2 * np.pi) - np.pi).max(axis=2)
    return np.where(valid, gap, np.inf).min(axis=1)


def path_check(solver, rng, out, lines: int = 20, steps: int = 200):
    """Straight 0.2 m lines at fixed orientation from random configurations, solved with
    solve_path. A discontinuity is avoidable when some closed-form solution of that step lies
    within the threshold of our previous answer; otherwise the line crosses a singularity of the
    branch we are on, where no continuous joint path exists."""
    arm = solver.arm
    switches = avoidable = 0
    largest, redrawn, done = 0.0, 0, 0
    while done < lines:
        start = arm.sample_joints(1, rng)[0]
        pose = arm.poses(start)[0]
        direction = rng.standard_normal(3)
        ends = pose[:3, 3] + 0.2 * direction / np.linalg.norm(direction)
        poses = np.repeat(pose[None], steps, axis=0)
        poses[:, :3, 3] = np.linspace(pose[:3, 3], ends, steps)
        targets = poses_to_targets(poses)
        path = solver.solve_path(targets, start)
        if not path.reachable.all():   # the line leaves the workspace: draw another
            redrawn += 1
            continue
        done += 1
        previous = np.concatenate([start[None], path.joints[:-1]])
        inherent = nearest_branch_gap(arm, targets, previous) > path.switch_threshold
        switches += int(path.switches.sum())
        avoidable += int((path.switches & ~inherent).sum())
        largest = max(largest, path.largest_jump)
    out.update(path_lines=lines, path_steps=steps, path_switches=switches,
               path_avoidable_switches=avoidable, path_largest_jump=largest,
               path_lines_leaving_workspace=redrawn)
    print(f"ur5 solve_path: {lines} straight lines of {steps} steps (0.2 m): {switches} "
          f"discontinuities, {avoidable} of them avoidable (a closed-form solution within the threshold "
          f"of the previous answer); "
          f"largest joint jump {largest:.4f} rad ({redrawn} lines that left the workspace redrawn) "
          f"({load()})", flush=True)


args_commit = ""


def main() -> None:
    global args_commit
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="ur5,panda")
    parser.add_argument("--poses", type=int, default=1000)
    parser.add_argument("--single", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-commit", default="6ded1e5")
    parser.add_argument("--models", type=Path, default=MODELS,
                        help="folder of <arm><suffix>.onnx files [default: the shipped models]")
    parser.add_argument("--suffix", default="",
                        help="file name suffix, e.g. -mdn for the shipped ur5-mdn.onnx and "
                             "panda-mdn.onnx [default: none, the autoregressive ur5.onnx, panda.onnx]")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "latency.json")
    args = parser.parse_args()
    args_commit = args.baseline_commit
    try:
        import roboticstoolbox  # noqa: F401
    except ImportError:
        sys.exit("roboticstoolbox-python is missing: pip install -e '.[bench]'")
    baseline = baseline_refine(args.baseline_commit)
    results = {}
    for name in args.arms.split(","):
        rng = np.random.default_rng(11)
        solver = IKSolver.load(args.models / f"{name}{args.suffix}.onnx")
        arm = solver.arm
        ets = peer_robot(name)
        out = {"fk_agreement": check_fk(arm, ets, rng)}
        print(f"{name}: ikmdn vs roboticstoolbox forward kinematics agree to {out['fk_agreement']:.1e}",
              flush=True)
        if out["fk_agreement"] > 1e-9:
            sys.exit(f"{name}: the two kinematic models differ; fix the peer model first")
        truth = arm.sample_joints(args.poses, rng)
        poses = arm.poses(truth)
        targets = poses_to_targets(poses)
        solver.solve(targets[:8])
        solver.solve(targets[:8], mode="best", near=truth[:8])  # warm-up (kernel compiled/cached)
        single_pose(name, solver, ets, poses[:args.single], targets[:args.single], truth[:args.single],
                    rng, out)
        one_answer_batch(name, solver, ets, poses, targets, args.rounds, out)
        all_solutions(name, solver, targets, args.rounds, baseline, out)
        if name == "ur5":
            near_check(solver, targets, rng, out)
            path_check(solver, rng, out)
        results[name] = out
    write_results(args.out, {"bench": "latency", "baseline_commit": args.baseline_commit, "arms": results})


if __name__ == "__main__":
    main()
