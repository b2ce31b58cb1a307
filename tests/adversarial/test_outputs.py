"""Adversarial tests of `ikmdn solve`'s inputs and outputs (issue 11), organised by class.

Class 2: nothing partial, ever (rows checked before output, no NaN, whole batches, the .npz
through one temporary removed on failure, full disk and signals). Class 4: the CSV header rule.
Class 5: resource caps on target files. Class 6: a .npz renamed .npy. Class 7: file modes follow
the umask; check_output_file refuses what is not a file.

Models: the shipped bishop (the default model) and ur5 (a pose arm). Signals run in
subprocesses; a full disk is a 1 MB tmpfs where the test may mount one (root), else skipped.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import NPZ_ARRAYS, assert_refused, error_line, invoke

from ikmdn.solve import IKSolver

ROOT = Path(__file__).resolve().parents[2]
UR5 = ROOT / "exported_models" / "ur5.onnx"
POSE = ["0.3", "0.2", "0.4", "0", "1", "0", "0"]


def bare_constant(name: str):
    raise AssertionError(f"bare {name} in JSON output")


def only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def small_batches(monkeypatch):
    """Solvers loaded by the CLI use batches of 2 targets; returns the list of solve() calls,
    and fail(n, exc) makes the n-th call (1-based) raise exc instead."""
    real_load, real_solve = IKSolver.load.__func__, IKSolver.solve
    calls: list[int] = []
    failures: dict[int, BaseException] = {}

    def load(cls, path, threads=None, **kwargs):
        solver = real_load(cls, path, threads, **kwargs)
        solver.batch_size = 2
        return solver

    def solve(self, targets, *args, **kwargs):
        calls.append(len(targets))
        if len(calls) in failures:
            raise failures[len(calls)]
        return real_solve(self, targets, *args, **kwargs)

    monkeypatch.setattr(IKSolver, "load", classmethod(load))
    monkeypatch.setattr(IKSolver, "solve", solve)

    class Control:
        def fail(self, n: int, exc: BaseException) -> None:
            failures[n] = exc

        def reset(self) -> None:
            calls.clear()

    control = Control()
    control.calls = calls
    return control


def bishop_csv(path: Path, rows: int, header: str = "x,y") -> Path:
    rng = np.random.default_rng(3)
    data = rng.uniform(0.3, 0.8, size=(rows, 2))
    path.write_text(header + "\n" + "".join(f"{a!r},{b!r}\n" for a, b in data.tolist()))
    return path


# == class 2: nothing partial, ever ================================================================

@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_overflowing_coordinates_print_only_the_error(fmt):
    assert_refused(invoke("solve", "1e308", "1e308", "--format", fmt), "1e308", "float32")


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_targets_the_model_turns_into_nan_print_nothing(fmt):
    """The network returns NaN for |x| >= 1e36: no NaN is ever printed, nor a header."""
    result = invoke("solve", "1e37", "1e37", "--format", fmt)
    assert result.exit_code in (1, 2), result.output
    assert result.stdout == ""
    error_line(result)


def test_zero_quaternion_on_the_command_line_prints_nothing():
    assert_refused(invoke("solve", "--model", UR5, "--pose", "0.3", "0.2", "0.4", "0", "0", "0", "0"),
                   "quaternion", "zero")


def test_bad_pose_row_after_the_first_batch_fails_before_any_output(tmp_path):
    """Row 16,390 of a pose file has a zero quaternion: reported with its line, nothing printed."""
    good = "0.3,0.2,0.4,0,1,0,0\n"
    path = tmp_path / "poses.csv"
    path.write_text("x,y,z,qw,qx,qy,qz\n" + good * 16389 + "0.3,0.2,0.4,0,0,0,0\n" + good)
    for fmt in ("table", "json", "csv"):
        assert_refused(invoke("solve", "--model", UR5, "--targets", path, "--format", fmt),
                       "poses.csv line 16391", "quaternion")


def test_bad_pose_row_in_npy_names_its_row(tmp_path):
    rows = np.tile([0.3, 0.2, 0.4, 0.0, 1.0, 0.0, 0.0], (20, 1))
    rows[17, 3:] = 0.0
    path = tmp_path / "poses.npy"
    np.save(path, rows)
    out = tmp_path / "out.npz"
    assert_refused(invoke("solve", "--model", UR5, "--targets", path, "--output", out),
                   "poses.npy row 17", "quaternion")
    assert only_files(tmp_path) == ["poses.npy"]


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_value_beyond_float32_late_in_file_fails_before_output(tmp_path, suffix):
    data = np.full((16400, 2), 0.6)
    data[16395] = [0.6, 3.5e38]
    path = tmp_path / f"t{suffix}"
    if suffix == ".npy":
        np.save(path, data)
        where = "row 16395"
    else:
        path.write_text("x,y\n" + "".join(f"{a!r},{b!r}\n" for a, b in data.tolist()))
        where = "line 16397"
    assert_refused(invoke("solve", "--targets", path, "--format", "json"), where, "float32")


def test_targets_beyond_the_model_range_late_in_file_fail_before_output(tmp_path):
    """The runtime refuses |x| > MAX_TARGET per batch; the CLI checks every row first."""
    from ikmdn.runtime import MAX_TARGET

    good = "0.3,0.2,0.4,0,1,0,0\n"
    path = tmp_path / "poses.csv"
    path.write_text(good * 16390 + f"0.3,{MAX_TARGET * 10!r},0.4,0,1,0,0\n"
                    + f"0.3,0.2,0.4,{MAX_TARGET * 10!r},1,0,0\n")  # a long quaternion is fine
    assert_refused(invoke("solve", "--model", UR5, "--targets", path, "--format", "json"),
                   "poses.csv line 16391", "y = 1e+10", "float32")
    result = invoke("solve", "--model", UR5, "--pose", "0.3", "0.2", "0.4", repr(MAX_TARGET * 10),
                    "1", "0", "0", "--best", "--format", "json")
    assert result.exit_code == 0, result.output


def test_failure_in_first_batch_prints_nothing(tmp_path, small_batches):
    small_batches.fail(1, RuntimeError("onnxruntime exploded\nwith a second line"))
    targets = bishop_csv(tmp_path / "t.csv", 5)
    for fmt in ("table", "json", "csv"):
        small_batches.reset()
        line = assert_refused(invoke("solve", "--targets", targets, "--format", fmt),
                              "solving failed", "onnxruntime exploded with a second line", code=1)
        assert "RuntimeError" in line


def test_failure_midway_leaves_parseable_json_of_whole_batches(tmp_path, small_batches):
    small_batches.fail(2, RuntimeError("boom"))
    targets = bishop_csv(tmp_path / "t.csv", 5)
    result = invoke("solve", "--targets", targets, "--format", "json")
    assert result.exit_code == 1
    line = error_line(result)
    assert "stopped after 2 targets" in line and "boom" in line
    data = json.loads(result.stdout, parse_constant=bare_constant)  # the document was closed
    assert len(data["solutions"]) == 2 and "boom" in data["error"]
    assert all(s["candidates"] for s in data["solutions"])


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_failure_midway_leaves_whole_batches_of_text(tmp_path, small_batches, fmt):
    small_batches.fail(3, RuntimeError("boom"))
    targets = bishop_csv(tmp_path / "t.csv", 5)
    result = invoke("solve", "--targets", targets, "--format", fmt)
    assert result.exit_code == 1
    assert "stopped after 4 targets" in error_line(result)
    if fmt == "csv":
        indices = {line.split(",")[0] for line in result.stdout.splitlines()[1:]}
        assert indices == {"0", "1", "2", "3"}
    else:
        assert result.stdout.count("\ntarget (") == 4
    assert result.stdout.endswith("\n")


def test_nan_results_midway_are_never_printed(tmp_path, small_batches, monkeypatch):
    real_solve = IKSolver.solve

    def nan_second(self, targets, *args, **kwargs):
        sol = real_solve(self, targets, *args, **kwargs)
        if len(small_batches.calls) == 2:
            sol.joints[:] = np.nan
        return sol

    monkeypatch.setattr(IKSolver, "solve", nan_second)
    targets = bishop_csv(tmp_path / "t.csv", 5)
    result = invoke("solve", "--targets", targets, "--format", "json")
    assert result.exit_code == 1
    data = json.loads(result.stdout, parse_constant=bare_constant)
    assert len(data["solutions"]) == 2 and "target 2" in data["error"]


def test_npz_failure_midway_leaves_no_file(tmp_path, small_batches):
    small_batches.fail(2, RuntimeError("boom"))
    targets = bishop_csv(tmp_path / "t.csv", 5)
    out = tmp_path / "out" / "x.npz"
    result = invoke("solve", "--targets", targets, "--output", out)
    assert result.exit_code == 1 and result.stdout == ""
    assert "boom" in error_line(result)
    assert only_files(out.parent) == []


def test_npz_is_written_through_one_temporary_file(tmp_path, small_batches, monkeypatch):
    """While batches arrive, the destination folder holds one hidden .NAME.*.tmp file (no
    folder of memory-mapped arrays); the result equals solving at once."""
    real_solve, seen = IKSolver.solve, []

    def watch(self, targets, *args, **kwargs):
        seen.append(only_files(out.parent))
        return real_solve(self, targets, *args, **kwargs)

    monkeypatch.setattr(IKSolver, "solve", watch)
    targets = bishop_csv(tmp_path / "t.csv", 5)
    out = tmp_path / "out" / "x.npz"
    out.parent.mkdir()
    result = invoke("solve", "--targets", targets, "--output", out)
    assert result.exit_code == 0, result.output
    assert len(seen) == 3
    for listing in seen[1:]:
        assert len(listing) == 1 and listing[0].startswith(".x.npz.") and listing[0].endswith(".tmp")
    assert not any(p.is_dir() for p in out.parent.iterdir())
    assert only_files(out.parent) == ["x.npz"]
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None
    monkeypatch.undo()
    expected = IKSolver.load(ROOT / "exported_models" / "bishop.onnx")
    x = np.loadtxt(targets, delimiter=",", skiprows=1)
    with np.load(out) as f:
        assert set(f.files) == NPZ_ARRAYS
        for name, a in expected.solve(x[:2]).arrays().items():
            np.testing.assert_array_equal(f[name][:2], a)
        np.testing.assert_array_equal(f["targets"], x)


def test_npz_zip64_end_records_read_back(tmp_path, monkeypatch):
    """The zip64 end-of-archive records (written past 2 GiB) are readable: forced here."""
    import ikmdn.solve_output as solve_output

    monkeypatch.setattr(solve_output, "_ZIP64_LIMIT", 0)
    out = tmp_path / "x.npz"
    assert invoke("solve", "0.6", "0.7", "--output", out).exit_code == 0
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None
    with np.load(out) as f:
        assert f["joints"].shape[0] == 1 and f["reachable"].all()


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=20)


@pytest.mark.parametrize("reserve", [True, False], ids=["fallocate", "plain-writes"])
def test_npz_on_a_full_disk_is_a_one_line_error_and_leaves_nothing(tmp_path, full_disk, reserve):
    """In a subprocess: a memory-mapped write would die of SIGBUS here, not raise."""
    targets = tmp_path / "t.npy"
    np.save(targets, np.random.default_rng(0).uniform(0.3, 0.8, size=(12000, 2)))
    # File systems that cannot reserve space fail on a write instead: without posix_fallocate.
    code = ("import os, sys\n"
            + ("" if reserve else "del os.posix_fallocate\n")
            + "from ikmdn.cli import cli\ncli(sys.argv[1:])\n")
    done = subprocess.run([sys.executable, "-c", code, "solve", "--targets", str(targets),
                           "--output", str(full_disk / "x.npz"), "--no-refine"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), done.stderr[-2000:]
    assert "no space left" in lines[0] and "x.npz" in lines[0]
    assert only_files(full_disk) == []


SIGNAL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ikmdn.cli import cli
    from ikmdn.solve import IKSolver

    real_load, real_solve, calls = IKSolver.load.__func__, IKSolver.solve, []

    def load(cls, path, threads=None, **kwargs):
        solver = real_load(cls, path, threads, **kwargs)
        solver.batch_size = 2
        return solver

    def solve(self, targets, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:   # mid-write: the first batch is on disk
            Path(sys.argv[1]).write_text("ready")
            time.sleep(60)
        return real_solve(self, targets, *args, **kwargs)

    IKSolver.load = classmethod(load)
    IKSolver.solve = solve
    cli(sys.argv[2:])
""")


