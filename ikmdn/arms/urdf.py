"""Serial chains from URDF files, read with the standard library's XML parser.

Only the kinematic tree is read (<link name>, <joint name type> with <parent link>, <child link>,
<origin xyz rpy>, <axis xyz>, <limit lower upper>); meshes, inertias and everything else are
ignored. The chain runs from a base link (by default the tree's root) to a named tip link:
revolute, continuous and prismatic joints become moving joints, fixed joints fold into the next
origin (or the tip). A continuous joint gets the limits [-pi, pi]. URDF units: metres, radians;
rpy = (roll, pitch, yaw) about the fixed x, y, z axes, R = Rz(yaw) Ry(pitch) Rx(roll).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from ikmdn.arms.serial import DEFAULT_ROTATION_WEIGHT, Joint, SerialArm
from ikmdn.errors import IKMDNError

_MOVING = {"revolute": "revolute", "continuous": "revolute", "prismatic": "prismatic"}


def _vector(element: ET.Element | None, attribute: str, default: tuple[float, ...], what: str) -> np.ndarray:
    """The 3 numbers of element's attribute (default when element or attribute is absent)."""
    text = None if element is None else element.get(attribute)
    if text is None:
        return np.array(default, dtype=np.float64)
    try:
        values = np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError:
        values = np.empty(0)
    if values.shape != (3,) or not np.all(np.isfinite(values)):
        raise IKMDNError(f"{what}: {attribute}={text!r} must be 3 numbers")
    return values


def origin_transform(xyz: Any, rpy: Any) -> np.ndarray:
    """The (4, 4) transform of a URDF <origin>: translation xyz (m), rotation Rz(y) Ry(p) Rx(r) (rad)."""
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    out = np.eye(4)
    out[:3, :3] = [[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                   [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                   [-sp, cp * sr, cp * cr]]
    out[:3, 3] = xyz
    return out


def parse_urdf(text: str, tip_link: str, base_link: str | None = None, name: str | None = None,
               target: str = "pose", rotation_weight: float = DEFAULT_ROTATION_WEIGHT) -> SerialArm:
    """A SerialArm for the chain from base_link (default: the root link) to tip_link of a URDF
    document given as text; name defaults to the robot's name."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise IKMDNError(f"not a valid URDF (XML) document: {exc}") from None
    if root.tag != "robot":
        raise IKMDNError(f"a URDF document's root element must be <robot>, got <{root.tag}>")
    links = [link.get("name") for link in root.findall("link")]
    by_child: dict[str, ET.Element] = {}
    for joint in root.findall("joint"):
        parent, child = joint.find("parent"), joint.find("child")
        if parent is None or child is None or not parent.get("link") or not child.get("link"):
            raise IKMDNError(f"URDF joint {joint.get('name')!r} needs <parent link> and <child link>")
        by_child[child.get("link")] = joint
    if tip_link not in links:
        raise IKMDNError(f"URDF has no link {tip_link!r}; links: {', '.join(map(str, links))}")
    # Walk up from the tip to the base (or the root), then run the chain downwards.
    path, link = [], tip_link
    while link != base_link and link in by_child:
        path.append(by_child[link])
        link = by_child[link].find("parent").get("link")
        if len(path) > len(by_child):
            raise IKMDNError(f"URDF joints form a cycle through link {link!r}")
    if base_link is not None and link != base_link:
        raise IKMDNError(f"URDF link {base_link!r} is not an ancestor of {tip_link!r}")
    joints, limits, names, pending = [], [], [], np.eye(4)
    for element in reversed(path):
        jname, jtype = element.get("name"), element.get("type")
        what = f"URDF joint {jname!r}"
        origin = element.find("origin")
        pending = pending @ origin_transform(_vector(origin, "xyz", (0, 0, 0), what),
                                             _vector(origin, "rpy", (0, 0, 0), what))
        if jtype == "fixed":
            continue
        if jtype not in _MOVING:
            raise IKMDNError(f"{what} has type {jtype!r}; supported: revolute, continuous, prismatic, fixed")
        if element.find("mimic") is not None:
            raise IKMDNError(f"{what} mimics another joint; mimic joints are not supported")
        axis = _vector(element.find("axis"), "xyz", (1, 0, 0), what)
        joints.append(Joint.make(_MOVING[jtype], pending, axis))
        limits.append(_limits(element, jtype, what))
        names.append(jname)
        pending = np.eye(4)
    if not joints:
        raise IKMDNError(f"the URDF chain to {tip_link!r} has no moving joint")
    return SerialArm(name or root.get("name") or tip_link, joints, limits, tip=pending, target=target,
                     rotation_weight=rotation_weight, joint_names=names)


def _limits(element: ET.Element, jtype: str, what: str) -> list[float]:
    """[lower, upper] of a joint: from <limit> (required for revolute and prismatic joints),
    [-pi, pi] for a continuous joint."""
    if jtype == "continuous":
        return [-math.pi, math.pi]
    limit = element.find("limit")
    try:
        lo, hi = float(limit.get("lower", "0")), float(limit.get("upper", "0"))
    except (AttributeError, ValueError):
        raise IKMDNError(f"{what} needs <limit lower=... upper=...> with numbers") from None
    if not lo < hi:
        raise IKMDNError(f"{what} has limits lower={lo}, upper={hi}: lower must be below upper")
    return [lo, hi]


def load_urdf(path: str | Path, tip_link: str, base_link: str | None = None, name: str | None = None,
              target: str = "pose", rotation_weight: float = DEFAULT_ROTATION_WEIGHT) -> SerialArm:
    """A SerialArm from the URDF file at path (see `parse_urdf`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise IKMDNError(f"cannot read URDF file {str(path)!r}: {exc.strerror}") from None
    return parse_urdf(text, tip_link, base_link, name, target, rotation_weight)
