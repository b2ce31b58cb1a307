"""URDF robot descriptions: the link tree (`describe_urdf`) and serial chains cut from it (`load_urdf`).

One parser (the standard library's ElementTree) reads the kinematic tree: <robot name>, <link name>,
<joint name type> with <parent link>, <child link>, <origin xyz rpy>, <axis xyz>, <limit lower
upper> and <mimic joint multiplier offset>; meshes, inertias and everything else are ignored.
Documents declaring <!ENTITY>s are refused (entity bombs), and xacro sources are recognised and
refused with the command that expands them.

`describe_urdf` returns a `UrdfTree`: every link with its parent and children, every joint, and for
each leaf link the moving joints on its chain from the root and the gripper or mimic joints it
crosses (`ikmdn urdf FILE` prints this). `UrdfTree.arm` (behind `parse_urdf` and `load_urdf`)
turns the chain from a base link to a tip link into a SerialArm:

- the chain is the tree path between base and tip through their common ancestor. The base is the
  root by default; any other link whose path up to that ancestor has only fixed (or locked) joints
  will do, such as UR's `base` beside `base_link`: that segment enters as its inverse transform.
- revolute, continuous and prismatic joints move (a continuous joint gets the limits [-pi, pi]);
  fixed joints fold into the next origin (or the tip); a locked joint (`lock={name: value}`)
  folds in moved by its value, and the arm records it in `locked`.
- mimic joints and gripper joints (prismatic, with "finger" or "gripper" in the joint's or its
  child link's name) on the chain are refused unless locked; the error names tips that avoid them.
- `tool` (4, 4), e.g. `tool_transform([x, y, z, qw, qx, qy, qz])`, is a fixed TCP after the tip.

URDF units: metres, radians; rpy = (roll, pitch, yaw) about the fixed x, y, z axes,
R = Rz(yaw) Ry(pitch) Rx(roll).
"""

from __future__ import annotations

import math
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ikmdn.arms.rotations import quat_to_matrix
from ikmdn.arms.serial import DEFAULT_ROTATION_WEIGHT, Joint, SerialArm
from ikmdn.errors import IKMDNError

URDF_JOINT_TYPES = ("revolute", "continuous", "prismatic", "fixed", "floating", "planar")
_MOVING = {"revolute": "revolute", "continuous": "revolute", "prismatic": "prismatic"}
_GRIPPER_WORDS = ("finger", "gripper")
_TIP_NAMES = re.compile(r"(tcp|tool\d*|ee|flange|tip|end_?effector)$")
_SIDE_NAMES = re.compile(r"(_sc$|collision|camera|sensor|inertia)")


# -- the tree -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class UrdfJoint:
    """One <joint>: its URDF type, the links it joins, origin (4, 4), axis (3,) as written,
    limits (lower, upper) from <limit> (None when absent, and for continuous joints) and the joint
    it mimics (None when it mimics none)."""

    name: str
    type: str
    parent: str
    child: str
    origin: np.ndarray
    axis: np.ndarray
    limits: tuple[float, float] | None
    mimic: str | None = None
    mimic_multiplier: float = 1.0
    mimic_offset: float = 0.0

    @property
    def moving(self) -> bool:
        """Whether the joint moves (any type but fixed)."""
        return self.type != "fixed"

    @property
    def gripper(self) -> bool:
        """A gripper joint: prismatic, with finger or gripper in its own or its child link's name."""
        names = f"{self.name} {self.child}".lower()
        return self.type == "prismatic" and any(word in names for word in _GRIPPER_WORDS)

    @property
    def unit(self) -> str:
        """"m" for prismatic joints, "rad" for the others."""
        return "m" if self.type == "prismatic" else "rad"


@dataclass(frozen=True)
class UrdfLink:
    """One <link>: the link it hangs from and the joint that attaches it (None for the root), and
    its children in document order."""

    name: str
    parent: str | None
    joint: str | None
    children: tuple[str, ...]


