"""Wrappers around any BlockStore: `BlockLayer` delegates every call to the store below;
`TransformLayer` (compression, encryption) encodes each block's bytes on the way down and decodes
them on the way up, and rehashes the plaintext on every read so it never returns wrong bytes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import blake3

from cloudfs_server.engines.blockstore import BlockStore, StagedBlock, receive
from cloudfs_server.errors import NotFoundError, StoreCorruptError
from cloudfs_server.model import validate_block_id

T = TypeVar("T")


class BlockDecodeError(Exception):
    """A stored block does not decode (bad header, wrong key, damaged bytes). Internal to the
    layers: reads turn it into StoreCorruptError, verify() into a "corrupt: ..." reason."""


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args))


class BlockLayer(BlockStore):
    """Delegates everything to `inner`; subclasses override what they change."""

    def __init__(self, inner: BlockStore) -> None:
        self.inner = inner
        self.label = inner.label

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def stage(
        self, block_id: str, body: AsyncIterator[bytes], max_bytes: int, known: bool = False
    ) -> StagedBlock:
        return await self.inner.stage(block_id, body, max_bytes, known)

    async def publish(self, staged: StagedBlock) -> None:
        await self.inner.publish(staged)

    async def discard(self, staged: StagedBlock) -> None:
        await self.inner.discard(staged)

    async def local_path(self, block_id: str) -> Path | None:
        return await self.inner.local_path(block_id)

    async def read(self, block_id: str, offset: int, length: int) -> bytes:
        return await self.inner.read(block_id, offset, length)

    async def delete(self, block_id: str) -> bool:
        return await self.inner.delete(block_id)

    async def verify(self, block_id: str, size: int) -> str | None:
        return await self.inner.verify(block_id, size)

    async def quarantine(self, block_id: str) -> str:
        return await self.inner.quarantine(block_id)

    async def list_ids(self) -> list[str]:
        return await self.inner.list_ids()

    async def clean_temp(self, older_than_s: float) -> int:
        return await self.inner.clean_temp(older_than_s)

    async def put_stored(self, block_id: str, data: bytes) -> None:
        await self.inner.put_stored(block_id, data)

    async def get_stored(self, block_id: str) -> bytes:
        return await self.inner.get_stored(block_id)

    async def stored_sizes(self) -> dict[str, int] | None:
        return await self.inner.stored_sizes()

    async def get_marker(self, name: str) -> bytes | None:
        return await self.inner.get_marker(name)

    async def put_marker(self, name: str, data: bytes) -> None:
        await self.inner.put_marker(name, data)


def _rehash(block_id: str, data: bytes) -> bool:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest() == block_id


class TransformLayer(BlockLayer):
    """A layer that stores `encode(plaintext)` and reads back `decode(stored)`.

    Staged blocks are kept in memory (at most the block limit) and encoded at publish, in a
    worker thread. There is no local file to sendfile, so `local_path()` is None and the GET
    route calls `read()`, which decodes the whole block, rehashes it and slices.
    """

    def encode(self, block_id: str, data: bytes) -> bytes:
        raise NotImplementedError

    def decode(self, block_id: str, stored: bytes) -> bytes:
        """Raises: BlockDecodeError."""
        raise NotImplementedError

    async def stage(
        self, block_id: str, body: AsyncIterator[bytes], max_bytes: int, known: bool = False
    ) -> StagedBlock:
        validate_block_id(block_id)
        data = await receive(block_id, body, max_bytes)
        return StagedBlock(block_id, len(data), chunks=[data])

    async def publish(self, staged: StagedBlock) -> None:
        await self.put_stored(staged.block_id, b"".join(staged.chunks))
        staged.chunks = []

    async def discard(self, staged: StagedBlock) -> None:
        staged.chunks = []

    async def put_stored(self, block_id: str, data: bytes) -> None:
        await self.inner.put_stored(block_id, await run_in_thread(self.encode, block_id, data))

    async def get_stored(self, block_id: str) -> bytes:
        stored = await self.inner.get_stored(block_id)
        try:
            return await run_in_thread(self.decode, block_id, stored)
        except BlockDecodeError as exc:
            raise StoreCorruptError(
                f"block {block_id} does not decode ({exc}); run `cloudfs-server fsck`"
            ) from exc

    async def local_path(self, block_id: str) -> Path | None:
        return None

    async def read(self, block_id: str, offset: int, length: int) -> bytes:
        data = await self.get_stored(block_id)
        if not await run_in_thread(_rehash, block_id, data):
            raise StoreCorruptError(
                f"block {block_id} decodes to bytes that do not hash to its id; "
                "run `cloudfs-server fsck`"
            )
        return data[offset : offset + length]

    async def verify(self, block_id: str, size: int) -> str | None:
        try:
            data = await self.get_stored(block_id)
        except NotFoundError:
            return "missing"
        except StoreCorruptError as exc:
            return f"corrupt: {exc.__cause__}"
        if len(data) != size:
            return f"corrupt: {len(data)} bytes, expected {size}"
        if not await run_in_thread(_rehash, block_id, data):
            return "corrupt: does not rehash to its id"
        return None
