"""`ikmdn arms`, `train`, `export` and `info`: arms, training runs and model files."""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

import click

from ikmdn.cli._base import (
    SEED,
    THREADS,
    cli,
    hidden_widths,
    positive,
    require_torch,
)
from ikmdn.cli.arm_options import arm_options, chosen_arm, model_options
from ikmdn.untrusted import MAX_COMPONENTS


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
                   f"frames {arm.frames()}, limits (rad) {limits}")


@cli.command("train")
@arm_options
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder for model.pt, config.json, history.csv, loss.png.")
@click.option("--samples", type=int, callback=positive,
              help="Training pairs per epoch (a validation set is drawn on top).")
@click.option("--components", type=int, callback=positive, help="Mixture components K.")
@click.option("--epochs", type=int, callback=positive, help="Passes over the data.")
@click.option("--batch-size", type=int, callback=positive, help="Minibatch size.")
@click.option("--lr", type=float, callback=positive, help="Peak learning rate (Adam).")
@click.option("--hidden", callback=hidden_widths, help="Hidden widths, e.g. 128,128,128.")
@click.option("--activation", type=click.Choice(["relu", "silu", "tanh", "gelu"]))
@click.option("--seed", type=SEED, help="Seed for data, initialisation and shuffling.")
@click.option("--device", help="torch device: cpu, cuda or cuda:N [default: cpu].")
@click.option("--baseline", is_flag=True,
              help="Train Bishop's least-squares network (same body, one output) instead.")
@model_options
@click.option("--export", "export_path", type=click.Path(path_type=Path),
              help="Also export the trained model to this .onnx file (ikmdn.format 2, as "
                   "`ikmdn export`).")
@click.option("--force", is_flag=True,
              help="Start over in a used --out folder (the old run's model.pt, last.pt, config.json, "
                   "history.csv and loss.png are deleted first; other files are left alone) and "
                   "overwrite the --export file.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out (its own settings, from last.pt).")
@click.option("--threads", type=THREADS,
              help="torch CPU threads [default: torch's, one per core; idle threads sleep].")
def train_command(arm_name, urdf, tip, base, tool, lock, name, out_dir, samples, components,
                  epochs, batch_size, lr, hidden, activation, seed, device, baseline, kind,
                  joint_order, export_path, force, resume, threads):
    """Train a model of an arm's inverse kinematics (data made by forward kinematics).

    The arm is a preset (--arm) or your robot (--urdf FILE --tip LINK). Defaults follow the
    arm's properties (joints, target kind, joint ranges); the best-validation checkpoint is kept,
    and last.pt lets an interrupted run continue with --resume. The arm's whole description is
    stored in the run and the exported model: no URDF file is needed afterwards.

    Example: ikmdn train --arm bishop --out runs/bishop --export bishop.onnx

    Example: ikmdn train --urdf ur5.urdf --base base --tip tool0 --out runs/ur5 --export ur5.onnx
    """
    # Sleeping, not spinning, OpenMP threads (read when torch loads): see bench_threads.py.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    require_torch("train")
    from ikmdn.outdir import check_output_file
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
                                          ("--baseline", baseline or None), ("--model", kind),
                                          ("--joint-order", joint_order))
                 if value is not None]
        if given:
            raise click.UsageError(f"--resume continues with the run's own settings; drop "
                                   f"{', '.join(given)}")
        if arm_name is not None or urdf is not None:
            raise click.UsageError("--resume continues the run's own arm; drop --arm/--urdf")
        checkpoint = resume_run(out_dir, on_epoch=lambda r: click.echo(
            f"epoch {r.epoch}: loss {r.train_loss:.3f}, validation NLL {r.val_nll:.3f}", err=True),
            threads=threads)
    else:
        if baseline and kind:
            raise click.UsageError("--baseline trains the least-squares network; drop --model")
        arm = chosen_arm(arm_name, urdf, tip, base, tool, lock, name)
        config = default_config(arm, samples=samples, components=components, epochs=epochs,
                                batch_size=batch_size, lr=lr, hidden=hidden, activation=activation,
                                seed=seed, device=device, joint_order=joint_order,
                                kind="least_squares" if baseline else kind)
        with ExitStack() as stack:
            bars = []  # drawn once the run holds its folder: a refused run prints only its error

            def start():
                bars.append(stack.enter_context(click.progressbar(
                    length=config.epochs, label=f"training {config.kind} on {config.arm_name}",
                    file=sys.stderr, show_pos=True,
                    item_show_func=lambda r: r and f"loss {r.train_loss:.3f} val NLL {r.val_nll:.3f}")))

            checkpoint = train_run(config, out_dir, force=force, on_start=start,
                                   on_epoch=lambda r: bars[0].update(1, r), threads=threads)
    m = checkpoint.metrics
    click.echo(f"wrote {out_dir}/model.pt: validation NLL {m['val_nll']:.3f} (epoch {m['epoch']}),"
               f" best-mode RMS error {m['best_mode_rms']:.2e}, min-over-modes "
               f"{m['min_over_modes_rms']:.2e} on {m['test_targets']} fresh targets, "
               f"{m['train_seconds']:.0f} s")
    if checkpoint.config.joint_order is not None:
        names = checkpoint.arm.joint_names
        click.echo("joint order: " + ", ".join(names[j] for j in checkpoint.config.joint_order))
    if export_path is not None:
        _export(checkpoint, export_path, force=True)


