"""The `ikmdn` command line: thin click commands over the library, one module per command group.

Library errors (IKMDNError) become one-line messages: exit 2 for bad input, 1 for a failed job.
"""

from ikmdn.cli import demo_server, evaluate, solve, train, urdf  # noqa: F401  (registers the commands)
from ikmdn.cli._base import cli, default_model

__all__ = ["cli", "default_model", "main"]


def main() -> None:
    """Console entry point."""
    cli(prog_name="ikmdn")
