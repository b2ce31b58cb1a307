"""Writers for `ikmdn solve` results: table, JSON (the contract in DESIGN.md), CSV, and .npz.

Each writer takes batches of Solutions and streams them, so output size never bounds memory
(except the .npz, which is assembled in temporary memory-mapped files).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import numpy as np

from ikmdn.errors import IKMDNError
from ikmdn.outdir import check_output_file
from ikmdn.solve import Solutions

FORMATS = ("table", "json", "csv")


def _candidate_indices(sol: Solutions, i: int, best: bool) -> list[int]:
    """Candidates of target i to print: the best one, or every distinct one (heaviest first)."""
    if best:
        return [int(sol.best_index[i])]
    return [int(k) for k in np.flatnonzero(sol.distinct[i])]


def _fmt(values) -> str:
    return ", ".join(f"{v:.6f}" for v in values)


def write_table(out: TextIO, header: str, batches: Iterable[Solutions], best: bool,
                target_names: tuple[str, ...]) -> None:
    """Human-readable: one block per target, one line per distinct candidate."""
    out.write(header + "\n")
    for sol in batches:
        for i in range(len(sol)):
            status = "reachable" if sol.reachable[i] else "NOT reachable (closest candidates shown)"
            coords = ", ".join(f"{n}={v:.6g}" for n, v in zip(target_names, sol.targets[i], strict=True))
            out.write(f"\ntarget ({coords}): {status}\n")
            out.write(f"  {'#':>2}  {'weight':>7}  {'joints (rad)':<40} {'error':>9}  limits\n")
            for rank, k in enumerate(_candidate_indices(sol, i, best), start=1):
                ok = "ok" if sol.within_limits[i, k] else "OUTSIDE"
                joints = f"[{_fmt(sol.joints[i, k])}]"
                out.write(f"  {rank:>2}  {sol.weights[i, k]:7.4f}  {joints:<40} "
                          f"{sol.errors[i, k]:9.2e}  {ok}\n")


def write_json(out: TextIO, model: str, arm: str, batches: Iterable[Solutions], best: bool) -> None:
    """{"model", "arm", "solutions": [{"target", "reachable", "candidates": [...]}, ...]}.

    With fallback seeds enabled (spatial arms) each solution also says "fallback": bool."""
    out.write('{"model": ' + json.dumps(model) + ', "arm": ' + json.dumps(arm)
              + ', "solutions": [')
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


def write_csv(out: TextIO, batches: Iterable[Solutions], best: bool,
              target_names: tuple[str, ...], dof: int) -> None:
    """One row per distinct candidate: target index and coordinates, rank, weight, joints, error."""
    header = (["target", *target_names, "reachable", "rank", "weight"]
              + [f"q{j}" for j in range(dof)] + ["error", "within_limits"])
    out.write(",".join(header) + "\n")
    offset = 0
    for sol in batches:
        for i in range(len(sol)):
            for rank, k in enumerate(_candidate_indices(sol, i, best), start=1):
                row = ([str(offset + i)] + [repr(float(v)) for v in sol.targets[i]]
                       + [str(bool(sol.reachable[i])).lower(), str(rank),
                          repr(float(sol.weights[i, k]))]
                       + [repr(float(v)) for v in sol.joints[i, k]]
                       + [repr(float(sol.errors[i, k])), str(bool(sol.within_limits[i, k])).lower()])
                out.write(",".join(row) + "\n")
        offset += len(sol)


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
