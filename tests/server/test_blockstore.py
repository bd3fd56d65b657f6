"""Block stores directly (no HTTP): one conformance suite over every engine and layer stack
(dir, s3 on moto, compress(dir), encrypt(dir), mirror(dir, dir), compress+encrypt(s3)), then
what is particular to the directory engine, the layers, the format guard and the gc lock."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.chain import BlockChain, FormatGuard, parse_blocks_url
from cloudfs_server.engines.dir import DirBlockStore
from cloudfs_server.engines.gclock import FileGcLock
from cloudfs_server.errors import (
    BadBlockIdError,
    HashMismatchError,
    NotFoundError,
    StoreCorruptError,
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


async def put(store: BlockStore, data: bytes, *chunks: bytes) -> None:
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


# ---- the conformance suite: every engine and layer stack ---------------------------------
KEY = bytes(range(32))
STACKS = ["dir", "s3", "compress-dir", "encrypt-dir", "mirror-dir-dir", "compress-encrypt-s3"]
TEXT = b"".join(
    b"def line_%d(x):\n    return x * %d  # some source text\n" % (i, i) for i in range(30_000)
)


@dataclass
class Stack:
    store: FormatGuard
    chain: BlockChain
    layered: bool  # compress and/or encrypt: reads are decoded and rehashed


def _chain(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> BlockChain:
    def s3() -> BlockStore:
        return parse_blocks_url(request.getfixturevalue("bucket_url"))

    if kind == "dir":
        return BlockChain([DirBlockStore(tmp_path / "a")])
    if kind == "s3":
        return BlockChain([s3()])
    if kind == "compress-dir":
        return BlockChain([DirBlockStore(tmp_path / "a")], compress=True)
    if kind == "encrypt-dir":
        return BlockChain([DirBlockStore(tmp_path / "a")], key=KEY)
    if kind == "mirror-dir-dir":
        return BlockChain([DirBlockStore(tmp_path / "a"), DirBlockStore(tmp_path / "b")])
    assert kind == "compress-encrypt-s3"
    return BlockChain([s3()], compress=True, key=KEY)


@pytest_asyncio.fixture(params=STACKS)
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    chain = _chain(request.param, tmp_path, request)
    guard = chain.build()
    await guard.open()
    try:
        yield Stack(guard, chain, bool(chain.layers()))
    finally:
        await guard.close()


async def damage(chain: BlockChain, block_id: str, engines: int | None = None) -> None:
    """Flip bytes of the stored copy on the first `engines` engines (all by default)."""
    for engine in chain.engines[:engines]:
        stored = bytearray(await engine.get_stored(block_id))
        stored[len(stored) // 2] ^= 0xFF
        await engine.delete(block_id)
        await engine.put_stored(block_id, bytes(stored))


async def test_conformance_roundtrip_ranges_listing_delete(stack: Stack) -> None:
    store = stack.store
    data = os.urandom(3 << 20)
    await put(store, data, data[:1000], data[1000 : 2 << 20], data[2 << 20 :])
    block_id = bid(data)
    assert await store.read(block_id, 10, 5) == data[10:15]
    assert await store.read(block_id, 0, len(data)) == data
    assert await store.read(block_id, len(data) - 7, 7) == data[-7:]
    path = await store.local_path(block_id)
    if path is not None:
        assert path.read_bytes() == data
    assert await store.verify(block_id, len(data)) is None
    assert await store.verify(block_id, len(data) + 1) is not None
    assert await store.list_ids() == [block_id]
    await put(store, data)  # idempotent
    assert await store.list_ids() == [block_id]
    sizes = await store.stored_sizes()
    assert sizes is not None and set(sizes) == {block_id}
    assert await store.delete(block_id) is True
    assert await store.delete(block_id) is False
    assert await store.verify(block_id, len(data)) == "missing"
    assert await store.list_ids() == []
    with pytest.raises(NotFoundError):
        await store.read(block_id, 0, 10)
    assert await store.clean_temp(3600) == 0


async def test_conformance_bad_uploads_store_nothing(stack: Stack) -> None:
    store = stack.store
    with pytest.raises(HashMismatchError):
        await store.stage(bid(b"a"), body(b"b"), 100)
    with pytest.raises(TooLargeError):
        await store.stage(bid(b"a" * 101), body(b"a" * 50, b"a" * 51), 100)
    with pytest.raises(BadBlockIdError):
        await store.stage("../../etc/passwd", body(b"x"), 100)
    assert await store.list_ids() == []


async def test_conformance_publish_after_gc_removed_the_block(stack: Stack) -> None:
    store = stack.store
    data = b"block bytes " * 100
    await put(store, data)
    staged = await store.stage(bid(data), body(data), 1 << 20, known=True)
    await store.delete(bid(data))  # gc removes it between stage() and publish()
    try:
        await store.publish(staged)
    finally:
        await store.discard(staged)
    assert await store.read(bid(data), 0, len(data)) == data
    assert await store.verify(bid(data), len(data)) is None


async def test_conformance_damage_is_found_and_quarantined(stack: Stack) -> None:
    store = stack.store
    data = os.urandom(100_000)
    block_id = bid(data)
    await put(store, data)
    await damage(stack.chain, block_id)
    reason = await store.verify(block_id, len(data))
    assert reason is not None and reason.startswith("corrupt"), reason
    if stack.layered:  # decoded and rehashed on read: an error, never wrong bytes
        with pytest.raises(StoreCorruptError):
            await store.read(block_id, 0, 10)
    where = await store.quarantine(block_id)
    assert block_id in where
    assert await store.verify(block_id, len(data)) == "missing"
    assert await store.list_ids() == []
    await put(store, data)  # the next upload stores it anew
    assert await store.verify(block_id, len(data)) is None


async def test_conformance_stored_sizes_and_markers(stack: Stack) -> None:
    store = stack.store
    noise = os.urandom(200_000)
    await put(store, TEXT)
    await put(store, noise)
    sizes = await store.stored_sizes()
    assert sizes is not None
    compress = stack.chain.compress
    assert (sizes[bid(TEXT)] < len(TEXT) // 4) == compress, (sizes[bid(TEXT)], len(TEXT))
    overhead = (1 if compress else 0) + (29 if stack.chain.key else 0)
    assert sizes[bid(noise)] == len(noise) + overhead
    assert await store.get_marker("probe") is None
    await store.put_marker("probe", b"v1")
    await store.put_marker("probe", b"v2")
    assert await store.get_marker("probe") == b"v2"
