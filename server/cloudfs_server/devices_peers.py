"""Who holds which chunk: the join / leave / request registry behind `cloudfs devices` and LAN sync.

Pure data structure (no I/O, no clock, no trio): the server keeps one `FileSharing` per account in
memory, with devices as members and block ids as chunks.

Interface (exactly the file-sharing problem's):

- ``FileSharing(m)``: chunks have ids ``1..m``; for blocks they may also be any other hashable key
  (block-id strings), and ``m`` is then only a size hint (pass ``0`` to accept any key).
- ``join(owned_chunks) -> int``: the new member gets the smallest positive id not taken now.
- ``leave(user_id)``: its chunks are no longer available from it and its id becomes free.
- ``request(user_id, chunk_id) -> list[int]``: ascending ids of the members owning the chunk,
  computed before the requester gains it; if the list is not empty the requester now owns it too.
  A member requesting a chunk it already owns is in the list (and nothing changes).

Example: ``FileSharing(4)``; ``join([1, 2])`` → 1; ``join([2, 3])`` → 2; ``join([4])`` → 3;
``request(1, 3)`` → [2]; ``request(2, 2)`` → [1, 2]; ``leave(1)``; ``request(2, 1)`` → [];
``leave(2)``; ``join([])`` → 1.

Design and costs (n = live members, k = chunks of one member, h = holders of one chunk, g = gaps):

- ``_owned``: member id → set of its chunks. ``_holders``: chunk → its holders in ascending order,
  a plain sorted ``list`` while small (at most ``_LIST_MAX`` ids, so an insert moves a bounded
  number of pointers) and a ``sortedcontainers.SortedList`` beyond (O(log h) insert/remove).
  A chunk nobody holds has no entry. So ``join``/``leave`` are O(k log n), ``request`` is O(h)
  (copying the answer; no scan over members or chunks), memory is O(n + sum of k).
- Free ids: everything at or above ``_next_id`` is free; below it the free ids are kept as maximal
  *gaps* (runs of consecutive free ids) instead of one entry per freed id. Every gap is followed
  by a live id, so there are at most n gaps: ids freed by churn cannot pile up, whatever the order
  of leaves (100,000 joins then 99,999 leaves keep one gap, not 99,999 ids). A gap that reaches
  ``_next_id`` is folded back into the counter, so when the highest ids leave the counter shrinks.
  The smallest free id is the first gap's start (or ``_next_id``): O(log g) per join and leave.

Follow-ups:

- Many files: chunk keys are block ids (content hashes), so one registry per account serves every
  file at once; identical blocks of different files are one chunk, held once. ``m`` does not bound
  string keys.
- Members that join and leave without ever requesting cost O(k log n) each and leave nothing behind:
  no per-request or per-pair state exists, and a member's record is deleted on ``leave``.
- All members leaving at once: each ``leave`` removes that member's chunks, and the last one brings
  the structure back to empty (no gaps, ``_next_id`` = 1, no chunk entries), so the next ``join``
  gets 1. ``clear()`` does the same in O(1) for a bulk departure (a server restart, an account
  reset).
- Restoring after a server restart: ``claim(user_id)`` takes a specific free id (O(log g)) so ids
  still used by live devices are not handed out again; their chunk sets start empty until re-sent.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Hashable, Iterable, Iterator
from typing import TypeAlias

from sortedcontainers import SortedList

__all__ = ["ChunkRangeError", "FileSharing", "PeerError", "UnknownMemberError"]

# Holder lists longer than this become SortedLists (shorter again than half of it: plain lists).
_LIST_MAX = 256

Holders: TypeAlias = "list[int] | SortedList"


class PeerError(Exception):
    """Base of the registry's errors; each is a caller mistake, so a retry never helps."""


class UnknownMemberError(PeerError, KeyError):
    """Raised when a user id is not a current member (never joined, left, or already freed)."""

    def __init__(self, user_id: int) -> None:
        super().__init__(user_id)
        self.user_id = user_id

    def __str__(self) -> str:
        return f"no member with id {self.user_id}"


class ChunkRangeError(PeerError, ValueError):
    """Raised when an integer chunk id is outside ``1..m`` (only checked when ``m`` > 0)."""

    def __init__(self, chunk_id: int, m: int) -> None:
        super().__init__(chunk_id, m)
        self.chunk_id = chunk_id
        self.m = m

    def __str__(self) -> str:
        return f"chunk id {self.chunk_id} is outside 1..{self.m}"


