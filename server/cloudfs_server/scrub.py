"""scrub: read every block the metadata knows from every engine, rehash it through the layers,
and copy an intact stored copy to each engine that misses it or holds it damaged (a mirror
member that was down). Without a mirror it only checks.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from cloudfs_server.engines.chain import FormatGuard
from cloudfs_server.engines.gclock import GcLock
from cloudfs_server.engines.meta import MetadataStore
from cloudfs_server.errors import NotFoundError, StoreUnavailableError

log = logging.getLogger(__name__)

SCRUB_PARALLEL = 4


@dataclass
class ScrubResult:
    blocks: int = 0  # block rows checked
    copies_checked: int = 0  # (block, engine) pairs read and rehashed
    intact: int = 0  # blocks intact on every engine
    repaired: int = 0  # copies written to an engine that missed or damaged them
    unrecoverable: list[str] = field(default_factory=list)  # no intact copy anywhere
    unreachable: list[str] = field(default_factory=list)  # an engine did not answer

    @property
    def ok(self) -> bool:
        return not self.unrecoverable and not self.unreachable


async def scrub(meta: MetadataStore, blocks: FormatGuard, lock: GcLock) -> ScrubResult:
    """Holds the gc lock shared (as uploads do), so gc does not delete what scrub copies."""
    views = blocks.chain.member_views()
    result = ScrubResult()
    sem = asyncio.Semaphore(SCRUB_PARALLEL)

    async def one(block_id: str, size: int) -> None:
        async with sem:
            reasons: list[str | None] = []
            for engine, view in views:
                try:
                    reasons.append(await view.verify(block_id, size))
                except StoreUnavailableError as exc:
                    result.unreachable.append(f"{engine.label}: {exc.message}")
                    reasons.append("unreachable")
            result.copies_checked += len(views)
            good = [engine for (engine, _), r in zip(views, reasons, strict=True) if r is None]
            if not good:
                result.unrecoverable.append(f"block {block_id}: {', '.join(map(str, reasons))}")
                return
            if len(good) == len(views):
                result.intact += 1
                return
            stored = await good[0].get_stored(block_id)
            for (engine, _), reason in zip(views, reasons, strict=True):
                if reason is None or reason == "unreachable":
                    continue
                if reason.startswith("corrupt"):
                    try:
                        aside = await engine.quarantine(block_id)
                    except (FileNotFoundError, NotFoundError):
                        aside = "nowhere"
                    log.warning("scrub: moved corrupt copy of %s on %s to %s", block_id,
                                engine.label, aside)  # fmt: skip
                await engine.put_stored(block_id, stored)
                result.repaired += 1
                log.info("scrub: copied block %s to %s (%s)", block_id, engine.label, reason)

    async with lock.shared():
        rows = await meta.all_blocks()
        result.blocks = len(rows)
        await asyncio.gather(*(one(block_id, size) for block_id, size, _ in rows))
    return result
