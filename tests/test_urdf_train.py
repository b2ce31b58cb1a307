"""Training on URDF arms: defaults from the arm's properties, runs and models that need no URDF file
afterwards, `ikmdn train --urdf` and its usage errors, multi-turn joints, the iiwa14 preset."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_ok, assert_usage_error, invoke
from hypothesis import given, settings
from hypothesis import strategies as st
from urdf_oracle import Urdf

from ikmdn.arms import get_arm, list_arms, load_urdf
from ikmdn.arms.base import register_preset
from ikmdn.errors import IKMDNError
from ikmdn.train import TrainConfig, default_config, load_checkpoint, train_run

DATA = Path(__file__).resolve().parent / "data"
PANDA = DATA / "panda.urdf"
IIWA = DATA / "iiwa14.urdf"
UR5 = DATA / "ur5_ros.urdf"
UR5_JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint",
              "wrist_2_joint", "wrist_3_joint"]
TINY_CLI = ("--samples", "2000", "--epochs", "1", "--hidden", "16", "--components", "2",
            "--threads", "1")
TWO_PI = 2 * math.pi


def _sample(limits: np.ndarray, seed: int, n: int = 40) -> np.ndarray:
    limits = np.asarray(limits, dtype=np.float64)
    return np.random.default_rng(seed).uniform(limits[:, 0], limits[:, 1], size=(n, len(limits)))


def _ur5_ros():
    return load_urdf(UR5, "tool0", base_link="base")


def _without_arm(config: TrainConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if k != "arm"}


# -- 1. defaults from the arm's properties, never its name --------------------------------------
def test_ur5_preset_and_ur5_urdf_train_alike():
    preset, urdf = default_config("ur5"), default_config(_ur5_ros())
    assert _without_arm(preset) == _without_arm(urdf)
    assert preset.arm == "ur5" and isinstance(urdf.arm, dict)
    assert urdf.components == 16 and urdf.kind == "autoregressive"  # a 6-D pose arm, 6 joints


@pytest.mark.parametrize("arm", [
    pytest.param(lambda: load_urdf(IIWA, "iiwa_link_ee_kuka"), id="iiwa14-urdf"),
    pytest.param(lambda: load_urdf(PANDA, "panda_hand_tcp"), id="panda-urdf-tcp"),
    pytest.param(lambda: get_arm("iiwa14"), id="iiwa14-preset"),
    pytest.param(lambda: "iiwa14", id="iiwa14-name"),
])
def test_seven_joint_arms_train_like_the_panda_preset(arm):
    built = arm()
    assert (get_arm(built) if isinstance(built, str) else built).dof == 7
    assert _without_arm(default_config(built)) == _without_arm(default_config("panda"))


@pytest.mark.parametrize("name, components", [("bishop", 2), ("planar2", 8), ("planar3", 8),
                                              ("rrr3", 8)])
def test_small_arms_keep_their_components(name, components):
    assert default_config(name).components == components
    # The same arm given as an object (its spec) gets the same settings as its name.
    assert _without_arm(default_config(get_arm(name))) == _without_arm(default_config(name))


def test_overrides_win_and_none_is_ignored():
    config = default_config(_ur5_ros(), samples=2000, components=None, hidden=(16,))
    assert config.samples == 2000 and config.hidden == (16,)
    assert config.components == default_config("ur5").components


def _locked_ur5_with_tool():
    tool = np.eye(4)
    tool[:3, 3] = [0.0, 0.0, 0.1]
    return load_urdf(UR5, "tool0", base_link="base", lock={"wrist_3_joint": 0.3}, tool=tool,
                     name="ur5_locked")


def test_train_config_keeps_an_arm_as_its_spec():
    arm = _locked_ur5_with_tool()
    config = TrainConfig(arm=arm, samples=2000, epochs=1, hidden=(16,), components=2)
    assert isinstance(config.arm, dict)
    assert config.arm == arm.spec()
    assert config.arm_name == "ur5_locked"
    q = _sample(arm.joint_limits, seed=3)
    np.testing.assert_array_equal(config.build_arm().poses(q), arm.poses(q))
    # to_dict/from_dict, also through JSON (config.json, the checkpoint's train_config).
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config
    via_json = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert via_json == config
    np.testing.assert_array_equal(via_json.build_arm().poses(q), arm.poses(q))
    assert via_json.build_arm().locked == {"wrist_3_joint": 0.3}


def test_train_config_unknown_preset_lists_the_presets():
    with pytest.raises(IKMDNError, match="unknown arm 'nope'") as info:
        TrainConfig(arm="nope")
    for name in list_arms():
        assert name in str(info.value)


def test_a_preset_is_never_replaced():
    before = get_arm("ur5").spec()
    with pytest.raises(IKMDNError, match="'ur5' exists already"):
        register_preset("ur5", _ur5_ros)
    assert get_arm("ur5").spec() == before
    assert "ur5_robot" not in list_arms()


# -- 2. end to end: a URDF arm, then no URDF file ------------------------------------------------
@pytest.fixture(scope="module")
def ur5_run(tmp_path_factory):
    """(folder, run folder, model) of `ikmdn train --urdf COPY --base base --tip tool0`, the copy
    of the URDF deleted afterwards."""
    folder = tmp_path_factory.mktemp("ur5-urdf")
    copy = folder / "robot.urdf"
    shutil.copy(UR5, copy)
    run, model = folder / "R", folder / "M.onnx"
    result = assert_ok(invoke("train", "--urdf", copy, "--base", "base", "--tip", "tool0",
                              "--out", run, "--export", model, *TINY_CLI))
    assert f"wrote {run}/model.pt" in result.stdout
    assert f"wrote {model}" in result.stdout
    copy.unlink()
    assert not any(p.suffix == ".urdf" for p in folder.rglob("*"))
    return folder, run, model


def test_info_states_frames_and_joint_names(ur5_run):
    _, run, model = ur5_run
    info = json.loads(assert_ok(invoke("info", model)).stdout)
    assert info["frames"] == "base -> tool0"
    assert info["joint_names"] == UR5_JOINTS == Urdf(UR5).moving("tool0")
    assert info["arm"]["name"] == "ur5_robot"
    assert info["arm"]["base_frame"] == "base" and info["arm"]["tip_frame"] == "tool0"
    assert info["train"]["arm"] == info["arm"]
    assert info["components"] == 2


def test_run_config_holds_the_whole_arm(ur5_run):
    _, run, _ = ur5_run
    saved = json.loads((run / "config.json").read_text())
    assert isinstance(saved["arm"], dict) and saved["arm"]["joint_names"] == UR5_JOINTS
    arm = load_checkpoint(run).arm
    q = _sample(arm.joint_limits, seed=21)
    np.testing.assert_allclose(arm.poses(q), Urdf(UR5).poses("tool0", UR5_JOINTS, q, base="base"),
                               rtol=0, atol=1e-12)


def test_export_from_the_run_needs_no_urdf(ur5_run):
    folder, run, model = ur5_run
    again = folder / "M2.onnx"
    assert_ok(invoke("export", run, "-o", again))
    first = json.loads(assert_ok(invoke("info", model)).stdout)
    second = json.loads(assert_ok(invoke("info", again)).stdout)
    assert second["arm"] == first["arm"] and second["frames"] == "base -> tool0"


def test_solve_a_pose_with_the_model(ur5_run):
    _, _, model = ur5_run
    data = json.loads(assert_ok(invoke("solve", "--model", model, "--pose", "0.3", "0.2", "0.4",
                                       "0", "1", "0", "0", "--format", "json")).stdout)
    assert data["joint_names"] == UR5_JOINTS
    (solution,) = data["solutions"]
    assert solution["candidates"]
    arm = _ur5_ros()
    for c in solution["candidates"]:
        joints = np.array([c["joints"]])
        assert joints.shape == (1, 6)
        # A multi-turn joint is never reported outside its real limits (+-2 pi).
        assert np.all(np.abs(joints[0, arm.multi_turn_joints]) <= TWO_PI + 1e-9)
        assert c["within_limits"] == bool(arm.within_limits(joints)[0])


def test_resume_a_finished_run_needs_no_urdf(ur5_run, tmp_path):
    _, run, _ = ur5_run
    copy = tmp_path / "R"
    shutil.copytree(run, copy)
    before = load_checkpoint(copy)
    result = assert_ok(invoke("train", "--out", copy, "--resume", "--threads", "1"))
    assert f"wrote {copy}/model.pt" in result.stdout
    after = load_checkpoint(copy)
    assert after.arm.spec() == before.arm.spec()
    assert after.config == before.config
    assert after.metrics["epoch"] == before.metrics["epoch"] == 1
    # Nothing was left to train: the weights are those of the finished run.
    for key, value in before.model.state_dict().items():
        assert torch.equal(value, after.model.state_dict()[key]), key


def test_interrupted_urdf_run_resumes_bit_for_bit_without_the_file(tmp_path):
    """A run on a URDF arm cut in epoch 2 of 2 continues with `ikmdn train --resume` from its
    own spec (the URDF copy is gone) to the same weights as an uninterrupted run."""
    copy = tmp_path / "robot.urdf"
    shutil.copy(UR5, copy)
    config = TrainConfig(arm=load_urdf(copy, "tool0", base_link="base"), samples=2000, epochs=2,
                         hidden=(16,), components=2)
    copy.unlink()
    full = train_run(config, tmp_path / "full", threads=1)

    class Stop(Exception):
        pass

    def stop(record):  # in epoch 2, after last.pt of epoch 1 is written
        if record.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train_run(config, tmp_path / "cut", on_epoch=stop, threads=1)
    assert_ok(invoke("train", "--out", tmp_path / "cut", "--resume", "--threads", "1"))
    resumed = load_checkpoint(tmp_path / "cut")
    assert resumed.arm.spec() == full.arm.spec() == config.arm
    assert len((tmp_path / "cut" / "history.csv").read_text().splitlines()) == 1 + 2
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_train_locked_joint_tool_and_name(tmp_path):
    copy = tmp_path / "robot.urdf"
    shutil.copy(UR5, copy)
    run = tmp_path / "R"
    assert_ok(invoke("train", "--urdf", copy, "--tip", "tool0", "--lock", "elbow_joint=0.5",
                     "--tool", "0", "0", "0.1", "1", "0", "0", "0", "--name", "myur",
                     "--out", run, *TINY_CLI))
    copy.unlink()
    arm = load_checkpoint(run).arm
    spec = arm.spec()
    assert arm.dof == 5 and spec["dof"] == 5
    assert spec["locked"] == {"elbow_joint": 0.5}
    assert spec["name"] == "myur"
    assert list(arm.joint_names) == [j for j in UR5_JOINTS if j != "elbow_joint"]
    assert arm.frames() == "base_link -> tool0"
    tool = np.eye(4)
    tool[2, 3] = 0.1
    q = _sample(arm.joint_limits, seed=7)
    expected = Urdf(UR5).poses("tool0", list(arm.joint_names), q, extra={"elbow_joint": 0.5}) @ tool
    np.testing.assert_allclose(arm.poses(q), expected, rtol=0, atol=1e-12)


# -- 3. bad input for train: exit 2, one line, nothing written -----------------------------------
XACRO = """<?xml version="1.0"?>
<robot name="r" xmlns:xacro="http://www.ros.org/wiki/xacro">
  <xacro:property name="l" value="0.5"/>
  <link name="a"/><link name="b"/>
  <joint name="j" type="revolute"><parent link="a"/><child link="b"/>
    <origin xyz="0 0 ${l}"/><axis xyz="0 0 1"/><limit lower="-1" upper="1"/></joint>
