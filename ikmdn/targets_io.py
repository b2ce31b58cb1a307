"""Reading target files (.csv or .npy, one target a row) in bounded-memory batches.

A file is checked whole before any batch is handed out, so a bad row at the end fails the job
before anything has been written. The rules:

- CSV: comma-separated plain decimal numbers (`0.6`, `-1.5e-3`); '#' starts a comment; blank
  lines are skipped. The first non-comment line may be a header only if its fields are exactly
  the expected column names (e.g. `x,y`; case and surrounding spaces do not matter); any other
  field that is not a number (`O.6`, `"0.6"`, `0.6;0.7`, a tab-separated row) is an error naming
  its line. Lines are read one at a time and may be at most MAX_LINE_BYTES long, so a file
  without newlines is refused after reading that much, not loaded whole.
- .npy: a real numeric array of shape (N, width), memory-mapped, never unpickled; anything else
  (a .npz archive renamed .npy, a pickle, text) is refused by its first bytes.
- Every value must be finite and fit in float32 (|value| <= MAX_ABS, what the network takes).
- Optional row checks (e.g. `pose_rows`: non-zero quaternions; `within`: a model's target
  range) run over every row too.

Error messages show at most SHOW_CHARS characters of an offending field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ikmdn.errors import IKMDNError

SUFFIXES = (".csv", ".npy")
MAX_LINE_BYTES = 64 * 1024
SHOW_CHARS = 40
MAX_ABS = float(np.finfo(np.float32).max)  # ~3.4e38: larger values do not fit the network's input
CHUNK_ROWS = 65536
# A plain decimal number, ASCII digits only; unambiguous, so no backtracking blow-up.
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE_RE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_NPY_MAGIC = b"\x93NUMPY"

RowCheck = Callable[[np.ndarray], tuple[int, str] | None]
"""A check over rows (n, width): None, or (index of the first bad row, why it is bad)."""


def show(text: str) -> str:
    """text quoted for an error message, cut to SHOW_CHARS characters."""
    if len(text) <= SHOW_CHARS:
        return repr(text)
    return repr(text[:SHOW_CHARS]) + f"... ({len(text)} characters)"


def pose_rows(rows: np.ndarray) -> tuple[int, str] | None:
    """RowCheck for pose inputs (n, 7) x y z qw qx qy qz: the quaternion must not be zero."""
    norms = np.linalg.norm(np.asarray(rows, dtype=np.float64)[:, 3:7], axis=1)
    bad = np.flatnonzero(~(norms >= 1e-12))
    if bad.size:
        return int(bad[0]), "the quaternion (qw, qx, qy, qz) is zero; give a unit quaternion"
    return None


def within(limit: float, names: Sequence[str], columns: int | None = None) -> RowCheck:
    """RowCheck: the first `columns` values of each row (all by default), named by names, lie
    within +-limit (e.g. the target range a model takes: runtime.MAX_TARGET)."""

    def check(rows: np.ndarray) -> tuple[int, str] | None:
        part = np.abs(np.asarray(rows, dtype=np.float64)[:, :columns])
        beyond = np.argwhere(~(part <= limit))
        if not beyond.size:
            return None
        row, col = (int(i) for i in beyond[0])
        return row, (f"{names[col]} = {rows[row, col]:.3g} is beyond +-{limit:.0e}, the range "
                     "of targets the model takes (it computes in float32)")

    return check


def value_problem(rows: np.ndarray) -> tuple[int, str] | None:
    """(first bad row, why) where rows (n, width) hold NaN, infinite or out-of-float32 values."""
    finite = np.isfinite(rows)
    bad = np.flatnonzero(~finite.all(axis=1))
    if bad.size:
        return int(bad[0]), "NaN or infinite value"
    big = np.flatnonzero((np.abs(rows) > MAX_ABS).any(axis=1))
    if big.size:
        value = float(rows[big[0]][np.abs(rows[big[0]]) > MAX_ABS][0])
        return int(big[0]), f"{value:g} does not fit in float32 (|value| must be below 3.4e38)"
    return None


def _lines(path: Path, what: str = "targets file") -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, each at most MAX_LINE_BYTES long, decoded as UTF-8."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise IKMDNError(f"cannot read {what} {path}: {exc.strerror}") from None
    with f:
        number = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise IKMDNError(f"{path} line {number} is longer than {MAX_LINE_BYTES} bytes; "
                                 "expected one target per line")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark (spreadsheet exports)
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise IKMDNError(f"{path} line {number} is not UTF-8 text; expected a CSV "
                                 "file of numbers") from None


def _fast_numbers(text: str) -> list[float] | None:
    """The comma-separated numbers of a line, or None where the strict rule must look closer.

    float() alone also takes '1_000' and non-ASCII digits, which the strict rule (_NUMBER_RE)
    refuses; 'nan' and 'inf' pass here and are refused as non-finite values later."""
    if "_" in text or not text.isascii():
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        return None


def _csv_rows(path: Path, width: int, names: Sequence[str] = (),
              what: str = "targets file") -> Iterator[tuple[int, list[float]]]:
    """(line number, values) for each data row; '#' comments, blank lines and a header line
    naming the columns (names) skipped."""
    header = [n.strip().lower() for n in names]
    seen_content = False
    for number, line in _lines(path, what):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        first, seen_content = not seen_content, True
        values = _fast_numbers(text)
        if values is None:
            fields = [v.strip() for v in text.split(",")]
            if first and header and [v.lower() for v in fields] == header:
                continue
            bad = next((v for v in fields if not _NUMBER_RE.fullmatch(v)), None)
            if bad is not None and _NON_FINITE_RE.fullmatch(bad):
                raise IKMDNError(f"{path} line {number}: NaN or infinite value")
            if bad is None:  # not expected: every field is a plain number
                bad = text
            hint = (f" (a header line must name the {width} columns: {','.join(names)})"
                    if first and names else "")
            raise IKMDNError(f"{path} line {number}: {show(bad)} is not a number{hint}")
        if len(values) != width:
            raise IKMDNError(f"{path} line {number}: expected {width} comma-separated "
                             f"numbers, got {len(values)}")
        yield number, values


def _open_npy(path: Path, width: int, what: str = "targets file") -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise IKMDNError(f"cannot read {what} {path}: {exc.strerror}") from None
    if magic != _NPY_MAGIC:
        what = " (it is a zip archive, e.g. an .npz renamed)" if magic.startswith(b"PK") else ""
        raise IKMDNError(f"{path} is not a .npy array file{what}; expected an array saved "
                         "with numpy.save")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, TypeError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise IKMDNError(f"cannot read {path} as a .npy array: {reason}") from None
    if not isinstance(arr, np.ndarray):
        raise IKMDNError(f"{path} is not a .npy array file")
    if arr.ndim != 2 or arr.shape[1] != width:
        raise IKMDNError(f"{path}: expected an array of shape (N, {width}), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise IKMDNError(f"{path}: expected real numbers, got dtype {arr.dtype}")
    return arr


class TargetsFile:
    """A validated targets file: len() rows, batches(size) yields float64 (n, width) arrays.

    names: the column names a CSV header line may give (e.g. the arm's target names); without
    names no header is accepted. checks: RowChecks run over every row (e.g. `pose_rows`); a
    failure is reported with the row's line (CSV) or row index (.npy). what: the file's role in
    messages about the file as a whole ("targets file", "file").
    """

    def __init__(self, path: str | Path, width: int, names: Sequence[str] = (),
                 checks: Sequence[RowCheck] = (), what: str = "targets file"):
        self.path = Path(path)
        self.width = width
        self.what = what
        self.names = tuple(names)
        if self.names and len(self.names) != width:
            raise ValueError(f"{len(self.names)} column names for {width} columns")
        self.checks = tuple(checks)
        if self.path.suffix.lower() not in SUFFIXES:
            raise IKMDNError(f"{what} must end in {' or '.join(SUFFIXES)}, got {self.path}")
        if self.path.is_dir():
            raise IKMDNError(f"{what} {self.path} is a folder")
        if not self.path.is_file():
            raise IKMDNError(f"{what} {self.path} does not exist")
        self._npy = self.path.suffix.lower() == ".npy"
        self._rows = self._check()

    def _check_chunk(self, chunk: np.ndarray, where: Callable[[int], str]) -> None:
        for check in (value_problem, *self.checks):
            problem = check(chunk)
            if problem is not None:
                raise IKMDNError(f"{self.path} {where(problem[0])}: {problem[1]}")

    def _check(self) -> int:
        if self._npy:
            arr = _open_npy(self.path, self.width, self.what)
            for start in range(0, len(arr), CHUNK_ROWS):
                chunk = np.asarray(arr[start:start + CHUNK_ROWS], dtype=np.float64)
                self._check_chunk(chunk, lambda i, s=start: f"row {s + i}")
            return len(arr)
        total = 0
        for lines, chunk in self._csv_chunks(CHUNK_ROWS):
            self._check_chunk(chunk, lambda i, n=lines: f"line {n[i]}")
            total += len(chunk)
        return total

    def _csv_chunks(self, size: int) -> Iterator[tuple[list[int], np.ndarray]]:
        lines: list[int] = []
        rows: list[list[float]] = []
        for number, values in _csv_rows(self.path, self.width, self.names, self.what):
            lines.append(number)
            rows.append(values)
            if len(rows) == size:
                yield lines, np.array(rows, dtype=np.float64)
                lines, rows = [], []
        if rows:
            yield lines, np.array(rows, dtype=np.float64)

    def __len__(self) -> int:
        return self._rows

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """The rows in order, as float64 arrays of at most size rows (one empty batch if none)."""
        if self._rows == 0:
            yield np.zeros((0, self.width))
            return
        if self._npy:
            arr = _open_npy(self.path, self.width, self.what)
            for start in range(0, len(arr), size):
                yield np.asarray(arr[start:start + size], dtype=np.float64)
            return
        for _, chunk in self._csv_chunks(size):
            yield chunk
