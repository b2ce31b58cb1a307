"""Output folders for commands that write several files: created, never silently overwritten.

Torch-free, so that evaluating an .onnx model does not need the training extra.
"""

from __future__ import annotations

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