def _export(checkpoint, path: Path, force: bool, raw: bool = False) -> None:
    """Write checkpoint as ONNX format 2 (network and refinement), or format 1 (raw)."""
    from ikmdn.export import export_onnx

    report = export_onnx(checkpoint, path, force=force, onnx_format=1 if raw else 2)
    click.echo(f"{report.summary()}: ok")
    click.echo(f"wrote {path} (ikmdn.format {1 if raw else 2}, "
               f"{path.stat().st_size / 1024:.0f} KiB)")


@cli.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The .onnx file to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--raw", is_flag=True,
              help="Write the network alone (ikmdn.format 1: the mixture, no refinement).")
@click.option("--beam", type=click.IntRange(1, MAX_COMPONENTS), default=None,
              help="Candidates per target of an autoregressive model (its beam width, K); "
                   "training does not depend on it, so a narrower beam trades branches for "
                   "speed without retraining (UR5: 16 keeps 99.7% of the branches).  "
                   "[default: the run's --components]")
def export_command(source, output, force, raw, beam):
    """Export a training run (folder or model.pt) to one self-contained ONNX file.

    By default the file is ikmdn.format 2: the network and the Levenberg-Marquardt refinement
    in one graph (float64 targets in, refined joints, errors and merged duplicates out), usable
    from any onnxruntime binding. Parity with PyTorch (the network) and with the Python
    refinement is verified before anything is written.

    Example: ikmdn export runs/bishop -o bishop.onnx

    Example: ikmdn export runs/bishop -o bishop-raw.onnx --raw

    Example: ikmdn export runs/ur5 -o ur5.onnx --beam 16
    """
    require_torch("export")
    from ikmdn.checkpoint import with_beam
    from ikmdn.train import load_checkpoint

    if output.suffix != ".onnx":
        raise click.BadParameter(f"expected a file name ending in .onnx, got {output}",
                                 param_hint="--output")
    checkpoint = load_checkpoint(source)
    if beam is not None:
        checkpoint = with_beam(checkpoint, beam)
    _export(checkpoint, output, force, raw)


@cli.command("info")
@click.argument("model", type=click.Path(path_type=Path))
def info_command(model):
    """Show what an exported model is: arm, K, training config and metrics.

    Example: ikmdn info exported_models/bishop.onnx
    """
    from ikmdn.solve import IKSolver

    m = IKSolver.load(model).model
    click.echo(json.dumps({"model": str(model), "frames": m.arm.frames(),
                           "joint_names": list(m.arm.joint_names), "arm": m.arm.spec(),
                           "components": m.components,
                           "train": m.train_config, "metrics": m.metrics}, indent=2))
