"""`ikmdn evaluate` and `ikmdn demo`: reports on a model and the 1-D toy problems."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ikmdn.cli._base import SEED, THREADS, cli, require_torch


@cli.command("evaluate")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="An .onnx model, or a training checkpoint / run folder (needs torch).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for metrics.json, report.md and the figures.")
@click.option("--samples", type=int, help="Number of fresh test targets [default: 5000].")
@click.option("--seed", type=SEED,
              help="Seed for the test targets and the sampled answers [default: 2024].")
@click.option("--baseline", "baseline_path", type=click.Path(path_type=Path),
              help="A least-squares model (`ikmdn train --baseline`) of the same arm to compare.")
@click.option("--threads", type=THREADS, help="ONNX Runtime threads.")
@click.option("--force", is_flag=True, help="Write into a non-empty --out folder.")
def evaluate_command(model_path, out_dir, samples, seed, baseline_path, threads, force):
    """Measure a model on fresh targets: metrics.json, figures and report.md in --out.

    RMS end-effector errors (best mode, min over modes, sampled, refined), coverage of the
    closed-form solutions, throughput; with --baseline, Bishop's least-squares comparison.

    Example: ikmdn evaluate --model bishop.onnx --baseline runs/bishop-ls --out eval/bishop
    """
    from ikmdn.outdir import removed_if_failed
    from ikmdn.report import EvaluationJob

    given = {k: v for k, v in (("samples", samples), ("seed", seed)) if v is not None}
    with removed_if_failed(out_dir):  # a failed evaluation leaves no empty folder it made
        job = EvaluationJob(model_path, out_dir, baseline=baseline_path, force=force,
                            threads=threads, **given)
        with click.progressbar(length=len(job.steps), label="evaluating", file=sys.stderr,
                               item_show_func=lambda s: s) as bar:
            metrics = job.run(on_step=lambda label: bar.update(1, label))
    errors = metrics["errors"]
    click.echo(f"wrote {out_dir}/report.md: RMS error best mode {errors['best_mode']['rms']:.2e}, "
               f"refined {errors['refined']['rms']:.2e} on {metrics['test_set']['targets']} targets")


@cli.command("demo")
@click.argument("name", type=click.Choice(["sinusoid"]))
@click.option("--variant", type=click.Choice(["post", "bishop"]), default="post", show_default=True,
              help="The blog post's sinusoid or Bishop's (1994).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for the figures, metrics.json and report.md.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for data and training.")
@click.option("--force", is_flag=True, help="Write into a non-empty --out folder.")
def demo_command(name, variant, out_dir, seed, force):
    """Train a least-squares network and an MDN on an inverted 1-D toy problem (seconds).

    Writes the post's figures: the data, the least-squares fit failing, the MDN's modes, samples,
    mixing coefficients and conditional density. Needs the [train] extra (torch).

    Example: ikmdn demo sinusoid --variant bishop --out demo/bishop
    """
    require_torch("demo")
    from ikmdn.demo import SinusoidDemo
    from ikmdn.outdir import removed_if_failed

    with removed_if_failed(out_dir):  # a failed demo leaves no empty folder it made
        demo = SinusoidDemo(variant, out_dir, seed=seed, force=force)
        with click.progressbar(length=len(demo.steps), label=f"demo {name} ({variant})",
                               file=sys.stderr, item_show_func=lambda s: s) as bar:
            metrics = demo.run(on_step=lambda label: bar.update(1, label))
    nll = metrics["test_nll"]
    click.echo(f"wrote {out_dir}/report.md: test NLL least squares {nll['least_squares']:.3f}, "
               f"MDN {nll['mdn']:.3f} nats/sample")
