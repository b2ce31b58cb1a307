"""`ikmdn solve`: every IK solution of targets given on the command line or in a file."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from ikmdn.cli._base import THREADS, cli, default_model, positive


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
@click.option("--tol", type=float, callback=positive,
              help="Refinement tolerance in target units [default: 1e-9].")
@click.option("--max-iter", type=int, callback=positive,
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
    from ikmdn.solve_output import POSE_INPUT, write_csv, write_json, write_npz, write_table
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
        write_json(sys.stdout, model_name, arm, batches, best)
    elif fmt == "csv":
        write_csv(sys.stdout, batches, best, arm)
    else:
        header = (f"model {model_name} (arm {arm.name}, K={solver.model.components}, "
                  f"{'refined' if not no_refine else 'unrefined'})")
        write_table(sys.stdout, header, batches, best, arm)
