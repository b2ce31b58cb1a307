"""Writers for `ikmdn solve` results: table, JSON (the contract in DESIGN.md), CSV, and .npz.

Each writer takes batches of Solutions and streams them, so output size never bounds memory
(except the .npz, which is assembled in temporary memory-mapped files).
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import numpy as np

from ikmdn.arms import Arm
from ikmdn.arms.rotations import matrix_to_quat, sixd_to_matrix
from ikmdn.errors import IKMDNError
from ikmdn.outdir import check_output_file
from ikmdn.solve import PathSolution, Solutions

FORMATS = ("table", "json", "csv")
POSE_INPUT = ("x", "y", "z", "qw", "qx", "qy", "qz")  # how pose targets are typed and printed


def _candidate_indices(sol: Solutions, i: int, best: bool) -> list[int]:
    """Candidates of target i to print: the best one, or every distinct one (heaviest first)."""
    if best:
        return [int(sol.best_index[i])]
    return [int(k) for k in np.flatnonzero(sol.distinct[i])]


def _fmt(values) -> str:
    return ", ".join(f"{v:.6f}" for v in values)


def display_coordinates(arm: Arm, values: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, values (..., m)) of targets or reached targets (..., target_dim) as people write
    them: pose arms as position and unit quaternion (x, y, z, qw, qx, qy, qz), w >= 0; other arms
    as their target coordinates."""
    values = np.asarray(values, dtype=np.float64)
    if not arm.pose_targets:
        return arm.target_names, values
    flat = values.reshape(-1, values.shape[-1])
    quats = matrix_to_quat(sixd_to_matrix(flat[:, 3:9])) if len(flat) else np.zeros((0, 4))
    return POSE_INPUT, np.concatenate([flat[:, :3], quats], axis=1).reshape(*values.shape[:-1], 7)


def write_table(out: TextIO, header: str, batches: Iterable[Solutions], best: bool, arm: Arm) -> None:
    """Human-readable: one block per target, one line per distinct candidate (pose arms add the
    reached position and quaternion and the rotation error)."""
    out.write(header + "\n")
    out.write(f"joints: {', '.join(arm.joint_names)} (frames {arm.frames()})\n")
    for sol in batches:
        names, targets = display_coordinates(arm, sol.targets)
        _, reached = display_coordinates(arm, sol.positions)
        for i in range(len(sol)):
            status = "reachable" if sol.reachable[i] else "NOT reachable (closest candidates shown)"
            coords = ", ".join(f"{n}={v:.6g}" for n, v in zip(names, targets[i], strict=True))
            out.write(f"\ntarget ({coords}): {status}\n")
            extra = f"  {'reached x y z (m), qw qx qy qz':<52} {'rot err':>9}" if sol.pose else ""
            out.write(f"  {'#':>2}  {'weight':>7}  {'joints (rad)':<40} {'error':>9}  limits{extra}\n")
            for rank, k in enumerate(_candidate_indices(sol, i, best), start=1):
                ok = "ok" if sol.within_limits[i, k] else "OUTSIDE"
                joints = f"[{_fmt(sol.joints[i, k])}]"
                line = (f"  {rank:>2}  {sol.weights[i, k]:7.4f}  {joints:<40} "
                        f"{sol.errors[i, k]:9.2e}  {ok:<7}")
                if sol.pose:
                    pose = " ".join(f"{v:.4f}" for v in reached[i, k])
                    line += f"  {pose:<52} {np.degrees(sol.rotation_errors[i, k]):7.1e} deg"
                out.write(line.rstrip() + "\n")


def write_json(out: TextIO, model: str, arm: Arm, batches: Iterable[Solutions], best: bool) -> None:
    """{"model", "arm", "joint_names", "solutions": [{"target", "reachable", "candidates": [...]}, ...]}.

    With fallback seeds enabled (spatial arms) each solution also says "fallback": bool."""
    out.write('{"model": ' + json.dumps(model) + ', "arm": ' + json.dumps(arm.name)
              + ', "joint_names": ' + json.dumps(list(arm.joint_names)) + ', "solutions": [')
    first = True
    for sol in batches:
        for i in range(len(sol)):
            entry = {"target": sol.targets[i].tolist(), "reachable": bool(sol.reachable[i]),
                     "candidates": [sol.candidate(i, k) for k in _candidate_indices(sol, i, best)]}
            if sol.fallback_seeds:
                entry["fallback"] = bool(sol.fallback[i])  # the answer came from extra seeds
            out.write(("" if first else ", ") + "\n  " + json.dumps(entry))
            first = False
    out.write("\n]}\n")


