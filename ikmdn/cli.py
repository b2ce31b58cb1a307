"""The `ikmdn` command line: thin click commands over the library.

Library errors (IKMDNError) become one-line messages: exit 2 for bad input, 1 for a failed job.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from ikmdn import __version__
from ikmdn.errors import IKMDNError


def default_model() -> Path:
    """The shipped bishop model: exported_models/bishop.onnx of the source tree (editable
    installs) or the copy installed as package data (ikmdn.exported_models)."""
    in_tree = Path(__file__).resolve().parent.parent / "exported_models" / "bishop.onnx"
    if in_tree.is_file():
        return in_tree
    from importlib.resources import files

    try:
        return Path(str(files("ikmdn.exported_models") / "bishop.onnx"))
    except ModuleNotFoundError:
        raise IKMDNError("the shipped model bishop.onnx is not installed; pass --model") from None


class _Group(click.Group):
    """Turns the library's errors into click errors with the right exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except IKMDNError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None
        except OSError as exc:  # a path the user gave cannot be read or written
            error = click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
            error.exit_code = 2
            raise error from None


def _positive(ctx, param, value):
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a positive number, got {value}")
    return value


SEED = click.IntRange(min=0)
THREADS = click.IntRange(min=1, max=1024)


def _hidden(ctx, param, value):
    if value is None:
        return None
    try:
        widths = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 128,128,128, "
                                 f"got {value!r}") from None
    if not widths or min(widths) <= 0:
        raise click.BadParameter(f"widths must be positive, got {value!r}")
    return widths


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ikmdn")
def cli():
    """ikmdn: every inverse-kinematics solution of a robot arm, from a mixture density network.

    Example: ikmdn solve 0.6 0.7
    """


@cli.command("arms")
def arms_command():
    """List the preset arms.

    Example: ikmdn arms
    """
    from ikmdn.arms import get_arm, list_arms

    for name in list_arms():
        arm = get_arm(name)
        limits = ", ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in arm.joint_limits)
        click.echo(f"{name:<10} {arm.dof} joints, target ({', '.join(arm.target_names)}), "
                   f"limits (rad) {limits}")


@cli.command("train")
@click.option("--arm", "arm_name", default="bishop", show_default=True,
              help="Preset arm (see `ikmdn arms`).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder for model.pt, config.json, history.csv, loss.png.")
@click.option("--samples", type=int, callback=_positive,
              help="Training pairs per epoch (a validation set is drawn on top).")
@click.option("--components", type=int, callback=_positive, help="Mixture components K.")
@click.option("--epochs", type=int, callback=_positive, help="Passes over the data.")
@click.option("--batch-size", type=int, callback=_positive, help="Minibatch size.")
@click.option("--lr", type=float, callback=_positive, help="Peak learning rate (Adam).")
@click.option("--hidden", callback=_hidden, help="Hidden widths, e.g. 128,128,128.")
@click.option("--activation", type=click.Choice(["relu", "silu", "tanh", "gelu"]))
@click.option("--seed", type=SEED, help="Seed for data, initialisation and shuffling.")
@click.option("--device", help="torch device, e.g. cpu or cuda.")
@click.option("--baseline", is_flag=True,
              help="Train Bishop's least-squares network (same body, one output) instead.")
@click.option("--export", "export_path", type=click.Path(path_type=Path),
              help="Also export the trained model to this .onnx file.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty --out folder / --export file.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out (its own settings, from last.pt).")
