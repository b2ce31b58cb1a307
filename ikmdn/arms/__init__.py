"""Arm kinematics in numpy float64 (with torch twins of fk) and the arm registry."""

from ikmdn.arms.base import Arm, arm_from_spec, get_arm, list_arms, wrap_angle
from ikmdn.arms.planar import PlanarArm

__all__ = ["Arm", "PlanarArm", "arm_from_spec", "get_arm", "list_arms", "wrap_angle"]
