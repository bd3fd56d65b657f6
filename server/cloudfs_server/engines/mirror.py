"""The mirror layer: every block written to each member store, read from whichever answers.

A member that is down (StoreUnavailableError, or OSError from a local disk) is skipped with a
warning and left alone for `DOWN_S` seconds (reads and writes do not wait on it); a write succeeds
if at least one member took it, and `cloudfs-server scrub` (scrub.py) later copies to a member
whatever it missed. Only when every member fails does a call fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from cloudfs_server.engines.blockstore import BlockStore, StagedBlock, receive
from cloudfs_server.errors import NotFoundError, StoreConfigError, StoreUnavailableError
from cloudfs_server.model import validate_block_id

log = logging.getLogger(__name__)

T = TypeVar("T")
DOWN = (StoreUnavailableError, OSError)  # a member's failure that the other members absorb
DOWN_S = 15.0  # after a failure, a member is skipped this long (then tried again)


class MirrorStore(BlockStore):
    def __init__(self, members: list[BlockStore]) -> None:
        if len(members) < 2:
            raise StoreConfigError("a mirror needs at least two block stores")
        self.members = members
        self.label = "mirror(" + ", ".join(m.label for m in members) + ")"
        self._down_until = [0.0] * len(members)  # monotonic time until which a member is skipped

    def _mark(self, index: int, exc: BaseException | None, what: str) -> None:
        if exc is None:
            if self._down_until[index]:
                log.info("mirror member %s answers again", self.members[index].label)
            self._down_until[index] = 0.0
            return
        if not self._down_until[index]:
            log.warning(
                "mirror member %s is down (%s: %s); skipping it for %g s, "
                "`cloudfs-server scrub` copies what it misses",
                self.members[index].label,
                what,
                exc,
                DOWN_S,
            )
        self._down_until[index] = time.monotonic() + DOWN_S

    def _order(self) -> list[int]:
        """Member indexes to try: those not marked down first (in configured order)."""
        now = time.monotonic()
        return sorted(range(len(self.members)), key=lambda i: self._down_until[i] > now)

    async def _all(self, call: Callable[[BlockStore], Awaitable[T]], what: str) -> list[T | None]:
        """`call` on every member not marked down, concurrently (on all if all are marked); a
        member that is down gives None.

        Raises: StoreUnavailableError if every member is down; any other error as is."""
        now = time.monotonic()
        live = [i for i in range(len(self.members)) if self._down_until[i] <= now]
        live = live or list(range(len(self.members)))
        results = await asyncio.gather(
            *(call(self.members[i]) for i in live), return_exceptions=True
        )
        out: list[T | None] = [None] * len(self.members)
        for i, result in zip(live, results, strict=True):
            if isinstance(result, DOWN):
                self._mark(i, result, what)
            elif isinstance(result, BaseException):
                raise result
            else:
                self._mark(i, None, what)
                out[i] = result
        if all(isinstance(r, DOWN) for r in results):
            raise StoreUnavailableError(f"every mirrored block store is down ({what}); retry later")
        return out

    async def _first(self, call: Callable[[BlockStore], Awaitable[T]], what: str) -> T:
        """`call` on the members in order until one answers; NotFoundError only if no member
        that answered has the block and none was down."""
        not_found: NotFoundError | None = None
        down: Exception | None = None
        for i in self._order():
            try:
                result = await call(self.members[i])
            except NotFoundError as exc:
                self._mark(i, None, what)
                not_found = exc
                continue
            except DOWN as exc:
                self._mark(i, exc, what)
                down = exc
                continue
            self._mark(i, None, what)
            return result
        if down is not None:
            raise StoreUnavailableError(
                f"no reachable mirrored block store has it ({what}); retry later"
            ) from down
        assert not_found is not None
        raise not_found

    async def open(self) -> None:
        await asyncio.gather(*(m.open() for m in self.members))

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self.members))

    # ---- upload --------------------------------------------------------------------------
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
        await self._all(lambda m: m.put_stored(block_id, data), f"PUT {block_id}")

    # ---- read ----------------------------------------------------------------------------
    async def local_path(self, block_id: str) -> Path | None:
        # A member's file if the first member that has the block is local (sendfile).
        return await self._first(lambda m: m.local_path(block_id), f"GET {block_id}")

    async def read(self, block_id: str, offset: int, length: int) -> bytes:
        return await self._first(lambda m: m.read(block_id, offset, length), f"GET {block_id}")

    async def get_stored(self, block_id: str) -> bytes:
        return await self._first(lambda m: m.get_stored(block_id), f"GET {block_id}")

    # ---- maintenance ---------------------------------------------------------------------
    async def delete(self, block_id: str) -> bool:
        # A member that is down keeps its copy: an orphan the next gc removes.
        results = await self._all(lambda m: m.delete(block_id), f"DELETE {block_id}")
        return any(results)

    async def verify(self, block_id: str, size: int) -> str | None:
        """None if at least one member holds an intact copy (scrub repairs the others)."""

        async def one(member: BlockStore) -> str:
            reason = await member.verify(block_id, size)
            return "ok" if reason is None else reason

        reasons = await self._all(one, f"verify {block_id}")
        if "ok" in reasons:
            return None
        return next((r for r in reasons if r is not None), "unreachable")

    async def quarantine(self, block_id: str) -> str:
        async def one(member: BlockStore) -> str | None:
            try:
                return await member.quarantine(block_id)
            except (FileNotFoundError, NotFoundError):
                return None

        places = await self._all(one, f"quarantine {block_id}")
        return ", ".join(p for p in places if p) or "nowhere (no member had it)"

    async def list_ids(self) -> list[str]:
        lists = await self._all(lambda m: m.list_ids(), "LIST")
        return sorted({b for ids in lists if ids for b in ids})

    async def clean_temp(self, older_than_s: float) -> int:
        counts = await self._all(lambda m: m.clean_temp(older_than_s), "clean temp")
        return sum(c or 0 for c in counts)

    async def stored_sizes(self) -> dict[str, int] | None:
        """One copy's sizes: those of the first member that answers."""
        return await self._first(lambda m: m.stored_sizes(), "LIST")

    async def get_marker(self, name: str) -> bytes | None:
        found = await self._all(lambda m: m.get_marker(name), f"marker {name}")
        values = {v for v in found if v is not None}
        if len(values) > 1:
            raise StoreConfigError(
                f"the mirrored block stores hold different format markers ({self.label}): "
                "they were not written by the same configuration"
            )
        return values.pop() if values else None

    async def put_marker(self, name: str, data: bytes) -> None:
        await self._all(lambda m: m.put_marker(name, data), f"marker {name}")
