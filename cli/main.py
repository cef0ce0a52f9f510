"""Entry point of the ``polarxr`` console script: imports every command module, reports bad input cleanly."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from polarxr.cli import adaptation_commands  # noqa: F401  (registers commands)
from polarxr.cli import cluster_commands  # noqa: F401  (registers commands)
from polarxr.cli import cube_commands  # noqa: F401  (registers commands)
from polarxr.cli import discovery_commands  # noqa: F401  (registers commands)
from polarxr.cli import patches_commands  # noqa: F401  (registers commands)
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
    """Run the CLI; a :class:`PolarxrError` becomes one red line naming the file and the problem, exit 2.

    A fault of the machine or the cluster (disk full, a lost scheduler or worker connection) becomes one
    line too, exit 1: nothing was committed, and running the command again finishes the work.
    """
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    console = Console(stderr=True, soft_wrap=True)
    try:
        app()
    except PolarxrError as err:
        # escape: messages hold user paths and hints like polarxr[gpu] that are not rich markup
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        sys.exit(2)
    except (OSError, CommClosedError, TimeoutError) as err:
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        problem = getattr(err, "strerror", None) or str(err) or type(err).__name__
        console.print(f"[bold red]error:[/] {escape(where + problem.splitlines()[0])} ({type(err).__name__}); "
                      "nothing half-written is left: run the command again", highlight=False)
        sys.exit(1)
    except FutureCancelledError as err:  # the scheduler went away and took the run's tasks with it
        console.print(f"[bold red]error:[/] the Dask scheduler was lost mid-run ({escape(str(err).splitlines()[0] if str(err) else 'tasks cancelled')}); "
                      "nothing half-written is left: run the command again", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
