"""fsck: every block present and rehashing to its id, metadata consistent, refcounts right.

With `repair`: refcounts and counters are recomputed; a corrupt block is quarantined (the
directory engine moves it to `DATA/corrupt/`), and lost blocks lose their availability rows, so
the next upload by a client that still has the data heals them; orphan block files are left
for gc.
"""

from __future__ import annotations

import asyncio

from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.gclock import GcLock
from cloudfs_server.engines.meta import MetadataStore
from cloudfs_server.model import FsckReport

VERIFY_PARALLEL = 4


async def check(meta: MetadataStore, blocks: BlockStore, lock: GcLock, repair: bool) -> FsckReport:
    """Run every check; with `repair`, hold the exclusive gc lock so nothing races the fixes."""
    if repair:
        async with lock.exclusive():
            return await _check(meta, blocks, repair)
    return await _check(meta, blocks, repair)


async def _check(meta: MetadataStore, blocks: BlockStore, repair: bool) -> FsckReport:
    rows = await meta.all_blocks()
    sem = asyncio.Semaphore(VERIFY_PARALLEL)

    async def verify(block_id: str, size: int) -> str | None:
        async with sem:
            return await blocks.verify(block_id, size)

    reasons = await asyncio.gather(*(verify(b, size) for b, size, _ in rows))
    lost: set[str] = set()
    lost_errors: list[str] = []
    moved: list[str] = []
    for (block_id, _size, refcount), reason in zip(rows, reasons, strict=True):
        if reason is None:
            continue
        lost.add(block_id)
        if refcount > 0 or not repair:
            lost_errors.append(f"block {block_id}: {reason} (referenced {refcount} times)")
        if repair and reason.startswith("corrupt"):
            aside = await blocks.quarantine(block_id)
            moved.append(f"moved corrupt block {block_id} to {aside}")
    report = await meta.check(repair, lost)
    report.errors[:0] = lost_errors
    report.repaired.extend(moved)
    known = {b for b, _, _ in rows}
    orphans = [b for b in await blocks.list_ids() if b not in known]
    if orphans:
        report.notes.append(
            f"{len(orphans)} block file(s) without a metadata row (an upload interrupted by a "
            "crash); `cloudfs-server gc` removes them"
        )
    return report