def train_command(arm_name, out_dir, samples, components, epochs, batch_size, lr, hidden,
                  activation, seed, device, baseline, export_path, force, resume):
    """Train an MDN on an arm's inverse kinematics (data made by forward kinematics).

    Defaults are tuned per arm; the best-validation checkpoint is kept, and last.pt lets an
    interrupted run continue with --resume.

    Example: ikmdn train --arm bishop --out runs/bishop --export bishop.onnx
    """
    from ikmdn.outdir import check_output_file, prepare_out_dir
    from ikmdn.train import default_config, resume_run, train_run

    if export_path is not None:
        if export_path.suffix != ".onnx":
            raise click.BadParameter(f"expected a file name ending in .onnx, got {export_path}",
                                     param_hint="--export")
        check_output_file(export_path, force)
    if resume:
        given = [name for name, value in (("--samples", samples), ("--components", components),
                                          ("--epochs", epochs), ("--batch-size", batch_size),
                                          ("--lr", lr), ("--hidden", hidden),
                                          ("--activation", activation), ("--seed", seed),
                                          ("--baseline", baseline or None))
                 if value is not None]
        if given:
            raise click.UsageError(f"--resume continues with the run's own settings; drop "
                                   f"{', '.join(given)}")
        checkpoint = resume_run(out_dir, on_epoch=lambda r: click.echo(
            f"epoch {r.epoch}: loss {r.train_loss:.3f}, validation NLL {r.val_nll:.3f}", err=True))
    else:
        config = default_config(arm_name, samples=samples, components=components, epochs=epochs,
                                batch_size=batch_size, lr=lr, hidden=hidden, activation=activation,
                                seed=seed, device=device,
                                kind="least_squares" if baseline else None)
        prepare_out_dir(out_dir, force)  # fail before training, not after
        with click.progressbar(length=config.epochs, label=f"training {config.kind} on {arm_name}",
                               file=sys.stderr, show_pos=True,
                               item_show_func=lambda r: r and f"loss {r.train_loss:.3f} "
                                                            f"val NLL {r.val_nll:.3f}") as bar:
            checkpoint = train_run(config, out_dir, force=True,
                                   on_epoch=lambda r: bar.update(1, r))
    m = checkpoint.metrics
    click.echo(f"wrote {out_dir}/model.pt: validation NLL {m['val_nll']:.3f} (epoch {m['epoch']}),"
               f" best-mode RMS error {m['best_mode_rms']:.2e}, min-over-modes "
               f"{m['min_over_modes_rms']:.2e} on {m['test_targets']} fresh targets, "
               f"{m['train_seconds']:.0f} s")
    if export_path is not None:
        _export(checkpoint, export_path, force=True)


def _export(checkpoint, path: Path, force: bool) -> None:
    from ikmdn.export import export_onnx

    report = export_onnx(checkpoint, path, force=force)
    click.echo(f"{report.summary()}: ok")
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


@cli.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The .onnx file to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def export_command(source, output, force):
    """Export a training run (folder or model.pt) to one self-contained ONNX file.

    Parity with PyTorch is verified before anything is written.

    Example: ikmdn export runs/bishop -o bishop.onnx
    """
    from ikmdn.train import load_checkpoint

    if output.suffix != ".onnx":
        raise click.BadParameter(f"expected a file name ending in .onnx, got {output}",
                                 param_hint="--output")
    _export(load_checkpoint(source), output, force)


@cli.command("info")
@click.argument("model", type=click.Path(path_type=Path))
def info_command(model):
    """Show what an exported model is: arm, K, training config and metrics.

    Example: ikmdn info exported_models/bishop.onnx
    """
    from ikmdn.solve import IKSolver

    m = IKSolver.load(model).model
    click.echo(json.dumps({"model": str(model), "arm": m.arm.spec(), "components": m.components,
                           "train": m.train_config, "metrics": m.metrics}, indent=2))


POSE_INPUT = ("x", "y", "z", "qw", "qx", "qy", "qz")


def _parse_coordinates(values: tuple[str, ...]) -> list[float]:
    numbers = []
    for v in values:
        try:
            numbers.append(float(v))
        except ValueError:
            raise click.BadParameter(f"{v!r} is neither an option nor a number",
                                     param_hint="COORDINATES") from None
        if not math.isfinite(numbers[-1]):
            raise click.BadParameter(f"coordinates must be finite, got {v!r}",
                                     param_hint="COORDINATES")
    return numbers


@cli.command("solve", context_settings={"ignore_unknown_options": True})
@click.argument("coordinates", nargs=-1)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="An .onnx model or a training checkpoint [default: the shipped bishop.onnx].")
@click.option("--targets", "targets_path", type=click.Path(path_type=Path),
              help="A .csv or .npy file with one target per row.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.option("--output", type=click.Path(path_type=Path),
              help="Write all result arrays to this .npz file instead of printing.")
@click.option("--no-refine", is_flag=True, help="Raw mixture means, no numerical refinement.")
@click.option("--best", is_flag=True, help="One answer per target.")
@click.option("--tol", type=float, callback=_positive,
              help="Refinement tolerance in target units [default: 1e-9].")
