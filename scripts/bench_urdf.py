"""Benchmark "your robot from its URDF": `ikmdn train --urdf` with default settings on the KUKA LBR
iiwa 14 and the UR5 (ROS-Industrial's URDF, +-2 pi joints), then 1,000 random reachable poses each.

    python scripts/bench_urdf.py [--poses 1000] [--threads N] [--skip-training]

Per robot: training wall time (the whole `ikmdn train` command); solved share (a distinct
in-limit candidate within 1e-6 m and 1e-6 rad of the pose, checked by an independent URDF walk,
tests/urdf_oracle.py, not by ikmdn's kinematics); distinct solved candidates per pose; poses per
second of the default solve; and for the UR5 whether every returned joint value lies within the
URDF's limits and on the turn nearest the reference (the middle of the range). The machine's load
average is printed beside each figure. Results in bench_out/urdf.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import ROOT, load_average, write_results

sys.path.insert(0, str(ROOT / "tests"))
from urdf_oracle import Urdf  # noqa: E402

from ikmdn.solve import IKSolver  # noqa: E402

DATA = ROOT / "tests" / "data"
ROBOTS = {
    "iiwa14": {"urdf": DATA / "iiwa14.urdf", "tip": "iiwa_link_ee", "base": None},
    "ur5": {"urdf": DATA / "ur5_ros.urdf", "tip": "tool0", "base": "base"},
}
TOL = 1e-6


def load() -> str:
    return f"load average {load_average():.2f}"


def train(name: str, robot: dict, out: Path, threads: int | None) -> float:
    """Run `ikmdn train --urdf ...` with defaults; returns its wall time in seconds."""
    cmd = [str(Path(sys.executable).parent / "ikmdn"), "train", "--urdf", str(robot["urdf"]),
           "--tip", robot["tip"], "--out", str(out / name), "--export", str(out / f"{name}.onnx"),
           "--force"]
    if robot["base"]:
        cmd += ["--base", robot["base"]]
    if threads:
        cmd += ["--threads", str(threads)]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def rotation_angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (N,) in radians between rotations a and b (N, 3, 3)."""
    cos = (np.einsum("nij,nij->n", a, b) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))


def evaluate(name: str, robot: dict, model: Path, poses: int) -> dict:
    oracle = Urdf(robot["urdf"])
    solver = IKSolver.load(model)
    arm = solver.arm
    names = list(arm.joint_names)
    if names != oracle.moving(robot["tip"], robot["base"]):
        raise SystemExit(f"{name}: joint names {names} differ from the URDF's chain")
    limits = np.array([oracle.by_name[n]["limits"] for n in names])
    rng = np.random.default_rng(7)
    q_true = limits[:, 0] + (limits[:, 1] - limits[:, 0]) * rng.random((poses, arm.dof))
    truth = oracle.poses(robot["tip"], names, q_true, base=robot["base"])
    from ikmdn.arms import poses_to_targets

    targets = poses_to_targets(truth)
    solver.solve(targets[:10])  # warm-up
    start = time.perf_counter()
    sol = solver.solve(targets)
    seconds = time.perf_counter() - start
    rate_load = load()
    n, k, dof = sol.joints.shape
    flat = sol.joints.reshape(n * k, dof)
    reached = oracle.poses(robot["tip"], names, flat, base=robot["base"]).reshape(n, k, 4, 4)
    pos_err = np.linalg.norm(reached[..., :3, 3] - truth[:, None, :3, 3], axis=-1)
    rot_err = rotation_angle(reached[..., :3, :3].reshape(-1, 3, 3),
                             np.repeat(truth[:, :3, :3], k, axis=0)).reshape(n, k)
    in_limits = np.all((sol.joints >= limits[:, 0] - 1e-9) & (sol.joints <= limits[:, 1] + 1e-9), axis=-1)
    ok = sol.distinct & in_limits & (pos_err <= TOL) & (rot_err <= TOL)
    result = {
        "urdf": str(robot["urdf"].relative_to(ROOT)), "tip": robot["tip"], "base": robot["base"],
        "dof": dof, "components": k, "poses": n,
        "solved_share": float(ok.any(axis=1).mean()),
        "distinct_per_pose_mean": float(ok.sum(axis=1).mean()),
        "distinct_per_pose_median": float(np.median(ok.sum(axis=1))),
        "fallback_share": float(sol.fallback.mean()),
        "poses_per_second": n / seconds, "solve_load": rate_load,
    }
    returned = sol.joints[sol.distinct]               # every candidate the solver reports
    result["all_returned_within_urdf_limits"] = bool(np.all(
        (returned >= limits[:, 0] - 1e-9) & (returned <= limits[:, 1] + 1e-9)))
    multi = arm.multi_turn_joints
    if multi.any():
        # The turn nearest the reference (the middle of the range): no other in-limit turn closer.
        gap = np.abs(returned[:, multi] - arm.home[multi])
        result["multi_turn_joints"] = [names[j] for j in np.flatnonzero(multi)]
        result["all_on_turn_nearest_reference"] = bool(np.all(gap <= np.pi + 1e-9))
    print(f"{name}: solved {100 * result['solved_share']:.2f}% of {n} poses, "
          f"{result['distinct_per_pose_mean']:.1f} distinct solutions per pose (median "
          f"{result['distinct_per_pose_median']:.0f}), {result['poses_per_second']:.0f} poses/s "
          f"({rate_load}), every returned joint within the URDF limits: "
          f"{result['all_returned_within_urdf_limits']}"
          + (f", on the turn nearest the reference: {result['all_on_turn_nearest_reference']}"
             if multi.any() else ""), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poses", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--robots", nargs="+", default=list(ROBOTS), choices=list(ROBOTS))
    parser.add_argument("--skip-training", action="store_true",
                        help="Evaluate the models already in bench_out/urdf/.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "urdf")
    args = parser.parse_args()
    path = ROOT / "bench_out" / "urdf.json"
    results = json.loads(path.read_text()).get("robots", {}) if path.is_file() else {}
    for name in args.robots:
        robot = ROBOTS[name]
        entry = {}
        if args.skip_training:   # the training loop's own time, from the run's model.pt metrics
            from ikmdn.train import load_checkpoint

            entry["train_loop_seconds"] = load_checkpoint(args.out / name).metrics["train_seconds"]
        else:
            seconds = train(name, robot, args.out, args.threads)
            entry.update(train_seconds=seconds, train_load=load())
            print(f"{name}: training took {seconds / 60:.1f} min ({load()})", flush=True)
        entry.update(evaluate(name, robot, args.out / f"{name}.onnx", args.poses))
        results[name] = entry
    write_results(path, {"bench": "urdf", "robots": results})


if __name__ == "__main__":
    main()
