"""Output folders for commands that write several files: created, never silently overwritten.

Torch-free, so that evaluating an .onnx model does not need the training extra.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ikmdn.errors import IKMDNError


def prepare_out_dir(out_dir: str | Path, force: bool) -> Path:
    """Create out_dir; refuse (unless force) when it already holds files."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IKMDNError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise IKMDNError(f"--out {out} already holds files; choose another folder or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_output_file(path: str | Path, force: bool) -> Path:
    """A file path the job may write: not a folder, its parent a folder (created if missing),
    not overwritten unless force."""
    path = Path(path)
    if path.is_dir():
        raise IKMDNError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise IKMDNError(f"{path} already exists; pass --force to overwrite it")
    if path.parent.exists() and not path.parent.is_dir():
        raise IKMDNError(f"cannot write {path}: {path.parent} is not a folder")
    return path


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a fresh temporary file beside path, then move it onto path: readers
    never see half a file, and no other file of the user's is touched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