@dataclass(frozen=True)
class UrdfTip:
    """A leaf link as a candidate tip: the moving joints on its chain from the root (in order), the
    gripper and mimic joints among them, and `cut`, the parent link of the first of those (a tip
    that avoids them; None when the chain crosses none)."""

    link: str
    moving_joints: tuple[str, ...]
    gripper_joints: tuple[str, ...]
    mimic_joints: tuple[str, ...]
    cut: str | None

    @property
    def clean(self) -> bool:
        """Whether the chain crosses no gripper or mimic joint."""
        return not (self.gripper_joints or self.mimic_joints)


@dataclass(frozen=True, eq=False)
class UrdfTree:
    """A URDF's kinematic tree: robot name, root link, links and joints by name (document order),
    and the leaf links as candidate tips. `arm(tip_link, ...)` cuts a SerialArm from it."""

    name: str | None
    source: str | None
    root: str
    links: dict[str, UrdfLink]
    joints: dict[str, UrdfJoint]
    tips: tuple[UrdfTip, ...]

    @property
    def leaves(self) -> tuple[str, ...]:
        """The links without children, in document order."""
        return tuple(tip.link for tip in self.tips)

    @property
    def movable_joints(self) -> tuple[UrdfJoint, ...]:
        """Every joint that is not fixed, in document order."""
        return tuple(j for j in self.joints.values() if j.moving)

    @property
    def ranked_tips(self) -> tuple[str, ...]:
        """The leaves that cross no gripper or mimic joint and have a moving joint, best first:
        most moving joints, then names like tool0, tcp, ee or flange before others and names like
        *_sc, collision, camera or sensor after them, then the longest chain, then document order."""
        def key(item: tuple[int, UrdfTip]) -> tuple:
            index, tip = item
            name = tip.link.lower()
            hint = 1 if _TIP_NAMES.search(name) else -1 if _SIDE_NAMES.search(name) else 0
            return -len(tip.moving_joints), -hint, -len(self.path(tip.link)), index

        clean = [(i, t) for i, t in enumerate(self.tips) if t.clean and t.moving_joints]
        return tuple(t.link for _, t in sorted(clean, key=key))

    @property
    def best_tip(self) -> str | None:
        """The first of `ranked_tips`; failing that (every chain crosses gripper or mimic joints),
        the link above those joints with the most moving joints; None when nothing moves."""
        if self.ranked_tips:
            return self.ranked_tips[0]
        cuts = [(self.moving_count(t.cut), t.cut) for t in self.tips if t.cut is not None]
        cuts = [c for c in cuts if c[0] > 0]
        return max(cuts, key=lambda c: c[0])[1] if cuts else None

    def moving_count(self, link: str) -> int:
        """The number of moving joints between the root and link."""
        return sum(self.joints[j].moving for j in self._joints_up(link, self.root))

    def path(self, link: str) -> list[str]:
        """The links from link up to the root, link first."""
        out = [link]
        while self.links[out[-1]].parent is not None:
            out.append(self.links[out[-1]].parent)
        return out

    def _joints_up(self, link: str, stop: str) -> list[str]:
        return _joints_up(self.links, link, stop)

    def _where(self) -> str:
        return self.source or "this URDF"

    def _need_link(self, link: str | None, role: str) -> str:
        leaves = ", ".join(self.leaves)
        if link is None:
            raise IKMDNError(f"give a {role} link; leaf links: {leaves}")
        if link not in self.links:
            raise IKMDNError(f"{self._where()} has no link {link!r} (for the {role}); it has "
                             f"{len(self.links)} links, root {self.root!r}, leaf links: {leaves}")
        return link

    def arm(self, tip_link: str | None = None, base_link: str | None = None, name: str | None = None,
            target: str = "pose", rotation_weight: float = DEFAULT_ROTATION_WEIGHT, tool: Any = None,
            lock: Mapping[str, float] | None = None) -> SerialArm:
        """A SerialArm for the chain from base_link (default: the root) to tip_link, with joints in
        lock held at their values and an optional tool (4, 4) (or 7 numbers, see `tool_transform`)
        after the tip; name defaults to the robot's name."""
        tip = self._need_link(tip_link, "tip")
        base = self.root if base_link is None else self._need_link(base_link, "base")
        tip_path = self.path(tip)
        common = next(link for link in self.path(base) if link in set(tip_path))
        rise = [self.joints[j] for j in self._joints_up(base, common)]          # base -> common
        down = [self.joints[j] for j in reversed(self._joints_up(tip, common))]  # common -> tip
        locks = self._check_locks(lock, rise + down, base, tip)
        # The base's side of the path: fixed (or locked) up to the common ancestor, inverted.
        mount = np.eye(4)
        for joint in rise:
            if joint.moving and joint.name not in locks:
                raise IKMDNError(f"base link {base!r} moves relative to tip {tip!r} through joint "
                                 f"{joint.name!r} ({joint.type}); choose a base fixed to the chain "
                                 f"or lock that joint")
            mount = _frame(joint, locks.get(joint.name)) @ mount
        pending = _inverse(mount)
        joints, limits, names, continuous = [], [], [], []
        for joint in down:
            if not joint.moving or joint.name in locks:
                pending = pending @ _frame(joint, locks.get(joint.name))
                continue
            pending = pending @ joint.origin
            self._check_movable(joint, tip)
            joints.append(Joint.make(_MOVING[joint.type], pending, _unit_axis(joint)))
            limits.append(_chain_limits(joint))
            names.append(joint.name)
            continuous.append(joint.type == "continuous")
            pending = np.eye(4)
        if not joints:
            raise IKMDNError(f"the URDF chain from {base!r} to {tip!r} has no moving joint")
        if tool is not None and np.shape(tool) == (7,):
            tool = tool_transform(tool)
        return SerialArm(name or self.name or tip, joints, limits, tip=pending, target=target,
                         rotation_weight=rotation_weight, joint_names=names, base_frame=base,
                         tip_frame=tip, tool=tool, locked=locks, continuous=continuous)

    def _check_movable(self, joint: UrdfJoint, tip: str) -> None:
        """Errors for a joint on the chain that cannot become a moving joint of the arm."""
        what = f"URDF joint {joint.name!r}"
        if joint.type not in _MOVING:
            raise IKMDNError(f"{what} has type {joint.type!r}; supported: revolute, continuous, "
                             f"prismatic, fixed")
        if joint.gripper or joint.mimic is not None:
            kind = (f"gripper joint {joint.name!r} ({joint.type})" if joint.gripper else
                    f"mimic joint {joint.name!r} (it mimics {joint.mimic!r})")
            lo, hi = _chain_limits(joint)
            others = [joint.parent] + [t for t in self.ranked_tips if t != joint.parent][:2]
            raise IKMDNError(f"chain to {tip!r} crosses {kind}; lock it with --lock "
                             f"{joint.name}=VALUE (VALUE in [{lo:.6g}, {hi:.6g}] {joint.unit}) or "
                             f"choose another tip such as {', '.join(others)}")

    def _check_locks(self, lock: Mapping[str, float] | None, chain: list[UrdfJoint], base: str,
                     tip: str) -> dict[str, float]:
        """lock validated against the chain: {joint name: value} for movable joints on it."""
        if not lock:
            return {}
        if not isinstance(lock, Mapping):
            raise IKMDNError(f"lock must map joint names to values, got {type(lock).__name__}")
        on_chain = {j.name for j in chain}
        movable = ", ".join(j.name for j in chain if j.moving) or "none"
        listing = f"movable joints on the chain from {base!r} to {tip!r}: {movable}"
        out = {}
        for jname, value in lock.items():
            joint = self.joints.get(jname)
            if joint is None:
                raise IKMDNError(f"cannot lock {jname!r}: {self._where()} has no such joint; {listing}")
            if not joint.moving:
                raise IKMDNError(f"cannot lock {jname!r}: it is a fixed joint; {listing}")
            if jname not in on_chain:
                raise IKMDNError(f"cannot lock {jname!r}: it is not on the chain; {listing}")
            if joint.type not in _MOVING:
                raise IKMDNError(f"cannot lock {jname!r}: a {joint.type} joint has no single value; "
                                 f"lockable: revolute, continuous, prismatic")
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise IKMDNError(f"cannot lock {jname!r} at {value!r}: expected a number") from None
            if not math.isfinite(v):
                raise IKMDNError(f"cannot lock {jname!r} at {v}: expected a finite number")
            lo, hi = _chain_limits(joint) if joint.type != "continuous" else (-math.inf, math.inf)
            if not lo <= v <= hi:
                raise IKMDNError(f"cannot lock {jname!r} at {v:g}: outside its limits "
                                 f"[{lo:.6g}, {hi:.6g}] {joint.unit}")
            out[jname] = v
        return out