def default_signals() -> None:
    """In the child: SIGINT and SIGTERM at their defaults (a background shell ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_npz_killed_mid_write(tmp_path, signum):
    """SIGTERM/SIGINT mid-write: the temporary is removed, no file is left. SIGKILL: at most
    the one hidden temporary file."""
    script = tmp_path / "run.py"
    script.write_text(SIGNAL_SCRIPT)
    marker = tmp_path / f"ready-{uuid.uuid4().hex}"
    targets = bishop_csv(tmp_path / "t.csv", 6)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(marker), "solve", "--targets",
                             str(targets), "--output", str(out_dir / "x.npz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            preexec_fn=default_signals)
    try:
        deadline = time.monotonic() + 40
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the solve never reached its second batch"
            time.sleep(0.05)
        listing = only_files(out_dir)
        assert len(listing) == 1 and listing[0].startswith(".x.npz.") and listing[0].endswith(".tmp")
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    if signum == signal.SIGKILL:
        left = only_files(out_dir)
        assert len(left) <= 1 and all(n.startswith(".x.npz.") and n.endswith(".tmp") for n in left)
    else:
        assert b"Traceback" not in stderr, stderr.decode()
        assert only_files(out_dir) == []


# == class 4: the CSV header rule ==================================================================

@pytest.mark.parametrize("first", ["O.6,O.7", '"0.6","0.7"', "0.6;0.7", "0.6\t0.7", "x;y", "a,b",
                                   "x,y,z", "q1,q2", "x,", "0x1,2", "1_0,2", "\u0661,2",
                                   "0.6 0.7"])
def test_a_first_line_that_is_not_the_column_names_is_an_error(tmp_path, first):
    path = tmp_path / "t.csv"
    path.write_text(f"# my targets\n{first}\n0.6,0.7\n")
    assert_refused(invoke("solve", "--targets", path), "t.csv line 2", "not a number")


@pytest.mark.parametrize("first", ["x,y", " X , Y ", "x, y"])
def test_a_header_naming_the_columns_is_accepted(tmp_path, first):
    path = tmp_path / "t.csv"
    path.write_text(f"{first}\n0.6,0.7\n")
    result = invoke("solve", "--targets", path, "--format", "json")
    assert result.exit_code == 0, result.output
    assert [s["target"] for s in json.loads(result.stdout)["solutions"]] == [[0.6, 0.7]]


def test_a_header_is_only_the_first_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0.6,0.7\nx,y\n")
    assert_refused(invoke("solve", "--targets", path), "t.csv line 2", "'x' is not a number")


def test_tab_separated_data_is_an_error_not_a_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0.6\t0.7\n0.5\t0.8\n")
    assert_refused(invoke("solve", "--targets", path), "line 1")


def test_pose_header_is_the_pose_input_names(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("x,y,z,qw,qx,qy,qz\n" + ",".join(POSE) + "\n")
    result = invoke("solve", "--model", UR5, "--targets", path, "--format", "csv", "--best")
    assert result.exit_code == 0, result.output
    path.write_text("x,y,z,r11,r21,r31,r12\n" + ",".join(POSE) + "\n")
    assert_refused(invoke("solve", "--model", UR5, "--targets", path), "line 1",
                   "x,y,z,qw,qx,qy,qz")


def test_near_file_header_is_the_joint_names(tmp_path):
    near = tmp_path / "near.csv"
    near.write_text("q1,q2\n1.0,2.1\n")
    result = invoke("solve", "0.6", "0.7", "--near-file", near, "--best", "--format", "json")
    assert result.exit_code == 0, result.output
    near.write_text("x,y\n1.0,2.1\n")
    assert_refused(invoke("solve", "0.6", "0.7", "--near-file", near), "near.csv line 1", "q1,q2")


def test_a_byte_order_mark_does_not_hide_the_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfx,y\r\n0.6,0.7\r\n")
    result = invoke("solve", "--targets", path, "--format", "json")
    assert result.exit_code == 0, result.output


# == class 5: resource caps on target files ========================================================

def test_a_huge_file_without_a_newline_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "t.csv"
    with open(path, "wb") as f:  # 400 MB, sparse: only a capped read can be quick
        f.truncate(400 * 2**20)
    start = time.monotonic()
    line = assert_refused(invoke("solve", "--targets", path), "t.csv line 1", "longer than")
    assert time.monotonic() - start < 10
    assert len(line) < 200


def test_a_long_row_is_refused_with_its_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x,y\n0.6,0.7\n" + "1" * 200_000 + ",0.7\n")
    line = assert_refused(invoke("solve", "--targets", path), "t.csv line 3", "longer than")
    assert len(line) < 200


def test_a_long_bad_field_is_echoed_short(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x,y\n0.6," + "z" * 30_000 + "\n")
    line = assert_refused(invoke("solve", "--targets", path), "t.csv line 2", "not a number")
    assert len(line) < 200 and "z" * 40 in line and "z" * 41 not in line


def test_a_long_bad_coordinate_is_echoed_short():
    result = invoke("solve", "0.6", "7" * 50 + "x" * 10_000)
    assert result.exit_code == 2 and result.stdout == ""
    assert len(error_line(result)) < 200


def test_binary_garbage_in_a_csv_is_one_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"x,y\n\xff\xfe\x00garbage\n")
    assert_refused(invoke("solve", "--targets", path), "line 2", "UTF-8")


# == class 6: files that are not what their name says ===============================================

def test_npz_renamed_npy_is_a_one_line_error(tmp_path):
    path = tmp_path / "t.npy"
    with open(path, "wb") as f:
        np.savez(f, targets=np.full((3, 2), 0.6))
    assert_refused(invoke("solve", "--targets", path), "t.npy is not a .npy array file", "zip")


@pytest.mark.parametrize("content", [b"", b"0.6,0.7\n", b"\x93NUMPY\x01\x00garbage"],
                         ids=["empty", "text", "bad-header"])
def test_other_non_npy_content_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "t.npy"
    path.write_bytes(content)
    assert_refused(invoke("solve", "--targets", path), "t.npy")


def test_pickled_npy_is_refused_never_loaded(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.array([[0.6, 0.7]], dtype=object), allow_pickle=True)
    assert_refused(invoke("solve", "--targets", path), "t.npy")


# == class 7: modes and what check_output_file refuses =============================================

@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_npz_mode_follows_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        out = tmp_path / "x.npz"
        assert invoke("solve", "0.6", "0.7", "--output", out).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask


def test_write_atomically_honours_the_umask_and_cleans_up(tmp_path):
    from ikmdn.outdir import write_atomically

    old = os.umask(0o007)
    try:
        write_atomically(tmp_path / "a.bin", lambda p: p.write_bytes(b"abc"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o660

    def fail(p: Path) -> None:
        p.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomically(tmp_path / "b.bin", fail)
    assert only_files(tmp_path) == ["a.bin"]


def test_output_refuses_folders_and_special_files_even_with_force(tmp_path):
    folder = tmp_path / "d.npz"
    folder.mkdir()
    assert_refused(invoke("solve", "0.6", "0.7", "--output", folder, "--force"), "is a folder")
    fifo = tmp_path / "f.npz"
    os.mkfifo(fifo)
    assert_refused(invoke("solve", "0.6", "0.7", "--output", fifo, "--force"),
                   "not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    afile = tmp_path / "file.txt"
    afile.write_text("mine")
    assert_refused(invoke("solve", "0.6", "0.7", "--output", afile / "sub" / "x.npz"),
                   "is not a folder")
    assert afile.read_text() == "mine"
