"""Open-file contents (layer 3): a base manifest (the committed block list) plus a dirty overlay
kept in a sparse staging file on disk, and the manifest builder that re-chunks only the dirty
regions at commit.

Invariants (docs/client.md, "Staging design"):
- bytes in `[0, size)` covered by `dirty` come from the staging file (at the same offset);
  all others come from the base manifest at the same offset (they are within the base size);
- growing the file marks the new range dirty (the staging file reads zeros there);
- the staging file is never longer than the largest dirty end.
"""

from __future__ import annotations

import bisect
import ctypes
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

from cloudfs.blocks import BlockStore
from cloudfs.chunking import Chunker, ChunkParams

WINDOW_BYTES = 16 << 20
READAHEAD_MIN_BYTES = 1 << 20
READAHEAD_MAX_BYTES = 32 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the disk space of `[offset, offset+length)` in a staging file (reads give zeros).
    Best effort: a filesystem without hole punching keeps the bytes."""
    if length <= 0:
        return
    _libc.fallocate(
        ctypes.c_int(fd),
        ctypes.c_int(_FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE),
        ctypes.c_long(offset),
        ctypes.c_long(length),
    )


class Extents:
    """A set of disjoint half-open byte ranges, kept merged and sorted."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(zip(self._starts, self._ends, strict=True)))

    @property
    def total(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)  # first range ending at/after start
        j = bisect.bisect_right(self._starts, end)  # ranges starting after end are untouched
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        """Forget `[start, end)`."""
        if end <= start:
            return
        keep_s: list[int] = []
        keep_e: list[int] = []
        for s, e in zip(self._starts, self._ends, strict=True):
            if e <= start or s >= end:
                keep_s.append(s)
                keep_e.append(e)
                continue
            if s < start:
                keep_s.append(s)
                keep_e.append(start)
            if e > end:
                keep_s.append(end)
                keep_e.append(e)
        self._starts, self._ends = keep_s, keep_e

    def clip(self, size: int) -> None:
        """Forget everything at or beyond `size`."""
        i = bisect.bisect_left(self._ends, size + 1)
        del self._starts[i + 1 :]
        del self._ends[i + 1 :]
        if i < len(self._starts):
            if self._starts[i] >= size:
                del self._starts[i]
                del self._ends[i]
            else:
                self._ends[i] = size

    def overlapping(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of the ranges that intersect `[start, end)`, clipped to it."""
        out = []
        i = bisect.bisect_right(self._ends, start)
        while i < len(self._starts) and self._starts[i] < end:
            out.append((max(start, self._starts[i]), min(end, self._ends[i])))
            i += 1
        return out

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._ends, start)
        return i < len(self._starts) and self._starts[i] < end

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()


class Manifest:
    """A committed block list with offsets: which block holds byte `x`."""

    def __init__(self, blocks: tuple[tuple[str, int], ...] | list[tuple[str, int]]) -> None:
        self.blocks: list[tuple[str, int]] = [(b, int(n)) for b, n in blocks]
        self.offsets: list[int] = []
        pos = 0
        for _, n in self.blocks:
            self.offsets.append(pos)
            pos += n
        self.size = pos

    def index_at(self, offset: int) -> int:
        return bisect.bisect_right(self.offsets, offset) - 1

    def spans(self, start: int, end: int) -> list[tuple[int, str, int, int]]:
        """(block index, block id, start within block, end within block) covering [start, end)."""
        out: list[tuple[int, str, int, int]] = []
        end = min(end, self.size)
        if start >= end:
            return out
        i = self.index_at(start)
        while i < len(self.blocks) and self.offsets[i] < end:
            bstart = self.offsets[i]
            block_id, n = self.blocks[i]
            out.append((i, block_id, max(start, bstart) - bstart, min(end, bstart + n) - bstart))
            i += 1
        return out


class FileState:
    """Contents of one open (or pending) file on this mount, shared by all its handles."""

    def __init__(
        self,
        node_id: int,
        version: int,
        blocks: tuple[tuple[str, int], ...],
        mtime_ns: int,
        staging_dir: Path,
    ) -> None:
        self.node_id = node_id
        self.base_version = version
        self.base = Manifest(blocks)
        self.size = self.base.size
        self.dirty = Extents()
        self.content_dirty = False  # size or bytes differ from the base
        self.mtime_ns = mtime_ns
        self.mtime_dirty = False
        self.handles = 0
        self.writers = 0
        self.queued = False  # a commit of this content waits in the durable queue
        self.unlinked = False
        self.last_read_end = -1
        self.readahead_bytes = READAHEAD_MIN_BYTES
        self.sealing = False  # a seal task is cutting the sequential dirty tail
        self.seal_progress = trio.Event()  # set (and replaced) after each sealed window
        self._staging_path = staging_dir / f"{node_id}-{os.getpid()}-{id(self):x}"
        self._fd: int | None = None

    # ---- staging file --------------------------------------------------------------------------
    def _staging_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._staging_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        return self._fd

    def close_staging(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                os.unlink(self._staging_path)
            except FileNotFoundError:
                pass

    @property
    def is_dirty(self) -> bool:
        return self.content_dirty or self.mtime_dirty

    @property
    def staged_bytes(self) -> int:
        return self.dirty.total

    # ---- POSIX-level operations (synchronous; callers hold the inode lock) ---------------------
    def write(self, offset: int, data: bytes | memoryview) -> int:
        n = len(data)
        if not n:
            return 0
        fd = self._staging_fd()
        if offset > self.size:
            self._zero_staging(self.size, offset)
            self.dirty.add(self.size, offset)
        written = 0
        view = memoryview(data)
        while written < n:
            written += os.pwrite(fd, view[written:], offset + written)
        self.dirty.add(offset, offset + n)
        self.size = max(self.size, offset + n)
        self.content_dirty = True
        self.touch()
        return n

    def truncate(self, size: int) -> None:
        if size == self.size:
            return
        if size < self.size:
            self.dirty.clip(size)
            if size < self.base.size:  # base blocks wholly past the end are gone for good
                self.base = Manifest(
                    [
                        b
                        for b, off in zip(self.base.blocks, self.base.offsets, strict=True)
                        if off < size
                    ]
                )
            if self._fd is not None:
                os.ftruncate(self._fd, min(size, os.fstat(self._fd).st_size))
        else:
            self._zero_staging(self.size, size)
            self.dirty.add(self.size, size)
        self.size = size
        self.content_dirty = True
        self.touch()

    def _zero_staging(self, start: int, end: int) -> None:
        """Make the staging file read zeros in [start, end) (it may hold old bytes there)."""
        fd = self._staging_fd()
        length = os.fstat(fd).st_size
        if length > start:
            os.ftruncate(fd, start)

    def touch(self, mtime_ns: int | None = None) -> None:
        self.mtime_ns = time.time_ns() if mtime_ns is None else mtime_ns
        self.mtime_dirty = True

    def _read_staging(self, start: int, end: int) -> bytes:
        data = os.pread(self._staging_fd(), end - start, start)
        if len(data) < end - start:
            data += bytes(end - start - len(data))
        return data

    async def read(
        self, offset: int, length: int, blocks: BlockStore
    ) -> bytes | bytearray | memoryview:
        """Bytes `[offset, offset+length)` clipped to the size: dirty from staging, the rest
        from the base blocks (downloaded as needed, concurrently)."""
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        if not self.dirty:
            spans = self.base.spans(offset, end)
            if len(spans) == 1:
                _, block_id, s, e = spans[0]
                data = await blocks.read(block_id, s, e)
                self._read_ahead(end, blocks)
                return data
        pieces: dict[int, bytes | bytearray | memoryview] = {}
        clean: list[tuple[int, int]] = []
        pos = offset
        for s, e in self.dirty.overlapping(offset, end):
            if pos < s:
                clean.append((pos, s))
            pieces[s] = self._read_staging(s, e)
            pos = e
        if pos < end:
            clean.append((pos, end))

        async def fetch(at: int, block_id: str, s: int, e: int) -> None:
            pieces[at] = await blocks.read(block_id, s, e)

        async with trio.open_nursery() as nursery:
            for cs, ce in clean:
                for i, block_id, s, e in self.base.spans(cs, ce):
                    nursery.start_soon(fetch, self.base.offsets[i] + s, block_id, s, e)
        self._read_ahead(end, blocks)
        return b"".join(pieces[k] for k in sorted(pieces))  # type: ignore[misc]

    def _read_ahead(self, end: int, blocks: BlockStore) -> None:
        """Sequential readers get the next blocks fetched in the background."""
        sequential = self.last_read_end >= 0 and abs(end - self.last_read_end) <= (4 << 20)
        self.last_read_end = end
        if not sequential:
            self.readahead_bytes = READAHEAD_MIN_BYTES
            return
        if end >= self.base.size:
            return
        limit = min(READAHEAD_MAX_BYTES, blocks.cache.limit_bytes // 4)
        self.readahead_bytes = min(self.readahead_bytes * 2, limit)  # ramps up while sequential
        i = self.base.index_at(end)
        want: list[str] = []
        ahead = 0
        while i < len(self.base.blocks) and ahead < self.readahead_bytes:
            block_id, n = self.base.blocks[i]
            if not self.dirty.overlaps(self.base.offsets[i], self.base.offsets[i] + n):
                want.append(block_id)
            ahead += n
            i += 1
        blocks.prefetch(want)

    # ---- sealing: sequential writers hand finished chunks over while they write -------------
    def sealable_from(self) -> int | None:
        """Where the dirty tail starts, if the content is base blocks `[0, a)` followed by one
        dirty range `[a, size)` (a fresh file or an append); else None."""
        extents = list(self.dirty)
        if len(extents) != 1:
            return None
        a, b = extents[0]
        if a != self.base.size or b != self.size:
            return None
        return a

    def read_staging(self, start: int, end: int) -> bytes:
        return self._read_staging(start, end)

    def seal(self, start: int, chunks: list[tuple[str, int]]) -> None:
        """Chunks cut from the dirty tail at `start` (already stored locally) become base
        blocks; their bytes leave the staging file."""
        assert start == self.base.size, "seal must continue the base"
        consumed = sum(n for _, n in chunks)
        self.base = Manifest(self.base.blocks + chunks)
        self.dirty.remove(start, start + consumed)
        if self._fd is not None:
            punch_hole(self._fd, start, consumed)

    # ---- commit support ----------------------------------------------------------------------
    def plan(self) -> list[tuple[str, object, int]]:
        """The new content as a list of ("keep", block_id, length) and ("region", start, end):
        base blocks that are untouched and wholly inside the size are kept; the gaps between
        them are regions to re-chunk."""
        out: list[tuple[str, object, int]] = []
        covered = 0
        for i, (block_id, n) in enumerate(self.base.blocks):
            s = self.base.offsets[i]
            if s >= self.size:
                break
            e = s + n
            if e <= self.size and not self.dirty.overlaps(s, e):
                if covered < s:
                    out.append(("region", covered, s))
                out.append(("keep", block_id, n))
                covered = e
        if covered < self.size:
            out.append(("region", covered, self.size))
        return out

    async def region_windows(
        self, start: int, end: int, blocks: BlockStore
    ) -> AsyncIterator[bytes | bytearray | memoryview]:
        """The bytes of `[start, end)` in windows of at most WINDOW_BYTES (bounded memory)."""
        pos = start
        while pos < end:
            stop = min(end, pos + WINDOW_BYTES)
            yield await self.read(pos, stop - pos, blocks)
            pos = stop

    def rebase(
        self,
        version: int,
        blocks: tuple[tuple[str, int], ...] | list[tuple[str, int]],
        mtime_ns: int | None = None,
    ) -> None:
        """After a commit (or a reset to the server's content): the new base, nothing dirty."""
        self.base_version = version
        self.base = Manifest(tuple(blocks))
        self.size = self.base.size
        self.dirty.clear()
        self.content_dirty = False
        self.mtime_dirty = False
        if mtime_ns is not None:
            self.mtime_ns = mtime_ns
        if self._fd is not None:
            os.ftruncate(self._fd, 0)


async def build_manifest(
    state: FileState,
    blocks: BlockStore,
    params: ChunkParams,
    store_dirty: Callable[[list[tuple[str, bytes | bytearray | memoryview]]], Awaitable[None]],
) -> list[tuple[str, int]]:
    """The block list of `state`'s current content. Re-chunks only the planned regions (in a
    worker thread, window by window); hands each window's new blocks to `store_dirty`
    (which must make them durable locally) before moving on."""
    out: list[tuple[str, int]] = []
    chunker = Chunker(params)
    for kind, a, b in state.plan():
        if kind == "keep":
            out.append((str(a), b))
            continue
        carry = b""
        start, end = int(a), b  # type: ignore[call-overload]
        pos = start
        async for window in state.region_windows(start, end, blocks):
            pos += len(window)
            buf = bytes(carry) + bytes(window) if carry else window
            final = pos >= end
            chunks, used = await trio.to_thread.run_sync(chunker.cut_and_hash, buf, final)
            if chunks:
                await store_dirty([(bid, buf[off : off + n]) for bid, off, n in chunks])
                out.extend((bid, n) for bid, _, n in chunks)
            carry = bytes(buf[used:])
        assert not carry
    return out