# -- parsing ------------------------------------------------------------------------------------
def describe_urdf(urdf: str | Path, source: str | None = None) -> UrdfTree:
    """The kinematic tree of a URDF: a file path, or the document itself as text (a str holding
    "<"); source names the document in error messages (default: the path)."""
    if isinstance(urdf, Path) or "<" not in urdf:
        return _parse_tree(_read(urdf), source or str(urdf))
    return _parse_tree(urdf, source)


def parse_urdf(text: str, tip_link: str | None = None, base_link: str | None = None,
               name: str | None = None, target: str = "pose",
               rotation_weight: float = DEFAULT_ROTATION_WEIGHT, tool: Any = None,
               lock: Mapping[str, float] | None = None, source: str | None = None) -> SerialArm:
    """A SerialArm for the chain from base_link (default: the root link) to tip_link of a URDF
    document given as text (see `UrdfTree.arm`); source names the document in errors."""
    return _parse_tree(text, source).arm(tip_link, base_link, name, target, rotation_weight, tool, lock)


def load_urdf(path: str | Path, tip_link: str | None = None, base_link: str | None = None,
              name: str | None = None, target: str = "pose",
              rotation_weight: float = DEFAULT_ROTATION_WEIGHT, tool: Any = None,
              lock: Mapping[str, float] | None = None) -> SerialArm:
    """A SerialArm from the URDF file at path (see `parse_urdf`)."""
    return parse_urdf(_read(path), tip_link, base_link, name, target, rotation_weight, tool, lock,
                      source=str(path))


