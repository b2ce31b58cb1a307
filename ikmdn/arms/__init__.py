"""Arm kinematics in numpy float64 (with torch twins of fk) and the arm registry."""

from ikmdn.arms.base import Arm, arm_from_spec, get_arm, list_arms, wrap_angle
from ikmdn.arms.dh import dh_arm
from ikmdn.arms.planar import PlanarArm
from ikmdn.arms.serial import SerialArm, pose_targets, poses_to_targets, targets_to_poses
from ikmdn.arms.urdf import UrdfTree, describe_urdf, load_urdf, parse_urdf, tool_transform

__all__ = ["Arm", "PlanarArm", "SerialArm", "UrdfTree", "arm_from_spec", "describe_urdf", "dh_arm",
           "get_arm", "list_arms", "load_urdf", "parse_urdf", "pose_targets", "poses_to_targets",
           "targets_to_poses", "tool_transform", "wrap_angle"]
