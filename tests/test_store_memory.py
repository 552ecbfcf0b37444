from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from store_contract import StoreContract, body_of, new_record

from wsgi_deferred.stores.memory import MemoryStore


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        store = MemoryStore()
        yield store
        store.close()


def test_bounded_size_evicts_oldest_finished_first() -> None:
    store = MemoryStore(max_records=3)
    done = new_record()
    store.create(done)
    store.finish(done.id, "200 OK", [], body_of(b"x"), time.time() + 600)
    queued = [new_record() for _ in range(3)]
    for record in queued:
        store.create(record)
    assert store.get(done.id) is None
    assert all(store.get(r.id) is not None for r in queued)
