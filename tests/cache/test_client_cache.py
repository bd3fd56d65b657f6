"""The LMDB cache of the mount: budget, LRU eviction of clean blocks only, persistence across
reopen, corruption detection, the durable commit queue."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import pytest

from cloudfs import errors
from cloudfs.cache import LocalCache
from cloudfs.chunking import block_id_of

KiB = 1024


def blk(seed: int, n: int = 100 * KiB) -> tuple[str, bytes]:
    data = os.urandom(n)
    return block_id_of(data), data


def with_budget(path: Path, budget: int) -> LocalCache:
    """A cache whose block budget (limit minus LMDB overhead room) is `budget`."""
    cache = LocalCache(path, budget * 4 // 3 + 4)
    assert budget <= cache.block_budget_bytes < budget + 8
    return cache


def test_budget_and_lru_eviction(tmp_path: Path) -> None:
    cache = with_budget(tmp_path / "c", 350 * KiB)
    a, b, c, d = (blk(i) for i in range(4))
    for bid, data in (a, b, c):
        assert cache.put_clean(bid, data)
    assert cache.get_block(a[0]) == a[1]  # a is now the most recently used
    assert cache.put_clean(*d)  # evicts the least recently used: b
    assert cache.get_block(b[0]) is None
    assert cache.get_block(a[0]) == a[1] and cache.get_block(d[0]) == d[1]
    assert cache.used_bytes <= 350 * KiB
    cache.reserved_bytes = 150 * KiB  # staging counts against the budget too
    assert cache.put_clean(*blk(9))
    assert cache.used_bytes <= 200 * KiB
    cache.close()


def test_dirty_blocks_are_never_evicted(tmp_path: Path) -> None:
    cache = with_budget(tmp_path / "c", 250 * KiB)
    d1, d2, c1 = blk(1), blk(2), blk(3)
    cache.put_dirty([d1, d2])
    assert cache.dirty_bytes == 200 * KiB
    assert cache.put_clean(*c1) is False  # no room: a clean block is simply not cached
    with pytest.raises(errors.QuotaExceededError):
        cache.put_dirty([blk(4)])
    cache.mark_clean([d1[0]])
    assert cache.dirty_bytes == 100 * KiB
    cache.put_dirty([blk(5)])  # now d1 (clean) can be evicted
    assert cache.get_block(d1[0]) is None
    assert cache.get_block(d2[0]) == d2[1]
    cache.close()


def test_cache_survives_reopen_with_state(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "c", 1 << 20)
    clean, dirty = blk(1), blk(2)
    cache.put_clean(*clean)
    cache.put_dirty([dirty])
    cache.put_queued(5, {"node_id": 5, "name": "x"})
    cache.add_conflict(1, {"name": "a", "copy": "b"})
    cache.close()
    again = LocalCache(tmp_path / "c", 1 << 20)
    assert again.get_block(clean[0]) == clean[1]
    assert again.is_dirty(dirty[0]) and again.dirty_bytes == len(dirty[1])
    assert again.used_bytes == len(clean[1]) + len(dirty[1])
    assert [e["node_id"] for e in again.queued()] == [5]
    assert again.recent_conflicts()[0]["copy"] == "b"
    again.drop_queued(5, [dirty[0]])
    assert again.queued() == [] and again.dirty_bytes == 0
    again.close()


def test_corrupted_block_is_detected_on_first_read(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "c", 1 << 20)
    bid, data = blk(1)
    cache.put_clean(bid, data)
    cache.close()
    env = lmdb.open(str(tmp_path / "c"), max_dbs=16)
    db = env.open_db(b"blocks")
    flipped = 0
    with env.begin(write=True, db=db) as txn:
        for key, value in list(txn.cursor()):
            at = value.find(data[1000:1100])
            if at >= 0:
                bad = bytearray(value)
                bad[at] ^= 0xFF
                txn.put(key, bytes(bad))
                flipped += 1
    env.close()
    assert flipped == 1
    again = LocalCache(tmp_path / "c", 1 << 20)
    assert again.get_block(bid) is None, "a corrupted block must not be returned"
    assert not again.has_block(bid) and again.used_bytes == 0
    assert again.verify() == []
    again.close()


def test_metadata_entries(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "c", 1 << 20)
    cache.put_node({"id": 9, "parent": 1, "name": "f", "type": "file"})
    assert cache.get_entry(1, "f") == 9 and cache.get_node(9)["name"] == "f"
    cache.drop_node(9)
    assert cache.get_node(9) is None and cache.get_entry(1, "f") is None
    cache.close()
