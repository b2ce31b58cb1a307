"""Reproduce Bishop's robot-arm example: the least-squares failure and the MDN, with the shipped
model (issue: evaluate). Trains the least-squares baseline with the default settings
(`ikmdn train --arm bishop --baseline`) into runs/bishop-ls unless it exists, runs
`ikmdn evaluate --model exported_models/bishop.onnx --baseline runs/bishop-ls`, and prints the
reproduction table (RMS Euclidean end-effector error; the post's MSE under its own name).

    python scripts/reproduce_bishop.py [--out bench_out/eval_bishop]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import MODELS, ROOT
from click.testing import CliRunner

from ikmdn.cli import cli

ROWS = (("best_mode", "unrefined best mode"), ("sampled", "unrefined, sampled (the post's method)"),
        ("refined", "refined (best candidate)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "eval_bishop")
    args = parser.parse_args()
    baseline = ROOT / "runs" / "bishop-ls"
    runner = CliRunner()
    if not (baseline / "model.pt").exists():
        result = runner.invoke(cli, ["train", "--arm", "bishop", "--baseline", "--out", str(baseline),
                                     "--force"])
        print(result.output)
    result = runner.invoke(cli, ["evaluate", "--model", str(MODELS / "bishop.onnx"), "--baseline",
                                 str(baseline), "--out", str(args.out), "--force"])
    print(result.output)
    metrics = json.loads((args.out / "metrics.json").read_text())
    print("| network | answer | RMS error | post's MSE |")
    print("|---|---|---|---|")
    for label, block in (("least squares", metrics["baseline"]["errors"]),
                         ("MDN (K=2)", metrics["errors"])):
        for key, name in ROWS:
            print(f"| {label} | {name} | {block[key]['rms']:.2e} | {block[key]['post_mse']:.2e} |")


if __name__ == "__main__":
    main()