@click.option("--max-iter", type=int, callback=_positive,
              help="Refinement iteration cap [default: 30 for planar arms, 100 for spatial ones].")
@click.option("--threads", type=THREADS, help="ONNX Runtime threads.")
@click.option("--force", is_flag=True, help="Overwrite an existing --output file.")
@click.option("--pose", is_flag=True,
              help="Pose arms: COORDINATES (and file rows) are x y z qw qx qy qz (m, unit quaternion).")
def solve_command(coordinates, model_path, targets_path, fmt, output, no_refine, best, tol,
                  max_iter, threads, force, pose):
    """Every IK solution for one target (COORDINATES) or a file of targets (--targets).

    Each mixture mode is a candidate: checked by forward kinematics, refined, deduplicated.
    Pose arms (ur5, panda) take a hand pose: position x y z in metres and a unit quaternion
    qw qx qy qz, as 7 coordinates or 7 columns.

    Example: ikmdn solve 0.6 0.7 --format json

    Example: ikmdn solve --model ur5.onnx --pose 0.3 0.2 0.4 0 1 0 0
    """
    from ikmdn.solve import IKSolver
    from ikmdn.solve_output import write_csv, write_json, write_npz, write_table
    from ikmdn.targets_io import TargetsFile

    if bool(coordinates) == bool(targets_path):
        raise click.UsageError("give either target COORDINATES or --targets FILE (one of them)")
    numbers = _parse_coordinates(coordinates)
    model_path = model_path or default_model()
    solver = IKSolver.load(model_path, threads=threads)
    arm = solver.arm
    overrides = {k: v for k, v in (("tol", tol), ("max_iter", max_iter)) if v is not None}
    solver.refine_settings = replace(solver.refine_settings, **overrides)
    if pose and not arm.pose_targets:
        raise click.BadParameter(f"arm {arm.name} takes ({', '.join(arm.target_names)}), not a pose",
                                 param_hint="--pose")
    names = POSE_INPUT if arm.pose_targets else arm.target_names
    if targets_path:
        source = TargetsFile(targets_path, len(names))
        total, chunks = len(source), source.batches(solver.batch_size)
    else:
        if len(numbers) != len(names):
            raise click.BadParameter(
                f"arm {arm.name} takes {len(names)} coordinates ({', '.join(names)}), "
                f"got {len(numbers)}", param_hint="COORDINATES")
        total, chunks = 1, iter([np.array([numbers])])
    if arm.pose_targets:
        from ikmdn.arms.serial import pose_targets

        chunks = (pose_targets(c[:, :3], c[:, 3:]) for c in chunks)
    batches = (solver.solve(chunk, refine=not no_refine) for chunk in chunks)
    model_name = str(model_path)
    if output is not None:
        write_npz(output, total, batches, force)
        click.echo(f"wrote {output}: {total} targets")
    elif fmt == "json":
        write_json(sys.stdout, model_name, arm.name, batches, best)
    elif fmt == "csv":
        write_csv(sys.stdout, batches, best, arm.target_names, arm.dof)
    else:
        header = (f"model {model_name} (arm {arm.name}, K={solver.model.components}, "
                  f"{'refined' if not no_refine else 'unrefined'})")
        write_table(sys.stdout, header, batches, best, arm.target_names)


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
    from ikmdn.report import EvaluationJob

    given = {k: v for k, v in (("samples", samples), ("seed", seed)) if v is not None}
    job = EvaluationJob(model_path, out_dir, baseline=baseline_path, force=force, threads=threads,
                        **given)
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
    from ikmdn.demo import SinusoidDemo

    demo = SinusoidDemo(variant, out_dir, seed=seed, force=force)
    with click.progressbar(length=len(demo.steps), label=f"demo {name} ({variant})",
                           file=sys.stderr, item_show_func=lambda s: s) as bar:
        metrics = demo.run(on_step=lambda label: bar.update(1, label))
    nll = metrics["test_nll"]
    click.echo(f"wrote {out_dir}/report.md: test NLL least squares {nll['least_squares']:.3f}, "
               f"MDN {nll['mdn']:.3f} nats/sample")


def main() -> None:
    """Console entry point."""
    cli(prog_name="ikmdn")


if __name__ == "__main__":
    main()