class FileSharing:
    """Members (with ids 1, 2, …, smallest free first) holding chunks; see the module docstring.

    Not thread-safe; no method awaits or blocks.
    """

    def __init__(self, m: int = 0) -> None:
        if m < 0:
            raise ValueError(f"m must be >= 0, got {m}")
        self.m = m
        self._owned: dict[int, set[Hashable]] = {}
        self._holders: dict[Hashable, Holders] = {}
        self._next_id = 1
        # Gaps of free ids below _next_id, half-open [start, end): start -> end, end -> start,
        # and the starts in order. Invariant: gaps are maximal and none ends at _next_id.
        self._gap_end: dict[int, int] = {}
        self._gap_start: dict[int, int] = {}
        self._gap_starts: SortedList = SortedList()

    # -- the problem's interface ------------------------------------------------------------

    def join(self, owned_chunks: Iterable[Hashable]) -> int:
        """Add a member owning `owned_chunks`; return its id, the smallest positive id not taken.

        Raises: ChunkRangeError (nothing changes).
        """
        chunks = self._checked(owned_chunks)
        user_id = self._take_smallest_id()
        self._owned[user_id] = chunks
        self._add_holder(user_id, chunks)
        return user_id

    def leave(self, user_id: int) -> None:
        """Remove member `user_id`: its chunks are no longer available from it, its id is free.

        Raises: UnknownMemberError.
        """
        chunks = self._owned.pop(user_id, None)
        if chunks is None:
            raise UnknownMemberError(user_id)
        self._remove_holder(user_id, chunks)
        self._free_id(user_id)

    def request(self, user_id: int, chunk_id: Hashable) -> list[int]:
        """Ascending ids of the chunk's owners before this call; the requester gains it if any.

        Raises: UnknownMemberError, ChunkRangeError.
        """
        owned = self._owned.get(user_id)
        if owned is None:
            raise UnknownMemberError(user_id)
        self._check_chunk(chunk_id)
        holders = self._holders.get(chunk_id)
        if holders is None:
            return []
        answer = list(holders)
        if chunk_id not in owned:
            owned.add(chunk_id)
            self._add_one(chunk_id, holders, user_id)
        return answer

    # -- what the product needs besides ---------------------------------------------------------

    def add_chunks(self, user_id: int, chunks: Iterable[Hashable]) -> int:
        """Member `user_id` now also owns `chunks`; returns how many were new to it.

        Raises: UnknownMemberError, ChunkRangeError (nothing changes).
        """
        owned = self._owned.get(user_id)
        if owned is None:
            raise UnknownMemberError(user_id)
        new = self._checked(chunks) - owned
        owned |= new
        self._add_holder(user_id, new)
        return len(new)

    def remove_chunks(self, user_id: int, chunks: Iterable[Hashable]) -> int:
        """Member `user_id` no longer owns `chunks`; returns how many it did own.

        Raises: UnknownMemberError.
        """
        owned = self._owned.get(user_id)
        if owned is None:
            raise UnknownMemberError(user_id)
        gone = owned.intersection(chunks)
        owned -= gone
        self._remove_holder(user_id, gone)
        return len(gone)

    def holders(self, chunk_id: Hashable) -> list[int]:
        """Ascending ids of the chunk's current owners, without requesting it. O(h)."""
        holders = self._holders.get(chunk_id)
        return [] if holders is None else list(holders)

    def owns(self, user_id: int, chunk_id: Hashable) -> bool:
        owned = self._owned.get(user_id)
        if owned is None:
            raise UnknownMemberError(user_id)
        return chunk_id in owned

    def chunk_count(self, user_id: int) -> int:
        """How many chunks member `user_id` owns. Raises: UnknownMemberError."""
        owned = self._owned.get(user_id)
        if owned is None:
            raise UnknownMemberError(user_id)
        return len(owned)

    def claim(self, user_id: int) -> None:
        """Make the free id `user_id` a member owning nothing (restoring after a restart). O(log g).

        Raises: ValueError if `user_id` < 1 or is taken.
        """
        if user_id < 1 or user_id in self._owned:
            raise ValueError(f"id {user_id} is not free")
        if user_id >= self._next_id:
            if user_id > self._next_id:
                self._add_gap(self._next_id, user_id)
            self._next_id = user_id + 1
        else:
            index = self._gap_starts.bisect_right(user_id) - 1
            start = self._gap_starts[index]
            end = self._gap_end[start]
            assert start <= user_id < end, "an id below _next_id that is not owned is in a gap"
            self._drop_gap(start, end)
            if start < user_id:
                self._add_gap(start, user_id)
            if user_id + 1 < end:
                self._add_gap(user_id + 1, end)
        self._owned[user_id] = set()

    def check_invariants(self) -> None:
        """Assert every internal invariant; O(total state), for tests."""
        for start, end in self._gap_end.items():
            assert start < end < self._next_id, (start, end)
            assert self._gap_start[end] == start
            assert end in self._owned, f"gap [{start}, {end}) is not followed by a live id"
            assert start not in self._gap_start, f"gap at {start} is not maximal"
        assert list(self._gap_starts) == sorted(self._gap_end)
        assert len(self._gap_start) == len(self._gap_end)
        free_below = sum(end - start for start, end in self._gap_end.items())
        assert free_below + len(self._owned) == self._next_id - 1, "an id is neither live nor free"
        assert all(0 < uid < self._next_id for uid in self._owned)
        seen: dict[Hashable, list[int]] = {}
        for uid, chunks in self._owned.items():
            for chunk_id in chunks:
                seen.setdefault(chunk_id, []).append(uid)
        assert seen.keys() == self._holders.keys(), "chunk entries do not match the holdings"
        for chunk_id, uids in seen.items():
            holders = self._holders[chunk_id]
            assert list(holders) == sorted(uids), chunk_id
            if isinstance(holders, list):
                assert len(holders) <= _LIST_MAX
            else:
                assert len(holders) > _LIST_MAX // 2

    def clear(self) -> None:
        """Every member leaves at once. O(1) (memory is released by the garbage collector)."""
        self.__init__(self.m)  # type: ignore[misc]

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._owned

    def __len__(self) -> int:
        return len(self._owned)

    def members(self) -> Iterator[int]:
        """Live member ids, in no particular order."""
        return iter(self._owned)

    def statistics(self) -> dict[str, int]:
        """Sizes of the internal state (for tests and `/v1/devices` diagnostics)."""
        return {
            "members": len(self._owned),
            "chunks": len(self._holders),
            "holdings": sum(len(c) for c in self._owned.values()),
            "gaps": len(self._gap_end),
            "next_id": self._next_id,
        }

    # -- internals ------------------------------------------------------------------------------

    def _checked(self, chunks: Iterable[Hashable]) -> set[Hashable]:
        result = set(chunks)
        if self.m:
            for chunk_id in result:
                self._check_chunk(chunk_id)
        return result

    def _check_chunk(self, chunk_id: Hashable) -> None:
        if (
            self.m
            and isinstance(chunk_id, int)
            and not isinstance(chunk_id, bool)
            and not 1 <= chunk_id <= self.m
        ):
            raise ChunkRangeError(chunk_id, self.m)

    def _add_holder(self, user_id: int, chunks: Iterable[Hashable]) -> None:
        holders_of = self._holders
        for chunk_id in chunks:
            holders = holders_of.get(chunk_id)
            if holders is None:
                holders_of[chunk_id] = [user_id]
            else:
                self._add_one(chunk_id, holders, user_id)

    def _add_one(self, chunk_id: Hashable, holders: Holders, user_id: int) -> None:
        if isinstance(holders, list):
            if not holders or holders[-1] < user_id:
                holders.append(user_id)
            else:
                insort(holders, user_id)
            if len(holders) > _LIST_MAX:
                self._holders[chunk_id] = SortedList(holders)
        else:
            holders.add(user_id)

    def _remove_holder(self, user_id: int, chunks: Iterable[Hashable]) -> None:
        holders_of = self._holders
        for chunk_id in chunks:
            holders = holders_of[chunk_id]
            if isinstance(holders, list):
                if len(holders) == 1:
                    del holders_of[chunk_id]
                else:
                    del holders[bisect_left(holders, user_id)]
            else:
                holders.remove(user_id)
                if len(holders) <= _LIST_MAX // 2:
                    holders_of[chunk_id] = list(holders)

    def _take_smallest_id(self) -> int:
        if not self._gap_starts:
            user_id = self._next_id
            self._next_id += 1
            return user_id
        start = self._gap_starts[0]
        end = self._gap_end[start]
        self._drop_gap(start, end)
        if start + 1 < end:
            self._add_gap(start + 1, end)
        return start

    def _free_id(self, user_id: int) -> None:
        start, end = user_id, user_id + 1
        left = self._gap_start.get(start)
        if left is not None:  # a gap ends right below: merge
            self._drop_gap(left, start)
            start = left
        right = self._gap_end.get(end)
        if right is not None:  # a gap starts right above: merge
            self._drop_gap(end, right)
            end = right
        if end == self._next_id:
            self._next_id = start
        else:
            self._add_gap(start, end)

    def _add_gap(self, start: int, end: int) -> None:
        self._gap_end[start] = end
        self._gap_start[end] = start
        self._gap_starts.add(start)

    def _drop_gap(self, start: int, end: int) -> None:
        del self._gap_end[start]
        del self._gap_start[end]
        self._gap_starts.remove(start)
