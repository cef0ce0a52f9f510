"""Computing several dask collections in one graph, their results in the order given; the client dask
computes on (:func:`active_client`).

``dask.compute(array, delayed, array)`` in dask 2026.7–2026.8 merges the graphs of the collections that
share an optimizer (``__dask_optimize__``) and hands back their results grouped by optimizer, in the order
each optimizer first appears, not in the order given: a silent mix-up (``client.compute`` alike). Handing
dask the collections already grouped that way makes its grouping the identity, so the graph (shared tasks
computed once, the same fusion) stays what dask builds, and the results are put back in the caller's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dask

if TYPE_CHECKING:
    from distributed import Client, Future


def _kind(obj: Any) -> Any:
    """The optimizer dask groups ``obj`` by; for a Python container, that of the collections it holds."""
    if dask.is_dask_collection(obj):
        return getattr(obj, "__dask_optimize__", None)
    if isinstance(obj, (list, tuple, set, dict)):
        kinds = {_kind(inner) for inner in dask.base.unpack_collections(obj)[0]}
        if len(kinds) > 1:
            raise TypeError("a container holds dask collections of several kinds: pass them one by one")
        return kinds.pop() if kinds else None
    return None


def _grouped_order(objects: Sequence[Any]) -> list[int]:
    """Positions of ``objects`` grouped by optimizer, in first-appearance order (dask's own grouping)."""
    groups: dict[Any, list[int]] = {}
    for position, obj in enumerate(objects):
        groups.setdefault(_kind(obj), []).append(position)
    return [position for group in groups.values() for position in group]


def _in_given_order(order: list[int], results: Sequence[Any]) -> list[Any]:
    ordered: list[Any] = [None] * len(order)
    for position, result in zip(order, results, strict=True):
        ordered[position] = result
    return ordered


def compute_together(*objects: Any, **kwargs: Any) -> tuple[Any, ...]:
    """``dask.compute(*objects)`` in one graph, the results in the order of ``objects`` (dask arrays and
    delayed objects mixed freely; plain values and containers of one kind of collection pass through).
    ``kwargs`` go to ``dask.compute``."""
    order = _grouped_order(objects)
    return tuple(_in_given_order(order, dask.compute(*(objects[k] for k in order), **kwargs)))


def submit_together(client: Client, objects: Sequence[Any], **kwargs: Any) -> list[Future]:
    """``client.compute(objects)`` in one graph, one future per object in the order of ``objects``.
    ``kwargs`` go to ``Client.compute`` (e.g. ``retries``)."""
    order = _grouped_order(objects)
    return _in_given_order(order, client.compute([objects[k] for k in order], **kwargs))


def active_client() -> Client | None:
    """The ``distributed`` client that ``dask.compute`` runs on now; None on a local scheduler (none made,
    or one chosen with ``dask.config.set(scheduler=...)`` over a client)."""
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        return None
    return client if dask.base.get_scheduler() == client.get else None
