"""The URDF loader's user-facing side: `describe_urdf`, base links off the chain, locked joints,
tool transforms, refusals (xacro, entities, gripper and mimic joints) and `ikmdn urdf`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke

from ikmdn.arms import arm_from_spec
from ikmdn.arms.urdf import describe_urdf, load_urdf, origin_transform, parse_urdf, tool_transform
from ikmdn.errors import IKMDNError

DATA = Path(__file__).resolve().parent / "data"
SMALL = DATA / "small_chain.urdf"
UR5 = DATA / "ur5.urdf"
PANDA, IIWA, UR5_ROS = DATA / "panda.urdf", DATA / "iiwa14.urdf", DATA / "ur5_ros.urdf"
XACRO = """<?xml version="1.0"?>
<robot name="arm" xmlns:xacro="http://www.ros.org/wiki/xacro">
  <xacro:property name="length" value="0.3"/>
  <link name="base"/>
  <link name="tip"/>
  <joint name="j" type="revolute">
    <parent link="base"/><child link="tip"/>
    <origin xyz="0 0 ${length}"/><axis xyz="0 0 1"/><limit lower="-1" upper="1"/>
  </joint>
</robot>
"""


def small_text() -> str:
    return SMALL.read_text()


def sample(arm, n=20, seed=0):
    return arm.sample_joints(n, np.random.default_rng(seed))


def rz(angle: float) -> np.ndarray:
    return origin_transform([0, 0, 0], [0, 0, angle])


def needs(path: Path):
    return pytest.mark.skipif(not path.is_file(), reason=f"{path.name} not vendored")


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# -- describe_urdf --------------------------------------------------------------------------------
def test_describe_small_chain():
    tree = describe_urdf(SMALL)
    assert tree.name == "small_chain" and tree.root == "base" and tree.source == str(SMALL)
    assert list(tree.links) == ["base", "mount", "upper", "slider", "wrist", "tool", "camera"]
    assert tree.links["upper"].parent == "mount" and tree.links["upper"].joint == "hinge"
    assert tree.links["upper"].children == ("camera", "slider")
    assert tree.links["base"].parent is None and tree.links["base"].joint is None
    assert [(j.name, j.type) for j in tree.movable_joints] == [
        ("hinge", "revolute"), ("slide", "prismatic"), ("spin", "continuous")]
    assert tree.joints["hinge"].limits == (-1.5, 1.5) and tree.joints["spin"].limits is None
    np.testing.assert_array_equal(tree.joints["slide"].axis, [0.6, 0, 0.8])
    assert tree.leaves == ("tool", "camera")
    tool = tree.tips[0]
    assert tool.moving_joints == ("hinge", "slide", "spin") and tool.clean and tool.cut is None
    assert tree.tips[1].moving_joints == ("hinge",)
    assert tree.best_tip == "tool" and tree.moving_count("wrist") == 3
    # Text and path give the same tree; a str without "<" is a path.
    assert describe_urdf(small_text()).leaves == describe_urdf(str(SMALL)).leaves


def test_describe_flags_gripper_and_mimic_joints():
    text = small_text().replace('name="slide"', 'name="gripper_slide"').replace(
        '<axis xyz="0 0 -1"/>', '<axis xyz="0 0 -1"/><mimic joint="hinge" multiplier="2" offset="0.1"/>')
    tree = describe_urdf(text)
    assert tree.joints["gripper_slide"].gripper and not tree.joints["hinge"].gripper
    spin = tree.joints["spin"]
    assert (spin.mimic, spin.mimic_multiplier, spin.mimic_offset) == ("hinge", 2.0, 0.1)
    tool = tree.tips[0]
    assert tool.gripper_joints == ("gripper_slide",) and tool.mimic_joints == ("spin",)
    assert not tool.clean and tool.cut == "upper"
    assert tree.ranked_tips == ("camera",) and tree.best_tip == "camera"


@needs(PANDA)
def test_describe_panda():
    tree = describe_urdf(PANDA)
    assert tree.best_tip == "panda_hand_tcp"
    tips = {t.link: t for t in tree.tips}
    assert tips["panda_leftfinger"].gripper_joints == ("panda_finger_joint1",)
    assert tips["panda_rightfinger"].mimic_joints == ("panda_finger_joint2",)
    assert tips["panda_leftfinger"].cut == "panda_hand"


@pytest.mark.parametrize("change, message", [
    (('<link name="camera"/>', '<link name="camera"/><link name="stray"/>'), "2 roots: base, stray"),
    (('<link name="camera"/>', '<link name="camera"/><link name="camera"/>'), "'camera' is defined twice"),
    (('<parent link="base"/>', '<parent link="upper"/>'), "cycle through link 'mount'"),
    (('<child link="camera"/>', '<child link="slider"/>'), "child of two joints"),
    (('type="fixed"', 'type="bogus"'), "'bogus'; URDF joint types"),
    (('<joint name="hinge"', '<joint'), "has no name"),
])
def test_tree_errors(change, message):
    text = small_text().replace(*change)
    assert text != small_text()
    with pytest.raises(IKMDNError, match=message):
        describe_urdf(text)


# -- tips and bases -------------------------------------------------------------------------------
def test_tip_is_required_and_unknown_links_list_the_leaves():
    with pytest.raises(IKMDNError, match=r"^give a tip link; leaf links: tool, camera$"):
        load_urdf(SMALL)
    with pytest.raises(IKMDNError, match=r"no link 'nope' \(for the tip\); it has 7 links, root "
                                         r"'base', leaf links: tool, camera"):
        load_urdf(SMALL, "nope")
    with pytest.raises(IKMDNError, match=r"no link 'nope' \(for the base\).*leaf links: tool, camera"):
        parse_urdf(small_text(), "tool", base_link="nope")


def test_frames_and_names_are_recorded():
    arm = load_urdf(SMALL, "tool")
    assert (arm.base_frame, arm.tip_frame, arm.joint_names) == ("base", "tool", ("hinge", "slide", "spin"))
    assert arm.locked == {} and np.array_equal(arm.tool, np.eye(4))
    assert load_urdf(UR5, "tool0").base_frame == "world"
    assert load_urdf(SMALL, "tool", base_link="mount").base_frame == "mount"


def test_ur5_base_off_the_chain_is_base_link_turned_by_pi():
    from_base_link = load_urdf(UR5, "tool0", base_link="base_link")
    from_base = load_urdf(UR5, "tool0", base_link="base")
    assert from_base.base_frame == "base" and from_base.joint_names == from_base_link.joint_names
    q = sample(from_base_link, 100, seed=1)
    expected = np.linalg.inv(rz(math.pi)) @ from_base_link.poses(q)
    np.testing.assert_allclose(from_base.poses(q), expected, rtol=0, atol=1e-12)


@needs(UR5_ROS)
def test_ur5_ros_base_off_the_chain():
    from_base = load_urdf(UR5_ROS, "tool0", base_link="base")
    from_base_link = load_urdf(UR5_ROS, "tool0", base_link="base_link")
    q = sample(from_base, 50, seed=2)
    np.testing.assert_allclose(from_base.poses(q), np.linalg.inv(rz(math.pi)) @ from_base_link.poses(q),
                               rtol=0, atol=1e-12)


def test_base_beside_the_chain_in_the_middle_of_the_tree():
    """camera hangs off upper by a fixed joint: a base for the chain upper -> tool."""
    from_camera = load_urdf(SMALL, "tool", base_link="camera")
    from_upper = load_urdf(SMALL, "tool", base_link="upper")
    assert from_camera.joint_names == ("slide", "spin") and from_camera.base_frame == "camera"
    q = sample(from_upper, 30, seed=3)
    camera = origin_transform([0, 0.1, 0], [0, 0, 0])
    np.testing.assert_allclose(from_camera.poses(q), np.linalg.inv(camera) @ from_upper.poses(q),
                               rtol=0, atol=1e-12)


def test_base_that_moves_relative_to_the_tip_is_refused():
    with pytest.raises(IKMDNError, match="base link 'tool' moves relative to tip 'camera' through "
                                         "joint 'spin'"):
        load_urdf(SMALL, "camera", base_link="tool")
    with pytest.raises(IKMDNError, match="no moving joint"):
        load_urdf(SMALL, "wrist", base_link="tool")


def test_locked_joints_on_the_base_side_make_a_fixed_mount():
    """A branch arm2 off upper; base tool with slide and spin locked: the mount is inverted."""
    text = small_text().replace("</robot>", """
  <link name="arm2"/>
  <joint name="elbow2" type="revolute">
    <parent link="upper"/><child link="arm2"/>
    <origin xyz="0.1 0.2 0.3" rpy="0.3 0.2 0.1"/><axis xyz="1 0 0"/>
    <limit lower="-1" upper="1"/>
  </joint>