def tool_transform(values: Sequence[float] | str) -> np.ndarray:
    """A tool (TCP) transform (4, 4) from 7 numbers x y z (m) qw qx qy qz (a unit quaternion,
    scalar first), given as a sequence or a string separated by spaces or commas."""
    given = values
    if isinstance(values, str):
        values = [v for v in re.split(r"[\s,]+", values.strip()) if v]
    try:
        v = np.array([float(x) for x in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise IKMDNError(f"a tool transform is 7 numbers x y z qw qx qy qz, got {given!r}") from None
    if v.shape != (7,):
        raise IKMDNError(f"a tool transform is 7 numbers x y z qw qx qy qz, got {v.size}")
    if not np.all(np.isfinite(v)):
        raise IKMDNError(f"a tool transform must be finite numbers, got {v.tolist()}")
    norm = float(np.linalg.norm(v[3:]))
    if abs(norm - 1.0) > 1e-6:
        raise IKMDNError(f"a tool rotation must be a unit quaternion (w, x, y, z), got "
                         f"{v[3:].tolist()} with norm {norm:.9g}")
    out = np.eye(4)
    out[:3, :3] = quat_to_matrix(v[3:])[0]   # normalises the (already nearly unit) quaternion
    out[:3, 3] = v[:3]
    return out


def _read(path: str | Path) -> str:
    """The text of a URDF file; .xacro files are refused."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise IKMDNError(f"cannot read URDF file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise IKMDNError(f"cannot read URDF file {str(path)!r}: not UTF-8 text") from None
    if Path(path).suffix.lower() == ".xacro":
        raise _xacro_error(str(path))
    return text


def _xacro_error(source: str | None, why: str = "is a xacro file") -> IKMDNError:
    where = source or "this URDF"
    command = f"xacro {shlex.quote(source or 'robot.urdf.xacro')} > robot.urdf"
    return IKMDNError(f"{where} {why}: expand it first, e.g. `{command}` (pip install xacro)")


def _is_xacro(root: ET.Element) -> bool:
    """Whether a parsed document uses xacro: elements in its namespace, or $(...) / ${...}."""
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{") and "xacro" in element.tag:
            return True
        if any("$(" in value or "${" in value for value in element.attrib.values()):
            return True
    return False


def _parse_tree(text: str, source: str | None) -> UrdfTree:
    """The UrdfTree of a URDF document (text)."""
    if re.search(r"<!ENTITY", text):
        raise IKMDNError("URDF with <!ENTITY> declarations is not supported")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        if "<xacro:" in text:
            raise _xacro_error(source) from None
        raise IKMDNError(f"not a valid URDF (XML) document: {exc}") from None
    if root.tag != "robot":
        raise IKMDNError(f"a URDF document's root element must be <robot>, got <{root.tag}>")
    if _is_xacro(root):
        raise _xacro_error(source)
    link_names = [link.get("name") for link in root.findall("link")]
    if not link_names:
        raise _xacro_error(source, "has no <link> elements (a xacro file?)")
    seen: set[str] = set()
    for link in link_names:
        if not link:
            raise IKMDNError("every URDF <link> needs a name")
        if link in seen:
            raise IKMDNError(f"URDF link {link!r} is defined twice")
        seen.add(link)
    joints: dict[str, UrdfJoint] = {}
    by_child: dict[str, UrdfJoint] = {}
    for index, element in enumerate(root.findall("joint")):
        joint = _parse_joint(element, index, seen)
        if joint.name in joints:
            raise IKMDNError(f"URDF joint {joint.name!r} is defined twice")
        if joint.child in by_child:
            raise IKMDNError(f"URDF link {joint.child!r} is the child of two joints, "
                             f"{by_child[joint.child].name!r} and {joint.name!r}")
        joints[joint.name] = by_child[joint.child] = joint
    roots = [link for link in link_names if link not in by_child]
    if len(roots) > 1:
        raise IKMDNError(f"URDF links must form one tree, found {len(roots)} roots: {', '.join(roots)}")
    children: dict[str, list[str]] = {link: [] for link in link_names}
    for joint in joints.values():
        children[joint.parent].append(joint.child)
    # Every link must hang from the root: the links that do not sit on a cycle.
    reached, stack = set(roots), list(roots)
    while stack:
        for child in children[stack.pop()]:
            reached.add(child)
            stack.append(child)
    if len(reached) < len(link_names):
        stuck = next(link for link in link_names if link not in reached)
        raise IKMDNError(f"URDF joints form a cycle through link {stuck!r}")
    links = {link: UrdfLink(link, by_child[link].parent if link in by_child else None,
                            by_child[link].name if link in by_child else None, tuple(children[link]))
             for link in link_names}
    tips = []
    for link in link_names:
        if children[link]:
            continue
        chain = [joints[j] for j in reversed(_joints_up(links, link, roots[0]))]
        odd = [j for j in chain if j.gripper or j.mimic is not None]
        tips.append(UrdfTip(link, tuple(j.name for j in chain if j.moving),
                            tuple(j.name for j in chain if j.gripper),
                            tuple(j.name for j in chain if j.mimic is not None),
                            odd[0].parent if odd else None))
    return UrdfTree(root.get("name"), source, roots[0], links, joints, tuple(tips))


def _joints_up(links: Mapping[str, UrdfLink], link: str, stop: str) -> list[str]:
    """The joints from link up to its ancestor stop, the one attaching link first."""
    out = []
    while link != stop:
        node = links[link]
        out.append(node.joint)
        link = node.parent
    return out


def _parse_joint(element: ET.Element, index: int, links: set[str]) -> UrdfJoint:
    """One <joint> element, its numbers checked."""
    jname, jtype = element.get("name"), element.get("type")
    if not jname:
        raise IKMDNError(f"URDF joint number {index + 1} has no name")
    what = f"URDF joint {jname!r}"
    if jtype not in URDF_JOINT_TYPES:
        raise IKMDNError(f"{what} has type {jtype!r}; URDF joint types: {', '.join(URDF_JOINT_TYPES)}")
    ends = []
    for role in ("parent", "child"):
        tag = element.find(role)
        link = None if tag is None else tag.get("link")
        if not link:
            raise IKMDNError(f"{what} needs <parent link> and <child link>")
        if link not in links:
            raise IKMDNError(f"{what} names {role} link {link!r}, but the URDF has no link {link!r}")
        ends.append(link)
    origin = element.find("origin")
    transform = origin_transform(_vector(origin, "xyz", (0, 0, 0), what),
                                 _vector(origin, "rpy", (0, 0, 0), what))
    axis = _vector(element.find("axis"), "xyz", (1, 0, 0), what)
    limits = None
    limit = element.find("limit")
    if limit is not None and jtype != "continuous":
        try:
            limits = (float(limit.get("lower", "0")), float(limit.get("upper", "0")))
        except ValueError:
            raise IKMDNError(f"{what} needs <limit lower=... upper=...> with numbers") from None
    mimic = element.find("mimic")
    extra: dict[str, Any] = {}
    if mimic is not None:
        try:
            extra = {"mimic": mimic.get("joint") or "?",
                     "mimic_multiplier": float(mimic.get("multiplier", "1")),
                     "mimic_offset": float(mimic.get("offset", "0"))}
        except ValueError:
            raise IKMDNError(f"{what}: <mimic multiplier offset> must be numbers") from None
    return UrdfJoint(jname, jtype, ends[0], ends[1], transform, axis, limits, **extra)


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


# -- transforms ---------------------------------------------------------------------------------
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


def _unit_axis(joint: UrdfJoint) -> np.ndarray:
    norm = float(np.linalg.norm(joint.axis))
    if not norm > 1e-12:
        raise IKMDNError(f"URDF joint {joint.name!r}: joint axis must be a non-zero 3-vector, "
                         f"got {joint.axis.tolist()}")
    return joint.axis / norm


def _chain_limits(joint: UrdfJoint) -> list[float]:
    """[lower, upper] of a moving joint: from <limit> (required for revolute and prismatic
    joints), [-pi, pi] for a continuous joint."""
    if joint.type == "continuous":
        return [-math.pi, math.pi]
    what = f"URDF joint {joint.name!r}"
    if joint.limits is None:
        raise IKMDNError(f"{what} needs <limit lower=... upper=...> with numbers")
    lo, hi = joint.limits
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise IKMDNError(f"{what} has limits lower={lo}, upper={hi}: both must be finite numbers "
                         "(a joint that turns without limits is type=\"continuous\")")
    if not lo < hi:
        raise IKMDNError(f"{what} has limits lower={lo}, upper={hi}: lower must be below upper")
    return [lo, hi]


def _frame(joint: UrdfJoint, value: float | None) -> np.ndarray:
    """The (4, 4) from a joint's parent link to its child: origin, then for a locked joint (value
    given) the rotation about or translation along its axis by value."""
    if value is None:
        return joint.origin
    axis = _unit_axis(joint)
    motion = np.eye(4)
    if joint.type == "prismatic":
        motion[:3, 3] = value * axis
    else:
        c, s = math.cos(value), math.sin(value)
        k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
        motion[:3, :3] = c * np.eye(3) + s * k + (1.0 - c) * np.outer(axis, axis)
    return joint.origin @ motion


def _inverse(t: np.ndarray) -> np.ndarray:
    """The inverse of a rigid transform (4, 4)."""
    out = np.eye(4)
    out[:3, :3] = t[:3, :3].T
    out[:3, 3] = -t[:3, :3].T @ t[:3, 3]
    return out
