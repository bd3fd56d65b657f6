"""The directory block engine and the gc lock, directly (no HTTP)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cloudfs_server.engines.dir import DirBlockStore
from cloudfs_server.engines.gclock import FileGcLock
from cloudfs_server.errors import (
    BadBlockIdError,
    HashMismatchError,
    NotFoundError,
    TooLargeError,
)

from tests.server.helpers import bid

pytestmark = pytest.mark.asyncio


async def body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> DirBlockStore:
    s = DirBlockStore(tmp_path)
    await s.open()
    return s


async def put(store: DirBlockStore, data: bytes, *chunks: bytes) -> None:
    staged = await store.stage(bid(data), body(*(chunks or (data,))), 1 << 24)
    try:
        await store.publish(staged)
    finally:
        await store.discard(staged)


async def test_stage_publish_read_verify_delete(store: DirBlockStore, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    await put(store, data, data[:1000], data[1000 : 2 << 20], data[2 << 20 :])
    block_id = bid(data)
    path = await store.local_path(block_id)
    assert path == tmp_path / "blocks" / block_id[:2] / block_id[2:4] / block_id
    assert path.read_bytes() == data
    assert await store.read(block_id, 10, 5) == data[10:15]
    assert await store.verify(block_id, len(data)) is None
    assert await store.list_ids() == [block_id]
    assert list((tmp_path / "tmp").iterdir()) == []
    await put(store, data)  # idempotent
    assert await store.delete(block_id) is True
    assert await store.delete(block_id) is False
    assert await store.verify(block_id, len(data)) == "missing"
    with pytest.raises(NotFoundError):
        await store.local_path(block_id)


async def test_mismatch_and_oversize_leave_nothing(store: DirBlockStore, tmp_path: Path) -> None:
    with pytest.raises(HashMismatchError):
        await store.stage(bid(b"a"), body(b"b"), 100)
    with pytest.raises(TooLargeError):
        await store.stage(bid(b"a" * 101), body(b"a" * 50, b"a" * 51), 100)
    with pytest.raises(BadBlockIdError):
        await store.stage("../../etc/passwd", body(b"x"), 100)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert await store.list_ids() == []


async def test_publish_rewrites_a_block_removed_or_damaged_after_stage(
    store: DirBlockStore,
) -> None:
    data = b"block bytes"
    await put(store, data)
    path = await store.local_path(bid(data))
    # The uploader's own block exists, so stage() only hashes and keeps the bytes in memory ...
    staged = await store.stage(bid(data), body(data), 100, known=True)
    assert staged.temp_path is None and b"".join(staged.chunks) == data
    path.unlink()  # ... then gc removes it before publish()
    await store.publish(staged)
    assert path.read_bytes() == data
    path.write_bytes(b"short")  # a damaged copy is replaced by the next upload
    await put(store, data)
    assert path.read_bytes() == data
    path.write_bytes(b"block bytez")  # same size, wrong bytes: fsck finds it
    assert (await store.verify(bid(data), len(data))).startswith("corrupt")


async def test_clean_temp_only_removes_old_files(store: DirBlockStore, tmp_path: Path) -> None:
    old = tmp_path / "tmp" / "old.tmp"
    new = tmp_path / "tmp" / "new.tmp"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1, 1))
    assert await store.clean_temp(3600) == 1
    assert not old.exists() and new.exists()


async def test_gc_lock_exclusive_waits_for_shared_holders(tmp_path: Path) -> None:
    lock = FileGcLock(tmp_path / "gc.lock")
    async with lock.shared(), lock.shared():  # shared holders coexist
        exclusive_entered = asyncio.Event()

        async def exclusive() -> None:
            async with lock.exclusive():
                exclusive_entered.set()

        task = asyncio.create_task(exclusive())
        await asyncio.sleep(0.3)
        assert not exclusive_entered.is_set()
    await asyncio.wait_for(task, 5)
    assert exclusive_entered.is_set()


async def test_a_block_stored_for_someone_else_costs_the_same_work(
    store: DirBlockStore, tmp_path: Path
) -> None:
    data = b"someone else's block"
    await put(store, data)
    staged = await store.stage(bid(data), body(data), 100, known=False)
    try:
        assert staged.temp_path is not None and staged.temp_path.read_bytes() == data
    finally:
        await store.discard(staged)
    assert list((tmp_path / "tmp").iterdir()) == []
