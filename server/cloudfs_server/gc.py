"""Garbage collection of blocks no file version references, safe against racing uploads/commits.

Holding the exclusive gc lock (uploads hold it shared from publishing a file until its row is
upserted), one metadata transaction deletes the rows of unreferenced blocks uploaded before the
grace period, with their availability rows; only then are the files unlinked. A commit that
races it either ran first (refcount > 0: the block is kept) or finds the block unavailable and
gets 409 missing_blocks (the client uploads it again).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.gclock import GcLock
from cloudfs_server.engines.meta import MetadataStore

log = logging.getLogger(__name__)

# Staging files are only abandoned by a crash; never touch one younger than this.
TEMP_MIN_AGE_S = 3600.0


@dataclass
class GcResult:
    blocks: int = 0
    bytes: int = 0
    orphans: int = 0
    temp_files: int = 0


async def collect(
    meta: MetadataStore, blocks: BlockStore, lock: GcLock, grace_s: float
) -> GcResult:
    result = GcResult()
    async with lock.exclusive():
        before_ns = time.time_ns() - int(grace_s * 1e9)
        # In batches: each transaction is short, so the server's commits are not held up.
        while doomed := await meta.collect_garbage(before_ns):
            for block_id, size in doomed:
                await blocks.delete(block_id)
                result.blocks += 1
                result.bytes += size
        # Files without a row: left by a crash between publishing a block and recording it
        # (nobody can be in that window while we hold the lock exclusively).
        known = {b for b, _, _ in await meta.all_blocks()}
        for block_id in await blocks.list_ids():
            if block_id not in known:
                await blocks.delete(block_id)
                result.orphans += 1
    result.temp_files = await blocks.clean_temp(max(grace_s, TEMP_MIN_AGE_S))
    log.info(
        "gc removed %d blocks (%d bytes), %d orphan files, %d temp files",
        result.blocks,
        result.bytes,
        result.orphans,
        result.temp_files,
    )
    return result
