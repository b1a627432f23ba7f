"""A short load run against both stores: concurrent clients, zero lost or corrupted caches."""

from __future__ import annotations

import asyncio

from transport_helpers import TOKEN

from kvstack.transport.loadtest import run_load, synthetic_caches


def test_concurrent_clients_lose_and_corrupt_nothing(serve, store_url):
    server = serve(store_url)
    caches = synthetic_caches(40, tokens=64, layers=2)
    report = asyncio.run(run_load(server.url, TOKEN, caches, clients=16, codes="zstd"))
    assert report.errors == []
    assert report.lost == [] and report.corrupted == []
    assert len(report.pushes) == len(report.pulls) == 40
    # distinct contexts, distinct keys: the store really holds 40 caches
    assert len({str(c.context_ids.tolist()) for c in caches}) == 40