</robot>
"""

BAD_TRAIN = {
    "unknown-tip": (["--urdf", "{urdf}", "--tip", "hand9"], ["'hand9'", "tool0"]),
    "base-below-moving-joint": (["--urdf", "{urdf}", "--base", "tool0", "--tip", "upper_arm_link"],
                                ["'tool0'", "moves"]),
    "tool-not-unit": (["--urdf", "{urdf}", "--tip", "tool0", "--tool", "0", "0", "0", "2", "0", "0",
                       "0"], ["unit quaternion"]),
    "tool-six-numbers": (["--urdf", "{urdf}", "--tip", "tool0", "--tool", "0", "0", "0", "1", "0",
                          "0"], ["--tool", "7"]),
    "lock-unknown-joint": (["--urdf", "{urdf}", "--tip", "tool0", "--lock", "knee=0.1"],
                           ["'knee'", "elbow_joint"]),
    "lock-without-equals": (["--urdf", "{urdf}", "--tip", "tool0", "--lock", "elbow_joint"],
                            ["--lock", "JOINT=VALUE"]),
    "xacro": (["--urdf", "{xacro}", "--tip", "b"], ["xacro", "expand"]),
    "urdf-and-arm": (["--urdf", "{urdf}", "--tip", "tool0", "--arm", "ur5"], ["--arm", "--urdf"]),
    "tip-without-urdf": (["--tip", "tool0"], ["--tip", "--urdf"]),
    "urdf-without-tip": (["--urdf", "{urdf}"], ["tip", "tool0", "base"]),
    "resume-with-urdf": (["--urdf", "{urdf}", "--tip", "tool0", "--resume"], ["--resume", "--urdf"]),
    "missing-urdf": (["--urdf", "{missing}", "--tip", "tool0"], ["cannot read URDF file", "gone.urdf"]),
}


@pytest.mark.parametrize("name", list(BAD_TRAIN))
def test_train_bad_input(name, tmp_path):
    args, fragments = BAD_TRAIN[name]
    urdf = tmp_path / "robot.urdf"
    shutil.copy(UR5, urdf)
    xacro = tmp_path / "robot.urdf.xacro"
    xacro.write_text(XACRO)
    paths = {"urdf": urdf, "xacro": xacro, "missing": tmp_path / "gone.urdf"}
    args = [a.format(**paths) for a in args]
    out, export = tmp_path / "R", tmp_path / "M.onnx"
    # Options before the arguments under test, so a short --tool is the last thing on the line;
    # --resume refuses training settings, so it goes without them.
    tiny = () if "--resume" in args else TINY_CLI
    result = invoke("train", "--out", out, "--export", export, *tiny, *args)
    assert_usage_error(result, *fragments)
    assert not out.exists()
    assert not export.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["robot.urdf", "robot.urdf.xacro"]


# -- 4. multi-turn joints ----------------------------------------------------------------------
def test_ur5_ros_multi_turn_joints():
    arm = _ur5_ros()
    elbow = UR5_JOINTS.index("elbow_joint")
    expected = [j != elbow for j in range(6)]
    assert arm.multi_turn_joints.tolist() == expected
    assert arm.continuous_joints.tolist() == [True] * 6
    np.testing.assert_allclose(arm.home, 0.0, atol=1e-15)


def _nearest_in_limit_turn(value: float, lo: float, hi: float, ref: float) -> float:
    """Brute force: the turn value + 2 pi k within [lo, hi] nearest ref."""
    turns = [value + TWO_PI * k for k in range(-8, 9)]
    inside = [t for t in turns if lo - 1e-9 <= t <= hi + 1e-9]
    return min(inside, key=lambda t: abs(t - ref))


ANGLES = st.floats(-20.0, 20.0, allow_nan=False)
UR5_ROS = _ur5_ros()


def _assert_same_angle(a, b):
    np.testing.assert_allclose(np.cos(a), np.cos(b), atol=1e-9)
    np.testing.assert_allclose(np.sin(a), np.sin(b), atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(ANGLES, min_size=6, max_size=6))
def test_wrap_joints_nearest_home(values):
    arm, q = UR5_ROS, np.array(values)
    got = arm.wrap_joints(q)
    _assert_same_angle(got, q)
    assert bool(arm.within_limits(got[None])[0])
    assert np.all(np.abs(got) <= math.pi + 1e-9)   # home is 0: the turn within half a turn of it
    lo, hi = arm.joint_limits.T
    for j in range(6):
        best = _nearest_in_limit_turn(q[j], lo[j], hi[j], 0.0)
        assert abs(got[j]) <= abs(best) + 1e-9, (j, got[j], best)


@settings(max_examples=60, deadline=None)
@given(st.lists(ANGLES, min_size=6, max_size=6), st.integers(0, 5),
       st.floats(-TWO_PI, TWO_PI, allow_nan=False))
def test_wrap_joints_nearest_reference(values, joint, ref_value):
    arm, q = UR5_ROS, np.array(values)
    reference = np.zeros(6)
    reference[joint] = ref_value
    got = arm.wrap_joints(q, reference=reference)
    _assert_same_angle(got, q)
    assert bool(arm.within_limits(got[None])[0])
    lo, hi = arm.joint_limits.T
    for j in range(6):
        best = _nearest_in_limit_turn(q[j], lo[j], hi[j], reference[j])
        assert abs(got[j] - reference[j]) <= abs(best - reference[j]) + 1e-9, (j, got[j], best)


def test_wrap_joints_reference_five():
    arm = UR5_ROS
    reference = np.array([5.0, 0, 0, 0, 0, 0])
    # Within half a turn of 5.0 where that is inside the limits ...
    got = arm.wrap_joints(np.full(6, -0.5 + TWO_PI * 2), reference=reference)
    np.testing.assert_allclose(got[0], -0.5 + TWO_PI, atol=1e-12)
    assert abs(got[0] - 5.0) <= math.pi
    np.testing.assert_allclose(got[1:], -0.5, atol=1e-12)   # the others nearest their reference 0
    # ... else shifted back into [-2 pi, 2 pi]: 1 + 2 pi is nearest 5.0 but beyond the limit.
    got = arm.wrap_joints(np.array([1.0 - TWO_PI * 3, 0, 0, 0, 0, 0]), reference=reference)
    np.testing.assert_allclose(got[0], 1.0, atol=1e-12)
    # A reference shaped like q, for a batch, on the component-major layout too.
    q = np.full((3, 6), 0.5)
    ref = np.full((3, 6), -5.0)
    got = arm.wrap_joints(q, reference=ref)
    expected = np.full(6, 0.5 - TWO_PI)
    expected[UR5_JOINTS.index("elbow_joint")] = 0.5   # one turn: no other value
    np.testing.assert_allclose(got, np.broadcast_to(expected, (3, 6)), atol=1e-12)
    np.testing.assert_allclose(arm.wrap_joints(q.T, axis=0, reference=ref.T), got.T, atol=1e-12)


@pytest.mark.parametrize("joint, value, reference", [
    ("shoulder_pan_joint", 0.217, 10.0),     # nearest 10: 0.217 + 4 pi, two turns above the limit
    ("shoulder_pan_joint", -0.217, -10.0),
    ("wrist_1_joint", 1.0, 20.0),
    ("elbow_joint", 3.5, 7.0),                # one turn (+-pi): the value inside [-pi, pi]
])
def test_wrap_joints_reference_outside_the_limits(joint, value, reference):
    """A reference beyond the limits (a joint state from elsewhere, a user's `near`) still gives
    the in-limit turn nearest it: never a value outside the real limits."""
    arm = UR5_ROS
    j = UR5_JOINTS.index(joint)
    q, ref = np.zeros(6), np.zeros(6)
    q[j], ref[j] = value, reference
    got = arm.wrap_joints(q, reference=ref)
    lo, hi = arm.joint_limits[j]
    assert lo - 1e-9 <= got[j] <= hi + 1e-9, (joint, got[j])
    np.testing.assert_allclose(got[j], _nearest_in_limit_turn(value, lo, hi, reference), atol=1e-9)
    assert bool(arm.within_limits(got[None])[0])


def test_joint_turns_lists_every_in_limit_turn():
    arm = UR5_ROS
    q = np.full(6, 0.5)
    turns = arm.joint_turns(q)
    assert turns.shape == (32, 6)
    assert len({tuple(np.round(row, 9)) for row in turns}) == 32
    assert np.all(arm.within_limits(turns))
    elbow = UR5_JOINTS.index("elbow_joint")
    np.testing.assert_allclose(turns[:, elbow], 0.5)
    _assert_same_angle(turns, np.broadcast_to(q, turns.shape))
    np.testing.assert_allclose(arm.poses(turns), np.broadcast_to(arm.poses(q[None]), (32, 4, 4)),
                               rtol=0, atol=1e-12)


def test_within_limits_multi_turn_and_one_turn():
    arm = UR5_ROS
    q = np.zeros(6)
    q[0] = 7.0   # beyond +2 pi: a multi-turn joint is held to its real limit
    assert not arm.within_limits(q[None])[0]
    q[0] = 6.0
    assert arm.within_limits(q[None])[0]
    planar2 = get_arm("planar2")   # +-pi: one turn, no real limit
    assert planar2.within_limits(np.array([[3.5, -3.5]]))[0]


# -- 5. the iiwa14 preset and `ikmdn arms` ------------------------------------------------------
def test_iiwa14_preset_is_the_drake_urdf():
    preset = get_arm("iiwa14")
    urdf = load_urdf(IIWA, "iiwa_link_ee_kuka", base_link="iiwa_link_0")
    assert (preset.base_frame, preset.tip_frame) == ("iiwa_link_0", "iiwa_link_ee_kuka")
    assert preset.frames() == urdf.frames() == "iiwa_link_0 -> iiwa_link_ee_kuka"
    assert list(preset.joint_names) == list(urdf.joint_names)
    np.testing.assert_allclose(preset.joint_limits, urdf.joint_limits, rtol=0, atol=1e-9)
    q = _sample(preset.joint_limits, seed=14)
    np.testing.assert_allclose(preset.poses(q), urdf.poses(q), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        preset.poses(q), Urdf(IIWA).poses("iiwa_link_ee_kuka", list(urdf.joint_names), q,
                                          base="iiwa_link_0"), rtol=0, atol=1e-12)


def test_arms_lists_every_preset_with_its_frames():
    lines = assert_ok(invoke("arms")).stdout.splitlines()
    assert [line.split()[0] for line in lines] == list_arms()
    for name, line in zip(list_arms(), lines, strict=True):
        assert f"frames {get_arm(name).frames()}" in line, line
    by_name = {line.split()[0]: line for line in lines}
    assert "panda_link0 -> panda_link8" in by_name["panda"]
    assert "base -> tool0" in by_name["ur5"]
    assert "iiwa_link_0 -> iiwa_link_ee_kuka" in by_name["iiwa14"]
