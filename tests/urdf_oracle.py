"""An independent URDF forward-kinematics oracle for tests and benchmarks: it walks the URDF tree
itself (xml.etree, scipy rotations) and shares no code with ikmdn. Each joint is its <origin>
(translation xyz, rotation rpy = extrinsic x-y-z Euler angles) followed by its motion
(revolute/continuous: a rotation by q about <axis>; prismatic: a translation by q along <axis>;
fixed: none; a <mimic> joint follows its master). The pose of a link in the frame of another is
inv(T_root_base) T_root_tip, so any two links of the tree work.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation


def _floats(text: str | None, default: tuple[float, ...]) -> np.ndarray:
    return np.array(default if text is None else [float(v) for v in text.split()], dtype=np.float64)


class Urdf:
    """The kinematic tree of a URDF file: joints keyed by child link, each with its parent link,
    type, origin (4, 4), unit axis, limits and mimic (master, multiplier, offset)."""

    def __init__(self, path: Path):
        root = ET.parse(path).getroot()
        self.links = [link.get("name") for link in root.findall("link")]
        self.joints: dict[str, dict] = {}
        for j in root.findall("joint"):
            origin, axis, limit, mimic = j.find("origin"), j.find("axis"), j.find("limit"), j.find("mimic")
            t = np.eye(4)
            if origin is not None:
                t[:3, :3] = Rotation.from_euler("xyz", _floats(origin.get("rpy"), (0, 0, 0))).as_matrix()
                t[:3, 3] = _floats(origin.get("xyz"), (0, 0, 0))
            a = _floats(None if axis is None else axis.get("xyz"), (1, 0, 0))
            self.joints[j.find("child").get("link")] = {
                "name": j.get("name"), "type": j.get("type"), "parent": j.find("parent").get("link"),
                "origin": t, "axis": a / np.linalg.norm(a) if np.linalg.norm(a) > 0 else a,
                "limits": None if limit is None else (float(limit.get("lower", "0")),
                                                      float(limit.get("upper", "0"))),
                "mimic": None if mimic is None else (mimic.get("joint"),
                                                     float(mimic.get("multiplier", "1")),
                                                     float(mimic.get("offset", "0"))),
            }
        self.by_name = {j["name"]: j for j in self.joints.values()}

    def path(self, link: str) -> list[dict]:
        """The joints from the root down to link."""
        out = []
        while link in self.joints:
            out.append(self.joints[link])
            link = out[-1]["parent"]
        return out[::-1]

    def moving(self, tip: str, base: str | None = None) -> list[str]:
        """Names of the moving (non-fixed, non-mimic) joints from base (an ancestor of tip, default
        the root) down to tip, in chain order."""
        names = [j["name"] for j in self.path(tip) if j["type"] != "fixed" and j["mimic"] is None]
        if base is not None:
            above = {j["name"] for j in self.path(base)}
            names = [n for n in names if n not in above]
        return names

    def link_pose(self, link: str, q: dict[str, float]) -> np.ndarray:
        """Pose (4, 4) of link in the root frame for joint values q (name -> value; missing
        moving joints are 0)."""
        t = np.eye(4)
        for j in self.path(link):
            t = t @ j["origin"]
            if j["type"] == "fixed":
                continue
            if j["mimic"] is not None:
                master, mult, off = j["mimic"]
                value = mult * q.get(master, 0.0) + off
            else:
                value = q.get(j["name"], 0.0)
            motion = np.eye(4)
            if j["type"] in ("revolute", "continuous"):
                motion[:3, :3] = Rotation.from_rotvec(j["axis"] * value).as_matrix()
            elif j["type"] == "prismatic":
                motion[:3, 3] = j["axis"] * value
            else:
                raise ValueError(f"joint type {j['type']!r}")
            t = t @ motion
        return t

    def poses(self, tip: str, names: list[str], q: np.ndarray, base: str | None = None,
              extra: dict[str, float] | None = None) -> np.ndarray:
        """Poses (N, 4, 4) of tip in the frame of base (default the root) for q (N, len(names))."""
        out = []
        for row in q:
            values = dict(zip(names, row.tolist(), strict=True))
            values.update(extra or {})
            t = self.link_pose(tip, values)
            if base is not None:
                t = np.linalg.inv(self.link_pose(base, values)) @ t
            out.append(t)
        return np.array(out)
