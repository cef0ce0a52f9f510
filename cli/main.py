"""Entry point of the ``polarxr`` console script: imports every command module, reports bad input cleanly."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from polarxr.cli import cluster_commands  # noqa: F401  (registers commands)
from polarxr.cli import cube_commands  # noqa: F401  (registers commands)
from polarxr.cli import discovery_commands  # noqa: F401  (registers commands)
from polarxr.cli import ingest_commands  # noqa: F401  (registers commands)
from polarxr.cli import observations_commands  # noqa: F401  (registers commands)
from polarxr.cli import predict_commands  # noqa: F401  (registers commands)
from polarxr.cli import process_commands  # noqa: F401  (registers commands)
from polarxr.cli import scene_commands  # noqa: F401  (registers commands)
from polarxr.cli import synth_commands  # noqa: F401  (registers commands)
from polarxr.cli import train_commands  # noqa: F401  (registers commands)
from polarxr.cli.app import app
from polarxr.errors import PolarxrError


def main() -> None:
    """Run the CLI; a :class:`PolarxrError` becomes one red line naming the file and the problem, exit 2."""
    try:
        app()
    except PolarxrError as err:
        # escape: messages hold user paths and hints like polarxr[gpu] that are not rich markup
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
