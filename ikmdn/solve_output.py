"""Writers for `ikmdn solve` results: table, JSON (the contract in DESIGN.md), CSV, and .npz.

Each writer takes batches of Solutions and streams them, so output size never bounds memory.

Nothing partial, ever:
- A text writer renders each batch whole (after checking that every number in it is finite)
  before writing any of it, and writes its header together with the first batch, so a job that
  fails on its first batch prints nothing at all. If a later batch fails, the batches already
  printed stay complete, JSON output is closed with an "error" key so that it still parses, and
  the failure is raised as a one-line error (non-zero exit).
- The .npz is written through one hidden temporary file beside the destination
  (outdir.write_atomically), laid out as the final archive and filled batch by batch with plain
  writes (no memory map: a full disk is an OSError, not SIGBUS). On any failure, SIGINT or
  SIGTERM the temporary is removed and nothing is left; only SIGKILL can leave it behind.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from ikmdn.arms import Arm
from ikmdn.arms.rotations import matrix_to_quat, sixd_to_matrix
from ikmdn.errors import IKMDNError, JobFailedError
from ikmdn.outdir import check_output_file, write_atomically
from ikmdn.solve import PathSolution, Solutions

FORMATS = ("table", "json", "csv")
POSE_INPUT = ("x", "y", "z", "qw", "qx", "qy", "qz")  # how pose targets are typed and printed


def _candidate_indices(sol: Solutions, i: int, best: bool) -> list[int]:
    """Candidates of target i to print: the best one, or every distinct one (heaviest first)."""
    if best:
        return [int(sol.best_index[i])]
    return [int(k) for k in np.flatnonzero(sol.distinct[i])]


def _fmt(values) -> str:
    return ", ".join(f"{v:.6f}" for v in values)


def display_coordinates(arm: Arm, values: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, values (..., m)) of targets or reached targets (..., target_dim) as people write
    them: pose arms as position and unit quaternion (x, y, z, qw, qx, qy, qz), w >= 0; other arms
    as their target coordinates."""
    values = np.asarray(values, dtype=np.float64)
    if not arm.pose_targets:
        return arm.target_names, values
    flat = values.reshape(-1, values.shape[-1])
    quats = matrix_to_quat(sixd_to_matrix(flat[:, 3:9])) if len(flat) else np.zeros((0, 4))
    return POSE_INPUT, np.concatenate([flat[:, :3], quats], axis=1).reshape(*values.shape[:-1], 7)


