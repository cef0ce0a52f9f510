"""Several collections computed in one graph come back in the order given, whatever their kinds."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

from polarxr.graphs import compute_together, submit_together

EXPECTED = (120, "first delayed", 30, 2)


def _mixed():
    """Arrays and delayed objects interleaved; the arrays share the chunks of ``base`` (reads counted)."""
    reads = []

    def read(block):
        reads.append(1)
        return block

    base = da.arange(16, chunks=4).map_blocks(read, dtype=int)
    return [base.sum(), dask.delayed(str)("first delayed"), (base * 2).max(), dask.delayed(len)([1, 2]),
            base[:4]], reads


def test_mixed_arrays_and_delayed_objects_come_back_in_order():
    objects, reads = _mixed()
    *scalars, head = compute_together(*objects, scheduler="sync")
    assert tuple(scalars) == EXPECTED
    np.testing.assert_array_equal(head, [0, 1, 2, 3])
    objects, plain_reads = _mixed()
    dask.compute(*objects, scheduler="sync")
    assert len(reads) == len(plain_reads)  # the same graph: shared chunks read no more often than dask's


def test_in_order_on_a_distributed_cluster():
    objects, _ = _mixed()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert tuple(client.gather(submit_together(client, objects))[:4]) == EXPECTED
        assert compute_together(*objects)[:4] == EXPECTED


def test_plain_values_and_containers():
    assert compute_together() == ()
    assert compute_together(1, "no dask here") == (1, "no dask here")
    array, delayed = da.ones(4, chunks=2).sum(), dask.delayed(len)([1])
    assert compute_together([delayed, delayed], array, {"n": delayed}) == ([1, 1], 4.0, {"n": 1})
    with pytest.raises(TypeError, match="several kinds"):
        compute_together([delayed, array])
