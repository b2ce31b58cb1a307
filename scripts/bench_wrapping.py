"""Show the effect of wrapped Gaussians for joints that turn a full circle (issue: spatial arms).

For each arm, train the default configuration twice, with the wrapped likelihood (the default)
and with plain Gaussians, and compare on 10,000 fresh targets: validation NLL, unrefined
best-mode and min-over-modes RMS error, coverage of the closed-form solutions after refinement.

    python scripts/bench_wrapping.py [--arms planar2,rrr3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, write_results

from ikmdn.data import make_ik_dataset
from ikmdn.evaluate import coverage, mode_errors, rms
from ikmdn.solve import IKSolver
from ikmdn.train import CheckpointModel, default_config, train_run


def measure(arm_name: str, wrap: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = train_run(default_config(arm_name, wrap_joints=wrap), Path(tmp) / "run")
    model = CheckpointModel(checkpoint)
    targets = make_ik_dataset(checkpoint.arm, 10_000, seed=77).inputs
    raw = mode_errors(checkpoint.arm, model.predict(targets), targets)
    sol = IKSolver(model).solve(targets)
    return {"val_nll": checkpoint.metrics["val_nll"], "best_mode_rms": rms(raw["best_mode"]),
            "min_over_modes_rms": rms(raw["min_over_modes"]),
            "coverage": coverage(checkpoint.arm, targets, sol.joints)["coverage"],
            "solved": float(np.mean(sol.reachable))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="planar2,rrr3")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "wrapping.json")
    args = parser.parse_args()
    rows = {}
    for arm in args.arms.split(","):
        rows[arm] = {name: measure(arm, wrap) for name, wrap in (("wrapped", True), ("plain", False))}
        print(arm, rows[arm], flush=True)
    write_results(args.out, {"bench": "wrapping", "arms": rows})
    print("\n| arm | likelihood | validation NLL | best-mode RMS | min-over-modes RMS | coverage |")
    print("|---|---|---|---|---|---|")
    for arm, pair in rows.items():
        for name, r in pair.items():
            print(f"| {arm} | {name} | {r['val_nll']:.3f} | {r['best_mode_rms']:.2e} "
                  f"| {r['min_over_modes_rms']:.2e} | {r['coverage']:.2%} |")


if __name__ == "__main__":
    main()
