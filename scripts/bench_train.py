"""Benchmark default training per preset arm (issue: foundation).

For each arm: wall time of the default `ikmdn train`, final validation NLL, best-mode and
min-over-modes RMS end-effector error on 5,000 fresh targets, and the least-squares baseline's
RMS error (same body, trained by MSE: Bishop's "conditional average").

    python scripts/bench_train.py [--arms bishop,planar2,planar3] [--out bench_out/train.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import ROOT, write_results

from ikmdn.train import default_config, train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="bishop,planar2,planar3")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "train.json")
    args = parser.parse_args()
    rows = {}
    for arm in args.arms.split(","):
        row = {}
        for kind in ("mdn", "least_squares"):
            config = default_config(arm, kind=kind)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                metrics = train_run(config, Path(tmp) / "run").metrics
                wall = time.perf_counter() - start
            row[kind] = {"wall_s": wall, "config": config.to_dict(), **metrics}
            print(f"{arm:8} {kind:13} wall {wall:6.1f} s  val NLL {metrics['val_nll']:8.3f}  "
                  f"best-mode RMS {metrics['best_mode_rms']:.2e}  "
                  f"min-over-modes RMS {metrics['min_over_modes_rms']:.2e}", flush=True)
        rows[arm] = row
    write_results(args.out, {"bench": "train", "arms": rows})
    print("\n| arm | K | samples | epochs | wall (s) | val NLL | best-mode RMS | min-over-modes RMS "
          "| least-squares RMS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, row in rows.items():
        m, b = row["mdn"], row["least_squares"]
        c = m["config"]
        print(f"| {arm} | {c['components']} | {c['samples']:,} | {c['epochs']} | {m['wall_s']:.1f} "
              f"| {m['val_nll']:.3f} | {m['best_mode_rms']:.2e} | {m['min_over_modes_rms']:.2e} "
              f"| {b['best_mode_rms']:.2e} |")


if __name__ == "__main__":
    main()
