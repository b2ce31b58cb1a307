"""The `ikmdn` command group, its error handling and the option types the commands share.

Library errors (IKMDNError) become one-line messages: exit 2 for bad input, 1 for a failed job.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click

from ikmdn import __version__
from ikmdn.errors import IKMDNError
from ikmdn.untrusted import MAX_SEED, short


def default_model() -> Path:
    """The shipped bishop model: exported_models/bishop.onnx of the source tree (editable
    installs) or the copy installed as package data (ikmdn.exported_models)."""
    in_tree = Path(__file__).resolve().parents[2] / "exported_models" / "bishop.onnx"
    if in_tree.is_file():
        return in_tree
    from importlib.resources import files

    try:
        return Path(str(files("ikmdn.exported_models") / "bishop.onnx"))
    except ModuleNotFoundError:
        raise IKMDNError("the shipped model bishop.onnx is not installed; pass --model") from None


class _Group(click.Group):
    """Turns the library's errors into click errors with the right exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except IKMDNError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None
        except BrokenPipeError:  # the reader went away (e.g. `ikmdn solve ... | head`): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:  # a path the user gave cannot be read or written
            error = click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
            error.exit_code = 2
            raise error from None


def positive(ctx, param, value):
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a positive number, got {value}")
    return value


SEED = click.IntRange(min=0, max=MAX_SEED)
THREADS = click.IntRange(min=1, max=1024)
# The pip line for the training extra: the same CPU build of torch the README and CI install.
TORCH_INSTALL = "pip install 'ikmdn[train]' torch==2.13.0"


def require_torch(command: str) -> None:
    """A one-line error (exit 2) when `ikmdn COMMAND` needs torch and it cannot be imported."""
    try:
        import torch  # noqa: F401
    except (ImportError, OSError) as exc:  # not installed, or a broken install (missing library)
        reason = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise IKMDNError(f"ikmdn {command} needs PyTorch, which cannot be imported ({reason}); "
                         f"install it with: {TORCH_INSTALL}") from None


def _integers(value: str, what: str, lowest: int, low_message: str) -> tuple[int, ...]:
    """'a,b,c' -> (a, b, c), each at least lowest; errors echo at most a short prefix of value."""
    try:
        numbers = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated {what}, got {short(value, 40)}") from None
    if min(numbers) < lowest:
        raise click.BadParameter(f"{low_message}, got {short(value, 40)}")
    return numbers


def hidden_widths(ctx, param, value):
    """--hidden 128,128 -> (128, 128)."""
    if value is None:
        return None
    return _integers(value, "integers such as 128,128,128", 1, "widths must be positive")


def joint_order_list(ctx, param, value):
    """--joint-order 0,4,5,1,3,2 -> (0, 4, 5, 1, 3, 2); the arm checks the indices."""
    if value is None:
        return None
    return _integers(value, "joint indices such as 0,4,5,1,3,2", 0, "joint indices start at 0")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ikmdn")
def cli():
    """ikmdn: every inverse-kinematics solution of a robot arm, from a mixture density network.

    Example: ikmdn solve 0.6 0.7
    """
