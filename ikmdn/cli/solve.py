"""`ikmdn solve`: every IK solution of targets given on the command line or in a file."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from ikmdn.cli._base import THREADS, cli, default_model, positive
from ikmdn.refine import MAX_ITER
from ikmdn.solve_output import FORMATS


def _parse_coordinates(values: tuple[str, ...]) -> list[float]:
    from ikmdn.targets_io import MAX_ABS, show

    numbers = []
    for v in values:
        try:
            numbers.append(float(v))
        except ValueError:
            raise click.BadParameter(f"{show(v)} is neither an option nor a number",
                                     param_hint="COORDINATES") from None
        if not math.isfinite(numbers[-1]):
            raise click.BadParameter(f"coordinates must be finite, got {show(v)}",
                                     param_hint="COORDINATES")
        if abs(numbers[-1]) > MAX_ABS:
            raise click.BadParameter(f"{show(v)} does not fit in float32 (|value| must be below "
                                     "3.4e38)",
                                     param_hint="COORDINATES")
    return numbers


def _joint_vector(text: str, arm, option: str) -> np.ndarray:
    """Joints (dof,) from 'Q1,...,Qn' (radians; metres for prismatic joints)."""
    from ikmdn.targets_io import show

    try:
        values = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected {arm.dof} comma-separated numbers, got {show(text)}",
                                 param_hint=option) from None
    if len(values) != arm.dof or not all(math.isfinite(v) for v in values):
        raise click.BadParameter(f"arm {arm.name} has {arm.dof} joints ({', '.join(arm.joint_names)}): "
                                 f"expected {arm.dof} finite numbers, got {show(text)}", param_hint=option)
    return np.array(values)


def _near_rows(path: Path, arm, total: int) -> np.ndarray:
    """Reference joints from a file: (1, dof) or (total, dof); a header line may name the joints."""
    from ikmdn.errors import IKMDNError
    from ikmdn.targets_io import TargetsFile

    try:
        source = TargetsFile(path, arm.dof, names=arm.joint_names, what="file")
        rows = np.concatenate(list(source.batches(max(1, len(source)))))
    except IKMDNError as exc:
        raise click.BadParameter(str(exc), param_hint="--near-file") from None
    if len(rows) not in (1, total):
        raise click.BadParameter(f"{path} must hold one row of {arm.dof} joints or one per target "
                                 f"({total}), got {len(rows)}", param_hint="--near-file")
    return rows


def _solve_batches(solver, chunks, refine: bool, mode: str, near: np.ndarray | None):
    """Solutions per chunk of targets; near (dof,) or (total, dof) sliced along with the chunks."""
    offset = 0
    for chunk in chunks:
        rows = None if near is None else near if near.ndim == 1 or len(near) == 1 \
            else near[offset:offset + len(chunk)]
        yield solver.solve(chunk, refine=refine, mode=mode, near=rows)
        offset += len(chunk)


@cli.command("solve", context_settings={"ignore_unknown_options": True})
@click.argument("coordinates", nargs=-1)
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="An .onnx model or a training checkpoint [default: the shipped bishop.onnx].")
@click.option("--targets", "targets_path", type=click.Path(path_type=Path),
              help="A .csv or .npy file with one target per row.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
              show_default=True)
@click.option("--output", type=click.Path(path_type=Path),
              help="Write all result arrays to this .npz file instead of printing.")
@click.option("--no-refine", is_flag=True, help="Raw mixture means, no numerical refinement.")
@click.option("--best", is_flag=True,
              help="One answer per target: candidates refined in rank order, stopping at the first "
                   "that solves (fast).")
@click.option("--near", "near_text", metavar="Q1,...,Qn",
              help="Reference joints (e.g. the robot's current ones): rank by joint distance to "
                   "them, try them as a seed, report the nearest turn of multi-turn joints.")
@click.option("--near-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Reference joints from a .csv or .npy file: one row, or one per target.")
@click.option("--path", "as_path", is_flag=True,
              help="Solve --targets in order as a path from --start, each answer nearest the last.")
@click.option("--start", "start_text", metavar="Q1,...,Qn", help="Start joints for --path.")
@click.option("--tol", type=float, callback=positive,
              help="Refinement tolerance in target units [default: 1e-9].")
@click.option("--max-iter", type=click.IntRange(1, MAX_ITER),
              help="Refinement iteration cap [default: 30 for planar arms, 100 for spatial ones].")
@click.option("--threads", type=THREADS,
              help="Threads for ONNX Runtime and the refinement [default: one per CPU, at most 8].")
@click.option("--force", is_flag=True, help="Overwrite an existing --output file.")
@click.option("--pose", is_flag=True,
              help="Pose arms: COORDINATES (and file rows) are x y z qw qx qy qz (m, unit quaternion).")
def solve_command(coordinates, model_path, targets_path, fmt, output, no_refine, best, near_text,
                  near_file, as_path, start_text, tol, max_iter, threads, force, pose):
    """Every IK solution for one target (COORDINATES) or a file of targets (--targets).

    Each mixture mode is a candidate: checked by forward kinematics, refined, deduplicated.
    Every target is checked before anything is printed; output comes in whole batches, and
    --output writes its .npz whole or not at all.
    Pose arms (ur5, panda) take a hand pose: position x y z in metres and a unit quaternion
    qw qx qy qz, as 7 coordinates or 7 columns.

    Example: ikmdn solve 0.6 0.7 --format json

    Example: ikmdn solve --model ur5.onnx --pose 0.3 0.2 0.4 0 1 0 0

    Example: ikmdn solve --model ur5.onnx --pose 0.3 0.2 0.4 0 1 0 0 --best --near 0,-1.5,1.5,0,1.6,0

    Example: ikmdn solve --model ur5.onnx --path --targets line.csv --start 0,-1.5,1.5,0,1.6,0
    """
    from ikmdn.runtime import MAX_TARGET
    from ikmdn.solve import IKSolver
    from ikmdn.solve_output import (
        POSE_INPUT,
        write_csv,
        write_json,
        write_npz,
        write_path,
        write_table,
    )
    from ikmdn.targets_io import TargetsFile, pose_rows, within

    if bool(coordinates) == bool(targets_path):
        raise click.UsageError("give either target COORDINATES or --targets FILE (one of them)")
    if near_text is not None and near_file is not None:
        raise click.UsageError("give --near or --near-file, not both")
    if as_path:
        if targets_path is None or start_text is None:
            raise click.UsageError("--path needs --targets FILE and --start Q1,...,Qn")
        given = [o for o, v in (("--near", near_text), ("--near-file", near_file), ("--best", best),
                                ("--no-refine", no_refine), ("--output", output)) if v]
        if given:
            raise click.UsageError(f"--path answers one solution per step near the last; drop "
                                   f"{', '.join(given)}")
    elif start_text is not None:
        raise click.UsageError("--start goes only with --path")
    numbers = _parse_coordinates(coordinates)
    model_path = model_path or default_model()
    solver = IKSolver.load(model_path, threads=threads)
    arm = solver.arm
    overrides = {k: v for k, v in (("tol", tol), ("max_iter", max_iter)) if v is not None}
    solver.refine_settings = replace(solver.refine_settings, **overrides)
    if pose and not arm.pose_targets:
        raise click.BadParameter(f"arm {arm.name} takes ({', '.join(arm.target_names)}), not a pose",
                                 param_hint="--pose")
    # Every input row is checked here, before the first byte of output: a file whole (values,
    # and pose rows' quaternions, with their line numbers), the coordinates, the --near rows.
    names = POSE_INPUT if arm.pose_targets else arm.target_names
    checks = ([within(MAX_TARGET, names, 3), pose_rows] if arm.pose_targets  # x y z; quaternion
              else [within(MAX_TARGET, names)])
    if targets_path:
        source = TargetsFile(targets_path, len(names), names=names, checks=checks)
        total, chunks = len(source), source.batches(solver.batch_size)
    else:
        if len(numbers) != len(names):
            raise click.BadParameter(
                f"arm {arm.name} takes {len(names)} coordinates ({', '.join(names)}), "
                f"got {len(numbers)}", param_hint="COORDINATES")
        for check in checks:
            problem = check(np.array([numbers]))
            if problem is not None:
                raise click.BadParameter(problem[1], param_hint="COORDINATES")
        total, chunks = 1, iter([np.array([numbers])])
    if arm.pose_targets:
        from ikmdn.arms.serial import pose_targets

        chunks = (pose_targets(c[:, :3], c[:, 3:]) for c in chunks)
    model_name = str(model_path)
    if as_path:
        start = _joint_vector(start_text, arm, "--start")
        path = solver.solve_path(np.concatenate(list(chunks)), start)
        write_path(sys.stdout, fmt, model_name, arm, path)
        return
    near = (_joint_vector(near_text, arm, "--near") if near_text is not None
            else _near_rows(near_file, arm, total) if near_file is not None else None)
    mode = "best" if best else "all"
    batches = _solve_batches(solver, chunks, not no_refine, mode, near)
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
