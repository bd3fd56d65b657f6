"""The block store (layer 2): cache → single-flight download → verify → cache, read-ahead, and
uploads of dirty blocks.

Downloads of one block are single-flight; a block that fails verification is fetched once more,
then `CorruptBlockError` (EIO). Blocks become clean (evictable) once the server has them.
"""

from __future__ import annotations

import logging

import trio

from cloudfs import errors
from cloudfs.api import ApiClient
from cloudfs.cache import LocalCache
from cloudfs.locks import SingleFlight

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview


class BlockStore:
    """Reads and uploads blocks. `nursery` runs read-ahead; it may be None (no read-ahead)."""

    def __init__(
        self,
        cache: LocalCache,
        api: ApiClient,
        nursery: trio.Nursery | None = None,
        download_limit: int = 8,
        upload_limit: int = 4,
    ) -> None:
        self.cache = cache
        self.api = api
        self.nursery = nursery
        self._flights: SingleFlight[bytes | bytearray] = SingleFlight()
        self._upload_flights: SingleFlight[int] = SingleFlight()
        self._download_limiter = trio.CapacityLimiter(download_limit)
        self._upload_limiter = trio.CapacityLimiter(upload_limit)
        self._prefetching: set[str] = set()
        self.downloads = 0
        self.uploads = 0
        self.uploaded_bytes = 0
        self.uploads_pending = 0
        self.upload_bytes_pending = 0

    async def read(
        self, block_id: str, start: int = 0, end: int | None = None
    ) -> bytes | bytearray | memoryview:
        """Bytes `[start:end)` of a block, from the cache or downloaded (verified, cached).

        Raises:
            CorruptBlockError: the server's bytes failed verification twice.
            NodeNotFoundError: the server does not have the block for us.
            TemporaryError: the server cannot be reached within the retry budget.
        """
        data = self.cache.get_block(block_id, start, end)
        if data is not None:
            return data
        block = await self.fetch(block_id)
        if start or (end is not None and end < len(block)):
            return memoryview(block)[start:end]  # no copy: pyfuse3 takes any buffer
        return block

    async def fetch(self, block_id: str) -> bytes | bytearray:
        """The whole block, downloaded once however many callers ask at the same time."""
        return await self._flights.run(block_id, lambda: self._download(block_id))

    async def _download(self, block_id: str) -> bytes | bytearray:
        cached = self.cache.get_block(block_id)
        if cached is not None:
            return cached
        async with self._download_limiter:
            try:
                data = await self.api.get_block(block_id)
            except errors.CorruptBlockError:
                log.warning("block %s failed verification; fetching it once more", block_id)
                data = await self.api.get_block(block_id)
        self.downloads += 1
        self.cache.put_clean(block_id, data)
        return data

    async def _put_one(self, block_id: str, data: Buffer | None = None) -> int:
        async with self._upload_limiter:
            if data is None:
                # read back only when the caller no longer holds the bytes: reading LMDB's
                # map makes its pages resident in this process
                data = self.cache.get_block(block_id)
            if data is None:
                raise errors.CorruptBlockError(
                    f"block {block_id} to upload is missing from the local cache"
                )
            self.upload_bytes_pending += len(data)
            try:
                await self.api.put_block(block_id, data)
            finally:
                self.upload_bytes_pending -= len(data)
        self.cache.mark_clean([block_id])
        self.uploads += 1
        self.uploaded_bytes += len(data)
        return len(data)

    def prefetch(self, block_ids: list[str]) -> None:
        """Start background downloads of blocks not cached yet (read-ahead). Never raises."""
        if self.nursery is None:
            return
        for block_id in block_ids:
            if block_id in self._prefetching or self._flights.in_flight(block_id):
                continue
            if self.cache.has_block(block_id):
                continue
            self._prefetching.add(block_id)
            self.nursery.start_soon(self._prefetch_one, block_id)

    async def _prefetch_one(self, block_id: str) -> None:
        try:
            await self.fetch(block_id)
        except errors.CloudfsError as exc:  # read-ahead is a hint; the real read reports errors
            log.info("read-ahead of %s failed: %s", block_id, exc)
        finally:
            self._prefetching.discard(block_id)

    async def upload(
        self,
        block_ids: list[str],
        known_missing: bool = False,
        data: dict[str, Buffer] | None = None,
    ) -> int:
        """Make sure the server has every block in `block_ids`. Clean blocks are known to the
        server already; dirty ones are checked with one `missing` call (or, when they are
        few and small, simply PUT: uploads are idempotent), and the missing ones uploaded a few
        at a time and marked clean. `known_missing`: the server said so; upload them all.
        `data`: bytes of (some of) the blocks the caller still holds, sent instead of reading
        them back from the cache.
        Returns bytes uploaded.

        Raises:
            TemporaryError: server unreachable (the blocks stay dirty in the cache).
            CorruptBlockError: a dirty block in the cache no longer matches its id.
        """
        unique = list(dict.fromkeys(block_ids))
        if not known_missing:
            unique = [b for b in unique if self.cache.is_dirty(b)]
        if not unique:
            return 0
        small = len(unique) <= 16 and sum(self.cache.block_size(b) or 0 for b in unique) <= (
            1 << 20
        )
        if known_missing or small:
            missing = unique
        else:
            missing = await self.api.missing_blocks(unique)
            self.cache.mark_clean(set(unique) - set(missing))
        sent = 0
        self.uploads_pending += len(missing)

        async def one(block_id: str) -> None:
            nonlocal sent
            try:
                # single-flight: a commit joins an upload the writer's sealing already started
                held = data.get(block_id) if data else None
                sent += await self._upload_flights.run(
                    block_id, lambda: self._put_one(block_id, held)
                )
            finally:
                self.uploads_pending -= 1

        try:
            async with trio.open_nursery() as nursery:
                for block_id in missing:
                    nursery.start_soon(one, block_id)
        except BaseExceptionGroup as group:
            # Surface one of our errors (they mean the same to the caller); re-raise the rest.
            for exc in group.exceptions:
                if isinstance(exc, errors.CloudfsError):
                    raise exc from group
            raise
        return sent
