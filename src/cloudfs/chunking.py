"""Content-defined chunking (FastCDC 2020, Cython `pyfastcdc`) and BLAKE3 block ids (layer 0).

Pure and synchronous: callers run big buffers through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3
from pyfastcdc.cy import FastCDC


def block_id_of(data: bytes | bytearray | memoryview) -> str:
    """The protocol's block id: lowercase hex BLAKE3 of the bytes."""
    return blake3.blake3(data).hexdigest()


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """FastCDC sizes. The default averages about 1 MiB; tests use tiny sizes (>= 64/256/1024)."""

    avg_bytes: int = 1 << 20
    min_bytes: int = 256 << 10
    max_bytes: int = 4 << 20

    @classmethod
    def tiny(cls) -> ChunkParams:
        return cls(avg_bytes=256, min_bytes=64, max_bytes=1024)


class Chunker:
    """Cuts buffers at content-defined boundaries. Not thread-safe: one per worker call."""

    def __init__(self, params: ChunkParams) -> None:
        self.params = params
        self._cdc = FastCDC(params.avg_bytes, min_size=params.min_bytes, max_size=params.max_bytes)

    def cut(self, buf: bytes | bytearray | memoryview) -> list[int]:
        """Lengths of the chunks of `buf`, in order (the last one ends at the end of `buf`)."""
        if not len(buf):
            return []
        return [c.length for c in self._cdc.cut_buf(buf)]

    def cut_and_hash(
        self,
        buf: bytes | bytearray | memoryview,
        final: bool,
    ) -> tuple[list[tuple[str, int, int]], int]:
        """Chunks of `buf` as (block_id, offset, length), and how many bytes they consume.

        When not `final`, the last chunk is held back (its end may move once more data arrives),
        so the caller carries `buf[consumed:]` into the next call.
        """
        lengths = self.cut(buf)
        if not final and lengths:
            lengths.pop()
        view = memoryview(buf)
        out: list[tuple[str, int, int]] = []
        pos = 0
        for n in lengths:
            out.append((block_id_of(view[pos : pos + n]), pos, n))
            pos += n
        return out, pos
