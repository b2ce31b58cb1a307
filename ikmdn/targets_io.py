"""Reading target files (.csv or .npy, one target a row) in bounded-memory batches.

A file is checked whole before any batch is handed out, so a bad row at the end fails the job
before anything has been written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ikmdn.errors import IKMDNError

SUFFIXES = (".csv", ".npy")


def _csv_rows(path: Path, width: int) -> Iterator[tuple[int, list[float]]]:
    """(line number, values) for each data row; '#' comments, blank lines and one header skipped."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise IKMDNError(f"cannot read targets file {path}: {exc.strerror}") from None
    seen_data = False
    with f:
        try:
            for number, line in enumerate(f, start=1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                fields = [v.strip() for v in text.split(",")]
                try:
                    values = [float(v) for v in fields]
                except ValueError:
                    if not seen_data and not any(_is_number(v) for v in fields):
                        seen_data = True  # a header line such as "x,y"
                        continue
                    bad = next(v for v in fields if not _is_number(v))
                    raise IKMDNError(f"{path} line {number}: {bad!r} is not a number") from None
                seen_data = True
                if len(values) != width:
                    raise IKMDNError(f"{path} line {number}: expected {width} comma-separated "
                                     f"numbers, got {len(values)}")
                if not all(np.isfinite(values)):
                    raise IKMDNError(f"{path} line {number}: NaN or infinite value")
                yield number, values
        except UnicodeDecodeError:
            raise IKMDNError(f"{path} is not a text CSV file") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _open_npy(path: Path, width: int) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IKMDNError(f"cannot read {path} as a .npy array: {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != width:
        raise IKMDNError(f"{path}: expected an array of shape (N, {width}), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise IKMDNError(f"{path}: expected real numbers, got dtype {arr.dtype}")
    return arr


class TargetsFile:
    """A validated targets file: len() rows, batches(size) yields float64 (n, width) arrays."""

    def __init__(self, path: str | Path, width: int):
        self.path = Path(path)
        self.width = width
        if self.path.suffix.lower() not in SUFFIXES:
            raise IKMDNError(f"targets file must end in {' or '.join(SUFFIXES)}, got {self.path}")
        if self.path.is_dir():
            raise IKMDNError(f"targets file {self.path} is a folder")
        if not self.path.is_file():
            raise IKMDNError(f"targets file {self.path} does not exist")
        self._npy = self.path.suffix.lower() == ".npy"
        self._rows = self._check()

    def _check(self) -> int:
        if self._npy:
            arr = _open_npy(self.path, self.width)
            for start in range(0, len(arr), 65536):
                chunk = np.asarray(arr[start:start + 65536], dtype=np.float64)
                bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
                if bad.size:
                    raise IKMDNError(f"{self.path} row {start + bad[0]}: NaN or infinite value")
            return len(arr)
        return sum(1 for _ in _csv_rows(self.path, self.width))

    def __len__(self) -> int:
        return self._rows

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """The rows in order, as float64 arrays of at most size rows (one empty batch if none)."""
        if self._rows == 0:
            yield np.zeros((0, self.width))
            return
        if self._npy:
            arr = _open_npy(self.path, self.width)
            for start in range(0, len(arr), size):
                yield np.asarray(arr[start:start + size], dtype=np.float64)
            return
        rows: list[list[float]] = []
        for _, values in _csv_rows(self.path, self.width):
            rows.append(values)
            if len(rows) == size:
                yield np.array(rows, dtype=np.float64)
                rows = []
        if rows:
            yield np.array(rows, dtype=np.float64)