# -- nothing partial ------------------------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    """An exception as one short line of text."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, SystemExit):
        return f"stopped (exit status {exc.code})"
    text = " ".join(str(exc).split())
    if not isinstance(exc, IKMDNError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 500 else text[:500] + "..."


def check_finite(sol: Solutions, offset: int = 0) -> None:
    """Raise JobFailedError if any number in sol (a batch starting at target `offset`) is NaN or
    infinite: such results are never written."""
    for name, a in sol.arrays().items():
        if a.dtype.kind in "fc" and a.size and not np.isfinite(a).all():
            i = int(np.argmin(np.isfinite(a.reshape(len(a), -1)).all(axis=1)))
            raise JobFailedError(f"target {offset + i} (counting from 0): the model's {name} are "
                                 "NaN or infinite, so nothing is written for it (is the target "
                                 "of a magnitude the model can take?)")


def _stream(out: TextIO, batches: Iterable[Solutions], render: Callable[[Solutions, int], str],
            head: str = "", tail: str = "", failed_tail: Callable[[str], str] | None = None) -> None:
    """Write head, render(batch, offset) per batch, then tail; each batch only once complete.

    A failure (from solving or rendering a batch) before anything was written writes nothing
    and propagates (other exceptions than IKMDNError, KeyboardInterrupt and SystemExit become a
    one-line JobFailedError). A failure after that keeps the complete batches written, closes
    the output with failed_tail(message) (JSON: so that it parses), and raises a one-line error
    saying how many targets were written (exit status 1, or the IKMDNError's own).
    """
    written, started = 0, False
    try:
        for sol in batches:
            check_finite(sol, written)
            text = render(sol, written)
            out.write(text if started else head + text)
            started = True
            written += len(sol)
        out.write(tail if started else head + tail)
    except BrokenPipeError:  # the reader went away: nothing more can be written
        raise
    except BaseException as exc:
        message = _one_line(exc)
        if started:
            if failed_tail is not None:
                out.write(failed_tail(message))
            out.flush()
            message = f"stopped after {written} targets (those were written in full): {message}"
        elif isinstance(exc, IKMDNError):
            raise
        else:
            message = f"solving failed: {message}"
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: keep them
            raise
        error = JobFailedError(message)
        if isinstance(exc, IKMDNError):
            error.exit_code = exc.exit_code  # bad input found late is still bad input
        raise error from exc


# -- text writers ---------------------------------------------------------------------------------

def write_table(out: TextIO, header: str, batches: Iterable[Solutions], best: bool, arm: Arm) -> None:
    """Human-readable: one block per target, one line per distinct candidate (pose arms add the
    reached position and quaternion and the rotation error).

    Nothing partial: the header lines are written with the first complete batch, so a failure
    on it prints nothing; a later failure leaves whole batches and raises a one-line error."""
    head = f"{header}\njoints: {', '.join(arm.joint_names)} (frames {arm.frames()})\n"

    def render(sol: Solutions, offset: int) -> str:
        out = io.StringIO()
        names, targets = display_coordinates(arm, sol.targets)
        _, reached = display_coordinates(arm, sol.positions)
        for i in range(len(sol)):
            status = "reachable" if sol.reachable[i] else "NOT reachable (closest candidates shown)"
            coords = ", ".join(f"{n}={v:.6g}" for n, v in zip(names, targets[i], strict=True))
            out.write(f"\ntarget ({coords}): {status}\n")
            extra = f"  {'reached x y z (m), qw qx qy qz':<52} {'rot err':>9}" if sol.pose else ""
            out.write(f"  {'#':>2}  {'weight':>7}  {'joints (rad)':<40} {'error':>9}  limits{extra}\n")
            for rank, k in enumerate(_candidate_indices(sol, i, best), start=1):
                ok = "ok" if sol.within_limits[i, k] else "OUTSIDE"
                joints = f"[{_fmt(sol.joints[i, k])}]"
                line = (f"  {rank:>2}  {sol.weights[i, k]:7.4f}  {joints:<40} "
                        f"{sol.errors[i, k]:9.2e}  {ok:<7}")
                if sol.pose:
                    pose = " ".join(f"{v:.4f}" for v in reached[i, k])
                    line += f"  {pose:<52} {np.degrees(sol.rotation_errors[i, k]):7.1e} deg"
                out.write(line.rstrip() + "\n")
        return out.getvalue()

    _stream(out, batches, render, head=head)


def write_json(out: TextIO, model: str, arm: Arm, batches: Iterable[Solutions], best: bool) -> None:
    """{"model", "arm", "joint_names", "solutions": [{"target", "reachable", "candidates": [...]}, ...]}.

    With fallback seeds enabled (spatial arms) each solution also says "fallback": bool.

    Always valid JSON and never NaN or Infinity (numbers are checked first and dumped with
    allow_nan=False). Nothing partial: the document starts with the first complete batch, so a
    failure on it prints nothing. A later failure keeps the solutions of the batches already
    written, closes the document with a top-level "error": "<message>" after "solutions", and
    raises a one-line error (non-zero exit)."""
    head = ('{"model": ' + json.dumps(model) + ', "arm": ' + json.dumps(arm.name)
            + ', "joint_names": ' + json.dumps(list(arm.joint_names)) + ', "solutions": [')

    def render(sol: Solutions, offset: int) -> str:
        parts = []
        for i in range(len(sol)):
            entry = {"target": sol.targets[i].tolist(), "reachable": bool(sol.reachable[i]),
                     "candidates": [sol.candidate(i, k) for k in _candidate_indices(sol, i, best)]}
            if sol.fallback_seeds:
                entry["fallback"] = bool(sol.fallback[i])  # the answer came from extra seeds
            parts.append(("" if offset + i == 0 else ", ") + "\n  "
                         + json.dumps(entry, allow_nan=False))
        return "".join(parts)

    _stream(out, batches, render, head=head, tail="\n]}\n",
            failed_tail=lambda message: '\n], "error": ' + json.dumps(message) + "}\n")


def write_csv(out: TextIO, batches: Iterable[Solutions], best: bool, arm: Arm) -> None:
    """One row per distinct candidate: target index and coordinates, rank, weight, joints (columns
    named after the arm's joints), error, within_limits, the reached target (pose arms: position
    and quaternion, and the rotation error in degrees).

    Nothing partial: the header row is written with the first complete batch; a later failure
    leaves the rows of whole batches (whole targets) and raises a one-line error."""
    names = display_coordinates(arm, np.zeros((0, arm.target_dim)))[0]
    pose = arm.pose_targets
    header = (["target", *names, "reachable", "rank", "weight", *arm.joint_names, "error"]
              + (["rotation_error_deg"] if pose else []) + ["within_limits"]
              + [f"reached_{n}" for n in names])
    head = io.StringIO()
    csv.writer(head, lineterminator="\n").writerow(header)

    def render(sol: Solutions, offset: int) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        _, targets = display_coordinates(arm, sol.targets)
        _, reached = display_coordinates(arm, sol.positions)
        for i in range(len(sol)):
            for rank, k in enumerate(_candidate_indices(sol, i, best), start=1):
                row = ([str(offset + i)] + [repr(float(v)) for v in targets[i]]
                       + [str(bool(sol.reachable[i])).lower(), str(rank),
                          repr(float(sol.weights[i, k]))]
                       + [repr(float(v)) for v in sol.joints[i, k]]
                       + [repr(float(sol.errors[i, k]))]
                       + ([repr(float(np.degrees(sol.rotation_errors[i, k])))] if pose else [])
                       + [str(bool(sol.within_limits[i, k])).lower()]
                       + [repr(float(v)) for v in reached[i, k]])
                writer.writerow(row)
        return out.getvalue()

    _stream(out, batches, render, head=head.getvalue())


def write_path(out: TextIO, fmt: str, model: str, arm: Arm, path: PathSolution) -> None:
    """A solved path (`ikmdn solve --path`): one answer per step, its joint jump from the step
    before and whether that is a discontinuity (a branch switch), as a table, JSON or CSV.

    The whole text is rendered before any of it is written; NaN or infinite results raise a
    one-line JobFailedError and print nothing."""
    numbers = (path.targets, path.joints, path.errors, path.rotation_errors, path.jumps)
    if not all(np.isfinite(np.asarray(a, dtype=np.float64)).all() for a in numbers):
        raise JobFailedError("the model gave NaN or infinite results for this path; nothing "
                             "is written")
    text = io.StringIO()
    _render_path(text, fmt, model, arm, path)
    out.write(text.getvalue())


def _render_path(out: TextIO, fmt: str, model: str, arm: Arm, path: PathSolution) -> None:
    names, targets = display_coordinates(arm, path.targets)
    rows = range(len(path))
    if fmt == "json":
        steps = [{"target": path.targets[i].tolist(), "reachable": bool(path.reachable[i]),
                  "joints": path.joints[i].tolist(), "error": float(path.errors[i]),
                  **({"rotation_error_deg": float(np.degrees(path.rotation_errors[i]))}
                     if arm.pose_targets else {}),
                  "jump": float(path.jumps[i]), "switch": bool(path.switches[i])} for i in rows]
        out.write(json.dumps({"model": model, "arm": arm.name, "joint_names": list(arm.joint_names),
                              "largest_jump": path.largest_jump,
                              "switches": int(path.switches.sum()),
                              "switch_threshold": path.switch_threshold, "path": steps},
                             allow_nan=False))
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", *names, "reachable", *arm.joint_names, "error", "jump", "switch"])
        for i in rows:
            writer.writerow([i, *map(repr, targets[i].tolist()), str(bool(path.reachable[i])).lower(),
                             *map(repr, path.joints[i].tolist()), repr(float(path.errors[i])),
                             repr(float(path.jumps[i])), str(bool(path.switches[i])).lower()])
        return
    out.write(f"model {model} (arm {arm.name}): path of {len(path)} targets, largest joint jump "
              f"{path.largest_jump:.4f} rad, {int(path.switches.sum())} discontinuities "
              f"(jumps > {path.switch_threshold} rad)\n")
    out.write(f"joints: {', '.join(arm.joint_names)}\n")
    for i in rows:
        flag = "  SWITCH" if path.switches[i] else ""
        status = "" if path.reachable[i] else "  NOT reachable"
        out.write(f"{i:>5}  [{_fmt(path.joints[i])}]  error {path.errors[i]:.2e}  jump "
                  f"{path.jumps[i]:.4f}{flag}{status}\n")


# -- .npz -----------------------------------------------------------------------------------------

# Zip structures (PKWARE APPNOTE), as the zipfile module writes them: stored (uncompressed)
# entries with zip64 sizes, which is what numpy.savez writes and numpy.load reads.
_LOCAL = struct.Struct("<4s2B4HL2L2H")         # local file header, 30 bytes
_LOCAL_ZIP64 = struct.Struct("<2H2Q")          # zip64 extra: sizes, 20 bytes
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")     # central directory header, 46 bytes
_CENTRAL_ZIP64 = struct.Struct("<2H3Q")        # zip64 extra: sizes and offset, 28 bytes
_END = struct.Struct("<4s4H2LH")               # end of central directory, 22 bytes
_END64 = struct.Struct("<4sQ2H2L4Q")           # zip64 end of central directory, 56 bytes
_END64_LOCATOR = struct.Struct("<4sLQL")       # zip64 end locator, 20 bytes
_ZIP64_LIMIT = (1 << 31) - 1                   # beyond it the end record needs zip64 (as zipfile)
_DOS_DATE = (0 << 9) | (1 << 5) | 1            # 1980-01-01 00:00: the same bytes for the same data


@dataclass
class _Entry:
    """One array of the archive: name.npy at offset, its .npy header, data written so far."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int          # of the local header
    npy_header: bytes
    crc: int = 0
    done: int = 0        # rows written

    @property
    def filename(self) -> bytes:
        return f"{self.name}.npy".encode("ascii")

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def size(self) -> int:
        """Bytes of the .npy member: header and data."""
        return len(self.npy_header) + self.shape[0] * self.row_bytes

    @property
    def data_offset(self) -> int:
        return self.offset + _LOCAL.size + len(self.filename) + _LOCAL_ZIP64.size + len(self.npy_header)

    @property
    def end(self) -> int:
        return self.data_offset + self.shape[0] * self.row_bytes


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The .npy header (format 1.0, padded as numpy pads it) of a C-order array."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


class _NpzStream:
    """An .npz for `total` rows per array, written in place into the open file f batch by batch.

    The first batch fixes every array's dtype and row shape, hence the whole layout: each
    member's data goes straight to its final offset (rows arrive in order, so each member's
    CRC-32 is a running one), and the zip headers are written at the end. Space for the data is
    reserved up front where the file system allows, so a full disk fails at the first batch.
    """

    def __init__(self, f: BinaryIO, total: int):
        self.f = f
        self.total = total
        self.entries: list[_Entry] = []
        self.rows = 0

    def _layout(self, arrays: dict[str, np.ndarray]) -> None:
        offset = 0
        for name, a in arrays.items():
            shape = (self.total, *a.shape[1:])
            entry = _Entry(name, a.dtype, shape, offset, _npy_header(a.dtype, shape))
            entry.crc = zlib.crc32(entry.npy_header)
            self.entries.append(entry)
            offset = entry.end
        if offset and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(self.f.fileno(), 0, offset)
            except OSError as exc:  # not every file system can reserve space; a full one is full
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
                    raise
        for entry in self.entries:
            self.f.seek(entry.data_offset - len(entry.npy_header))
            self.f.write(entry.npy_header)

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        """Append one batch: arrays (n, ...) by name, the same names, dtypes and row shapes as the
        first batch."""
        if not self.entries:
            self._layout(arrays)
        n = len(next(iter(arrays.values())))
        if self.rows + n > self.total or set(arrays) != {e.name for e in self.entries}:
            raise JobFailedError("internal error: the batches do not match the .npz layout")
        for entry in self.entries:
            a = np.ascontiguousarray(arrays[entry.name], dtype=entry.dtype)
            if a.shape != (n, *entry.shape[1:]):
                raise JobFailedError(f"internal error: {entry.name} has shape {a.shape}, "
                                     f"expected {(n, *entry.shape[1:])}")
            if a.size:
                data = memoryview(a).cast("B")
                entry.crc = zlib.crc32(data, entry.crc)
                self.f.seek(entry.data_offset + entry.done * entry.row_bytes)
                self.f.write(data)
            entry.done += n
        self.rows += n

    def finish(self) -> None:
        """Write the zip headers; every row must have been added."""
        if self.rows != self.total:
            raise JobFailedError(f"internal error: {self.rows} of {self.total} rows solved")
        end = 0
        central = []
        for e in self.entries:
            self.f.seek(e.offset)
            self.f.write(_LOCAL.pack(b"PK\x03\x04", 45, 0, 0, 0, 0, _DOS_DATE, e.crc,
                                     0xFFFFFFFF, 0xFFFFFFFF, len(e.filename), _LOCAL_ZIP64.size)
                         + e.filename + _LOCAL_ZIP64.pack(1, 16, e.size, e.size))
            central.append(_CENTRAL.pack(b"PK\x01\x02", 45, 3, 45, 0, 0, 0, 0, _DOS_DATE, e.crc,
                                         0xFFFFFFFF, 0xFFFFFFFF, len(e.filename),
                                         _CENTRAL_ZIP64.size, 0, 0, 0, 0o100644 << 16, 0xFFFFFFFF)
                           + e.filename + _CENTRAL_ZIP64.pack(1, 24, e.size, e.size, e.offset))
            end = e.end
        directory = b"".join(central)
        count = len(self.entries)
        tail = b""
        if count > 0xFFFF or end > _ZIP64_LIMIT or len(directory) > _ZIP64_LIMIT:
            end64 = end + len(directory)
            tail = (_END64.pack(b"PK\x06\x06", _END64.size - 12, 45, 45, 0, 0, count, count,
                                len(directory), end)
                    + _END64_LOCATOR.pack(b"PK\x06\x07", 0, end64, 1))
            tail += _END.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
        else:
            tail = _END.pack(b"PK\x05\x06", 0, 0, count, count, len(directory), end, 0)
        self.f.seek(end)
        self.f.write(directory + tail)
        self.f.truncate()


def write_npz(path: str | Path, total: int, batches: Iterable[Solutions], force: bool) -> None:
    """All Solutions arrays for `total` targets in one .npz (as numpy.savez writes it), built
    batch by batch on disk in bounded memory.

    Nothing partial: the archive is written through one temporary file beside path
    (`.NAME.<random>.tmp`, see outdir.write_atomically) and moved onto path only when complete.
    Any failure (a NaN result, a solver error, a full disk) and SIGINT/SIGTERM remove the
    temporary and leave no file; a full disk is a one-line error."""
    path = Path(path)
    if path.suffix != ".npz":
        raise IKMDNError(f"--output must end in .npz, got {path}")
    check_output_file(path, force)

    def write(tmp: Path) -> None:
        with open(tmp, "r+b") as f:
            stream = _NpzStream(f, total)
            for sol in batches:
                check_finite(sol, stream.rows)
                stream.add(sol.arrays())
            stream.finish()

    try:
        write_atomically(path, write)
    except IKMDNError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise JobFailedError(f"cannot write {path}: no space left on the device; nothing "
                                 "was written") from None
        raise
    except Exception as exc:  # solving failed: one line, and (as always) no file
        raise JobFailedError(f"solving failed, nothing was written: {_one_line(exc)}") from exc