</robot>""")
    lock = {"slide": 0.05, "spin": 2.5}
    arm = parse_urdf(text, "arm2", base_link="tool", lock=lock)
    assert arm.joint_names == ("elbow2",) and arm.locked == lock and arm.base_frame == "tool"
    to_tool, to_arm2 = parse_urdf(text, "tool"), parse_urdf(text, "arm2")
    hinge, elbow = 0.4, np.linspace(-1, 1, 9)
    q_tool = np.tile([hinge, lock["slide"], lock["spin"]], (len(elbow), 1))
    q_arm2 = np.stack([np.full_like(elbow, hinge), elbow], axis=1)
    expected = np.linalg.inv(to_tool.poses(q_tool)) @ to_arm2.poses(q_arm2)
    # The hinge is above the common ancestor: it moves both links alike and drops out.
    np.testing.assert_allclose(arm.poses(elbow[:, None]), expected, rtol=0, atol=1e-12)


# -- lock -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("joint, value", [("hinge", -0.7), ("slide", 0.13), ("spin", 5.0)])
def test_lock_equals_the_full_arm_at_that_value(joint, value):
    full = load_urdf(SMALL, "tool")
    arm = load_urdf(SMALL, "tool", lock={joint: value})
    j = full.joint_names.index(joint)
    assert arm.joint_names == tuple(n for n in full.joint_names if n != joint)
    assert arm.locked == {joint: value} and arm.dof == 2
    q = sample(arm, 40, seed=4)
    np.testing.assert_allclose(arm.poses(q), full.poses(np.insert(q, j, value, axis=1)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("tip, lock, message", [
    ("tool", {"nope": 0.1}, "cannot lock 'nope': .* has no such joint; movable joints on the chain "
                            "from 'base' to 'tool': hinge, slide, spin"),
    ("tool", {"tool_joint": 0.1}, "cannot lock 'tool_joint': it is a fixed joint; movable joints"),
    ("camera", {"slide": 0.1}, "cannot lock 'slide': it is not on the chain; movable joints on the "
                               "chain from 'base' to 'camera': hinge$"),
    ("tool", {"slide": 0.5}, r"cannot lock 'slide' at 0.5: outside its limits \[0, 0.2\] m"),
    ("tool", {"hinge": -2.0}, r"outside its limits \[-1.5, 1.5\] rad"),
    ("tool", {"spin": math.nan}, "at nan: expected a finite number"),
    ("tool", {"hinge": "x"}, "expected a number"),
])
def test_lock_errors(tip, lock, message):
    with pytest.raises(IKMDNError, match=message):
        load_urdf(SMALL, tip, lock=lock)


def test_lock_everything_leaves_no_moving_joint():
    with pytest.raises(IKMDNError, match="no moving joint"):
        load_urdf(SMALL, "camera", lock={"hinge": 0.0})


# -- gripper and mimic joints ---------------------------------------------------------------------
def test_gripper_joint_on_the_chain_needs_a_lock_or_another_tip():
    text = small_text().replace('name="slide"', 'name="gripper_slide"')
    with pytest.raises(IKMDNError, match=r"^chain to 'tool' crosses gripper joint 'gripper_slide' "
                                         r"\(prismatic\); lock it with --lock gripper_slide=VALUE "
                                         r"\(VALUE in \[0, 0.2\] m\) or choose another tip such as "
                                         r"upper, camera$"):
        parse_urdf(text, "tool")
    full = parse_urdf(text.replace('name="gripper_slide"', 'name="slide"'), "tool")
    locked = parse_urdf(text, "tool", lock={"gripper_slide": 0.1})
    q = sample(locked, 10, seed=5)
    np.testing.assert_allclose(locked.poses(q), full.poses(np.insert(q, 1, 0.1, axis=1)), atol=1e-12)
    # A child link named like a finger marks the joint too; a revolute "finger" joint does not.
    by_child = small_text().replace('"slider"', '"left_finger"')
    with pytest.raises(IKMDNError, match="gripper joint 'slide'"):
        parse_urdf(by_child, "tool")
    assert parse_urdf(small_text().replace('name="hinge"', 'name="finger_hinge"'), "tool").dof == 3


def test_mimic_joint_on_the_chain_needs_a_lock_or_another_tip():
    text = small_text().replace('<axis xyz="0 0 -1"/>', '<axis xyz="0 0 -1"/><mimic joint="hinge"/>')
    with pytest.raises(IKMDNError, match=r"^chain to 'tool' crosses mimic joint 'spin' \(it mimics "
                                         r"'hinge'\); lock it with --lock spin=VALUE .* choose another "
                                         r"tip such as slider, camera$"):
        parse_urdf(text, "tool")
    assert parse_urdf(text, "tool", lock={"spin": 0.3}).joint_names == ("hinge", "slide")
    assert parse_urdf(text, "slider").dof == 2


@needs(PANDA)
def test_panda_fingers():
    with pytest.raises(IKMDNError, match="crosses gripper joint 'panda_finger_joint1' .* --lock "
                                         "panda_finger_joint1=VALUE .* such as panda_hand, panda_hand_tcp"):
        load_urdf(PANDA, "panda_leftfinger")
    with pytest.raises(IKMDNError, match="gripper joint 'panda_finger_joint2'"):
        load_urdf(PANDA, "panda_rightfinger")
    arm = load_urdf(PANDA, "panda_rightfinger", lock={"panda_finger_joint2": 0.04})
    assert arm.dof == 7 and arm.locked == {"panda_finger_joint2": 0.04}


# -- tool -----------------------------------------------------------------------------------------
def test_tool_transform():
    np.testing.assert_array_equal(tool_transform([0, 0, 0, 1, 0, 0, 0]), np.eye(4))
    s = math.sqrt(0.5)
    t = tool_transform(f"0.1, 0.2 0.3 {s} 0 0 {s}")
    expected = rz(math.pi / 2)
    expected[:3, 3] = [0.1, 0.2, 0.3]
    np.testing.assert_allclose(t, expected, atol=1e-15)
    np.testing.assert_allclose(tool_transform([0, 0, 0, 1 + 5e-7, 0, 0, 0]), np.eye(4), atol=1e-15)


@pytest.mark.parametrize("values, message", [
    ([0, 0, 0, 1, 0, 0], "7 numbers x y z qw qx qy qz, got 6"),
    ([0, 0, 0, 1.1, 0, 0, 0], r"unit quaternion \(w, x, y, z\), got \[1.1, 0.0, 0.0, 0.0\] with norm 1.1$"),
    ([0, 0, 0, 0, 0, 0, 0], "unit quaternion .* norm 0$"),
    ([0, math.inf, 0, 1, 0, 0, 0], "must be finite"),
    ([0, 0, 0, math.nan, 0, 0, 0], "must be finite"),
    ("1 2 x", "7 numbers"),
])
def test_tool_transform_errors(values, message):
    with pytest.raises(IKMDNError, match=message):
        tool_transform(values)


def test_tool_equals_the_plain_poses_times_the_tool():
    quat = np.array([0.9, 0.1, -0.3, 0.2]) / np.linalg.norm([0.9, 0.1, -0.3, 0.2])
    tool = tool_transform([0.01, -0.02, 0.15, *quat])
    plain = load_urdf(SMALL, "tool")
    arm = load_urdf(SMALL, "tool", tool=tool)
    np.testing.assert_array_equal(arm.tool, tool)
    q = sample(arm, 30, seed=6)
    np.testing.assert_allclose(arm.poses(q), plain.poses(q) @ tool, rtol=0, atol=1e-12)
    with pytest.raises(IKMDNError, match="rigid transform"):
        load_urdf(SMALL, "tool", tool=np.diag([2.0, 1, 1, 1]))


def test_spec_round_trip_keeps_frames_tool_and_locks():
    tool = tool_transform([0, 0, 0.1, math.sqrt(0.5), math.sqrt(0.5), 0, 0])
    arm = load_urdf(SMALL, "tool", base_link="camera", lock={"spin": 1.0}, tool=tool, name="cam")
    again = arm_from_spec(arm.spec())
    assert (again.name, again.base_frame, again.tip_frame) == ("cam", "camera", "tool")
    assert again.joint_names == arm.joint_names == ("slide",) and again.locked == {"spin": 1.0}
    np.testing.assert_array_equal(again.tool, arm.tool)
    q = sample(arm, 20, seed=7)
    np.testing.assert_array_equal(again.poses(q), arm.poses(q))


# -- refused documents ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    XACRO,
    XACRO.replace("${length}", "0.3"),                                         # xacro:property
    XACRO.replace('<xacro:property name="length" value="0.3"/>', ""),          # ${...}
    XACRO.replace("${length}", "0.3").replace(' xmlns:xacro="http://www.ros.org/wiki/xacro"', "")
    .replace('<xacro:property name="length" value="0.3"/>', '<mesh filename="$(find arm)/a.stl"/>'),
    XACRO.replace(' xmlns:xacro="http://www.ros.org/wiki/xacro"', ""),        # unbound prefix
    '<robot name="arm"><xacro:include xmlns:xacro="urn:xacro" filename="arm.xacro"/></robot>',
    '<robot name="empty"/>',
])
def test_xacro_documents_are_refused(text):
    with pytest.raises(IKMDNError, match=r"expand it first, e.g. `xacro arm.urdf > robot.urdf` "
                                         r"\(pip install xacro\)$"):
        parse_urdf(text, "tip", source="arm.urdf")


def test_xacro_file_by_suffix_and_expanded_files_with_the_namespace(tmp_path):
    path = tmp_path / "arm.urdf.xacro"
    path.write_text(small_text())
    with pytest.raises(IKMDNError, match=f"^{path} is a xacro file: expand it first, e.g. "
                                         f"`xacro {path} > robot.urdf`"):
        load_urdf(path, "tool")
    # xacro's output keeps the namespace declaration: that alone is no reason to refuse.
    expanded = XACRO.replace("${length}", "0.3").replace('<xacro:property name="length" value="0.3"/>', "")
    assert "xmlns:xacro" in expanded and parse_urdf(expanded, "tip").dof == 1


def test_entity_declarations_are_refused():
    text = small_text().replace('<?xml version="1.0"?>', '<?xml version="1.0"?>\n<!DOCTYPE robot [\n'
                                '  <!ENTITY a "aaaaaaaaaa">\n  <!ENTITY b "&a;&a;&a;&a;&a;">\n]>')
    with pytest.raises(IKMDNError, match=r"^URDF with <!ENTITY> declarations is not supported$"):
        parse_urdf(text, "tool")


def test_unreadable_files(tmp_path):
    with pytest.raises(IKMDNError, match="cannot read URDF file .*missing.urdf"):
        describe_urdf(tmp_path / "missing.urdf")
    binary = tmp_path / "robot.urdf"
    binary.write_bytes(b"\xff\xfe\x00robot")
    with pytest.raises(IKMDNError, match="not UTF-8 text"):
        load_urdf(binary, "tool")


# -- ikmdn urdf -----------------------------------------------------------------------------------
def test_cli_urdf_small_chain():
    result = invoke("urdf", SMALL)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("robot small_chain: 7 links, 3 movable joints, root link base\n")
    assert ("  base\n    mount  (fixed mount_joint)\n      upper  (revolute hinge)\n"
            "        camera  (fixed camera_joint)\n        slider  (prismatic slide)\n"
            "          wrist  (continuous spin)\n            tool  (fixed tool_joint)\n") in out
    assert "  hinge  revolute    [-1.5, 1.5] rad\n" in out
    assert "  slide  prismatic   [0, 0.2] m\n" in out
    assert "  spin   continuous  unlimited" in out
    assert "  tool    3 moving joints\n  camera  1 moving joint\n" in out
    assert out.endswith(f"train on the best tip (tool: 3 moving joints):\n"
                        f"  ikmdn train --urdf {SMALL} --tip tool --out runs/small_chain\n")


def test_cli_urdf_flags_gripper_and_mimic(tmp_path):
    path = tmp_path / "g.urdf"
    path.write_text(small_text().replace('name="slide"', 'name="gripper_slide"').replace(
        '<axis xyz="0 0 -1"/>', '<axis xyz="0 0 -1"/><mimic joint="hinge" multiplier="-1"/>'))
    result = invoke("urdf", path)
    assert result.exit_code == 0, result.output
    assert "gripper_slide  prismatic   [0, 0.2] m  gripper\n" in result.stdout
    assert "mimics hinge (x-1, +0)" in result.stdout
    assert "tool    3 moving joints  crosses gripper joint gripper_slide, mimic joint spin\n" in result.stdout
    assert result.stdout.endswith("--tip camera --out runs/small_chain\n")


@pytest.mark.parametrize("path, tip, flagged", [
    (PANDA, "panda_hand_tcp",
     "panda_leftfinger   8 moving joints  crosses gripper joint panda_finger_joint1"),
    (IIWA, "iiwa_link_ee", "iiwa_link_ee       7 moving joints"),
    (UR5_ROS, "tool0", "base   0 moving joints"),
])
def test_cli_urdf_real_robots(path, tip, flagged):
    if not path.is_file():
        pytest.skip(f"{path.name} not vendored")
    result = invoke("urdf", path)
    assert result.exit_code == 0, result.output
    assert flagged in result.stdout
    name = describe_urdf(path).name
    assert result.stdout.splitlines()[-1] == f"  ikmdn train --urdf {path} --tip {tip} --out runs/{name}"
    assert load_urdf(path, tip).dof == describe_urdf(path).moving_count(tip)


def test_cli_urdf_refuses_xacro_and_unreadable_files(tmp_path):
    path = tmp_path / "arm.urdf.xacro"
    path.write_text(XACRO)
    assert_one_line_error(invoke("urdf", path), f"{path} is a xacro file: expand it first",
                          f"`xacro {path} > robot.urdf` (pip install xacro)")
    plain_name = tmp_path / "arm.urdf"
    plain_name.write_text(XACRO)
    assert_one_line_error(invoke("urdf", plain_name), "is a xacro file")
    assert_one_line_error(invoke("urdf", tmp_path / "missing.urdf"), "cannot read URDF file")
    assert_one_line_error(invoke("urdf", tmp_path), "cannot read URDF file")
    broken = tmp_path / "broken.urdf"
    broken.write_text("<robot><link name='a'>")
    assert_one_line_error(invoke("urdf", broken), "not a valid URDF")


def test_cli_urdf_help_has_an_example():
    result = invoke("urdf", "--help")
    assert result.exit_code == 0 and "Example: ikmdn urdf" in result.stdout
