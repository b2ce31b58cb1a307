"""The options that choose an arm (a preset, or a URDF chain with its frames) and the model kind,
shared by `ikmdn train` and `python -m ikmdn.train_distributed`."""

from __future__ import annotations

import math
from pathlib import Path

import click

from ikmdn.cli._base import joint_order_list


def _lock(ctx, param, values):
    """--lock JOINT=VALUE (repeatable) -> {joint: value}."""
    locked = {}
    for text in values:
        name, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name or number is None or not math.isfinite(number):
            raise click.BadParameter(f"expected JOINT=VALUE with a finite number, got {text!r}")
        if name in locked:
            raise click.BadParameter(f"joint {name!r} is locked twice")
        locked[name] = number
    return locked


URDF_ONLY = ("--tip", "--base", "--tool", "--lock", "--name")


def _urdf_arm(urdf, tip, base, tool, lock, name):
    """The Arm of --urdf and its frame options; usage errors for options that need --urdf."""
    from ikmdn.arms import load_urdf

    if urdf is None:
        given = [opt for opt, v in zip(URDF_ONLY, (tip, base, tool, lock, name), strict=True) if v]
        if given:
            verb = "goes" if len(given) == 1 else "go"
            raise click.UsageError(f"{', '.join(given)} {verb} only with --urdf FILE")
        return None
    return load_urdf(urdf, tip, base_link=base, name=name, tool=tool, lock=lock)


ARM_OPTIONS = (
    click.option("--arm", "arm_name", help="Preset arm (see `ikmdn arms`) [default: bishop]."),
    click.option("--urdf", type=click.Path(path_type=Path, dir_okay=False),
                 help="Train on your robot: a URDF file (expanded, not .xacro); needs --tip "
                      "(`ikmdn urdf FILE` lists the links)."),
    click.option("--tip", help="URDF link the targets refer to (the hand, flange or TCP)."),
    click.option("--base", help="URDF link the targets are given in [default: the root link]."),
    click.option("--tool", type=float, nargs=7, default=None, metavar="X Y Z QW QX QY QZ",
                 help="Fixed tool (TCP) transform after --tip: metres and a unit quaternion."),
    click.option("--lock", multiple=True, callback=_lock, metavar="JOINT=VALUE",
                 help="Hold a URDF joint at a value (rad or m), e.g. a gripper finger; repeatable."),
    click.option("--name", help="Name of the URDF arm [default: the robot's name]."),
)


def arm_options(command):
    """Decorator: the ARM_OPTIONS, in that order (see `chosen_arm`)."""
    for option in reversed(ARM_OPTIONS):
        command = option(command)
    return command


def model_options(command):
    """Decorator: --model (as `kind`) and --joint-order (as `joint_order`)."""
    command = click.option(
        "--joint-order", callback=joint_order_list,
        help="Factor order of an autoregressive model, e.g. 0,4,5,1,3,2 (joint indices) "
             "[default: found from the arm before training].")(command)
    return click.option(
        "--model", "kind", type=click.Choice(["mdn", "autoregressive"]),
        help="mdn: one mixture over all joints; autoregressive: one mixture per joint, each "
             "given the joints before it, candidates by beam search (--components wide) "
             "[default: autoregressive for 6-D pose targets or 6+ joints, else mdn].")(command)


def chosen_arm(arm_name, urdf, tip, base, tool, lock, name):
    """The arm the options choose: an Arm from --urdf, else the preset name (default bishop);
    usage errors for --arm with --urdf and for URDF options without --urdf."""
    if arm_name is not None and urdf is not None:
        raise click.UsageError("give --arm or --urdf, not both")
    return _urdf_arm(urdf, tip, base, tool, lock, name) or (arm_name or "bishop")
