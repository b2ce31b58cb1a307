"""`ikmdn urdf`: what a URDF file holds, and which tip to train on."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from ikmdn.cli._base import cli


@cli.command("urdf")
@click.argument("file", type=click.Path(path_type=Path))
def urdf_command(file):
    """Show a URDF's link tree, movable joints and leaf links (candidate tips).

    Leaf links whose chain crosses a gripper or mimic joint are flagged (train on another tip,
    or hold those joints with --lock). The last line is a training command for the best tip.

    Example: ikmdn urdf panda.urdf
    """
    from ikmdn.arms.urdf import describe_urdf

    tree = describe_urdf(file)
    movable = tree.movable_joints
    click.echo(f"robot {tree.name or '(unnamed)'}: {len(tree.links)} links, {len(movable)} movable "
               f"joints, root link {tree.root}")
    click.echo("\nlink tree (child: joint type and name):")
    stack = [(tree.root, 0)]
    while stack:
        link, depth = stack.pop()
        node = tree.links[link]
        how = "" if node.joint is None else f"  ({tree.joints[node.joint].type} {node.joint})"
        click.echo(f"  {'  ' * depth}{link}{how}")
        stack.extend((child, depth + 1) for child in reversed(node.children))
    click.echo("\nmovable joints:")
    width = max((len(j.name) for j in movable), default=0)
    for joint in movable:
        if joint.type == "continuous":
            limits = "unlimited (trained on [-pi, pi])"
        elif joint.limits is None:
            limits = "no <limit>"
        else:
            limits = f"[{joint.limits[0]:.6g}, {joint.limits[1]:.6g}] {joint.unit}"
        notes = [f"mimics {joint.mimic} (x{joint.mimic_multiplier:g}, {joint.mimic_offset:+g})"
                 if joint.mimic else "", "gripper" if joint.gripper else ""]
        click.echo(f"  {joint.name:<{width}}  {joint.type:<10}  {limits}"
                   + "".join(f"  {n}" for n in notes if n))
    if not movable:
        click.echo("  none")
    click.echo("\nleaf links (candidate tips):")
    width = max(len(t.link) for t in tree.tips)
    for tip in tree.tips:
        n = len(tip.moving_joints)
        crosses = [f"{'gripper and mimic' if j in tip.mimic_joints else 'gripper'} joint {j}"
                   for j in tip.gripper_joints]
        crosses += [f"mimic joint {j}" for j in tip.mimic_joints if j not in tip.gripper_joints]
        flag = f"  crosses {', '.join(crosses)}" if crosses else ""
        click.echo(f"  {tip.link:<{width}}  {n} moving joint{'' if n == 1 else 's'}{flag}")
    best = tree.best_tip
    if best is None:
        click.echo("\nno chain from the root has a moving joint that is not a gripper or mimic joint")
        return
    run = re.sub(r"[^A-Za-z0-9_.-]+", "_", tree.name or file.stem) or "robot"
    why = "" if best in tree.leaves else ", above the gripper/mimic joints"
    click.echo(f"\ntrain on the best tip ({best}: {tree.moving_count(best)} moving joints{why}):")
    click.echo(f"  ikmdn train --urdf {shlex.quote(str(file))} --tip {shlex.quote(best)} "
               f"--out runs/{run}")
