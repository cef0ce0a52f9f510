"""Rich progress bars for dask work, on the local scheduler and on a ``distributed`` cluster."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from dask.callbacks import Callback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_progress(transient: bool = False) -> Progress:
    """The progress bar style used by every polarxr command."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=transient,
    )


class _RichCallback(Callback):
    """Advance a Rich task as the local dask scheduler finishes tasks."""

    def __init__(self, progress: Progress, description: str):
        super().__init__()
        self._progress = progress
        self._description = description
        self._task = None

    def _start_state(self, dsk, state):
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._task = self._progress.add_task(self._description, total=total)

    def _posttask(self, key, result, dsk, state, worker_id):
        self._progress.advance(self._task)


@contextlib.contextmanager
def dask_progress(description: str, enabled: bool = True) -> Iterator[None]:
    """Show a progress bar for dask computations run inside the block.

    On the local scheduler the bar counts tasks; under a ``distributed`` client the client's own
    progress is shown through the dashboard, and this prints the dashboard link once.
    """
    if not enabled:
        yield
        return
    from polarxr.graphs import active_client

    client = active_client()
    if client is not None:
        with make_progress() as progress:
            task = progress.add_task(f"{description} (dashboard: {client.dashboard_link})", total=None)
            yield
            progress.update(task, total=1, completed=1)
        return
    with make_progress() as progress, _RichCallback(progress, description):
        yield


def track_futures(futures: Iterable, description: str) -> Iterator:
    """Yield ``(future, result)`` as ``distributed`` futures complete, advancing a progress bar."""
    from distributed import as_completed

    futures = list(futures)
    with make_progress() as progress:
        task = progress.add_task(description, total=len(futures))
        for future, result in as_completed(futures, with_results=True):
            progress.advance(task)
            yield future, result