def write_csv(out: TextIO, batches: Iterable[Solutions], best: bool, arm: Arm) -> None:
    """One row per distinct candidate: target index and coordinates, rank, weight, joints (columns
    named after the arm's joints), error, within_limits, the reached target (pose arms: position
    and quaternion, and the rotation error in degrees)."""
    names = display_coordinates(arm, np.zeros((0, arm.target_dim)))[0]
    pose = arm.pose_targets
    header = (["target", *names, "reachable", "rank", "weight", *arm.joint_names, "error"]
              + (["rotation_error_deg"] if pose else []) + ["within_limits"]
              + [f"reached_{n}" for n in names])
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    offset = 0
    for sol in batches:
        _, targets = display_coordinates(arm, sol.targets)
        _, reached = display_coordinates(arm, sol.positions)
        for i in range(len(sol)):
            for rank, k in enumerate(_candidate_indices(sol, i, best), start=1):
                row = ([str(offset + i)] + [repr(float(v)) for v in targets[i]]
                       + [str(bool(sol.reachable[i])).lower(), str(rank),
                          repr(float(sol.weights[i, k]))]
                       + [repr(float(v)) for v in sol.joints[i, k]]
                       + [repr(float(sol.errors[i, k]))]
                       + ([repr(float(np.degrees(sol.rotation_errors[i, k])))] if pose else [])
                       + [str(bool(sol.within_limits[i, k])).lower()]
                       + [repr(float(v)) for v in reached[i, k]])
                writer.writerow(row)
        offset += len(sol)


def write_path(out: TextIO, fmt: str, model: str, arm: Arm, path: PathSolution) -> None:
    """A solved path (`ikmdn solve --path`): one answer per step, its joint jump from the step
    before and whether that is a discontinuity (a branch switch), as a table, JSON or CSV."""
    names, targets = display_coordinates(arm, path.targets)
    rows = range(len(path))
    if fmt == "json":
        steps = [{"target": path.targets[i].tolist(), "reachable": bool(path.reachable[i]),
                  "joints": path.joints[i].tolist(), "error": float(path.errors[i]),
                  **({"rotation_error_deg": float(np.degrees(path.rotation_errors[i]))}
                     if arm.pose_targets else {}),
                  "jump": float(path.jumps[i]), "switch": bool(path.switches[i])} for i in rows]
        json.dump({"model": model, "arm": arm.name, "joint_names": list(arm.joint_names),
                   "largest_jump": path.largest_jump, "switches": int(path.switches.sum()),
                   "switch_threshold": path.switch_threshold, "path": steps}, out)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", *names, "reachable", *arm.joint_names, "error", "jump", "switch"])
        for i in rows:
            writer.writerow([i, *map(repr, targets[i].tolist()), str(bool(path.reachable[i])).lower(),
                             *map(repr, path.joints[i].tolist()), repr(float(path.errors[i])),
                             repr(float(path.jumps[i])), str(bool(path.switches[i])).lower()])
        return
    out.write(f"model {model} (arm {arm.name}): path of {len(path)} targets, largest joint jump "
              f"{path.largest_jump:.4f} rad, {int(path.switches.sum())} discontinuities "
              f"(jumps > {path.switch_threshold} rad)\n")
    out.write(f"joints: {', '.join(arm.joint_names)}\n")
    for i in rows:
        flag = "  SWITCH" if path.switches[i] else ""
        status = "" if path.reachable[i] else "  NOT reachable"
        out.write(f"{i:>5}  [{_fmt(path.joints[i])}]  error {path.errors[i]:.2e}  jump "
                  f"{path.jumps[i]:.4f}{flag}{status}\n")


def write_npz(path: str | Path, total: int, batches: Iterable[Solutions], force: bool) -> None:
    """All Solutions arrays for `total` targets in one .npz, built batch by batch on disk."""
    path = Path(path)
    if path.suffix != ".npz":
        raise IKMDNError(f"--output must end in .npz, got {path}")
    check_output_file(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        arrays: dict[str, np.ndarray] = {}
        start = 0
        for sol in batches:
            for name, a in sol.arrays().items():
                if name not in arrays:
                    arrays[name] = np.lib.format.open_memmap(
                        Path(tmp) / f"{name}.npy", mode="w+", dtype=a.dtype,
                        shape=(total, *a.shape[1:]))
                arrays[name][start:start + len(a)] = a
            start += len(sol)
        partial = Path(tmp) / "out.npz"
        np.savez(partial, **arrays)
        partial.replace(path)
