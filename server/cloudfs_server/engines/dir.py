"""The embedded block engine: one file per block at `DATA/blocks/ab/cd/<64 hex>`.

Staging files live in `DATA/tmp/` (same filesystem, so publishing is one atomic rename). A block
file is written to a temp file, fsynced, renamed into place, and its directory fsynced: after
`publish()` returns, the block survives a crash. All file I/O runs in worker threads. Markers
(the format marker of engines/chain.py) are files `DATA/blocks/cloudfs-<name>`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import blake3

from cloudfs_server.engines.blockstore import BlockStore, StagedBlock
from cloudfs_server.errors import HashMismatchError, NotFoundError, TooLargeError
from cloudfs_server.model import BLOCK_ID_RE, validate_block_id

T = TypeVar("T")

# Received bytes are hashed and written in batches of this size (one worker-thread hop each).
FLUSH_BYTES = 1 << 20
VERIFY_CHUNK = 1 << 20


def _write_all(fd: int, chunks: list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirBlockStore(BlockStore):
    def __init__(self, data_dir: Path) -> None:
        self.label = f"dir:{data_dir}"
        self.blocks_dir = Path(data_dir) / "blocks"
        self.tmp_dir = Path(data_dir) / "tmp"
        self.corrupt_dir = Path(data_dir) / "corrupt"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args))

    def path_of(self, block_id: str) -> Path:
        """The block's file. The id is re-validated: nothing else can reach outside blocks/."""
        validate_block_id(block_id)
        return self.blocks_dir / block_id[:2] / block_id[2:4] / block_id

    async def open(self) -> None:
        def run() -> None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self.blocks_dir.mkdir(parents=True, exist_ok=True)
            # The 256 first-level directories exist from the start, so publishing a block
            # creates at most one directory (and fsyncs at most two).
            created = False
            for first in range(256):
                sub = self.blocks_dir / f"{first:02x}"
                if not sub.is_dir():
                    sub.mkdir()
                    created = True
            if created:
                _fsync_dir(self.blocks_dir)

        await self._run(run)

    async def close(self) -> None:
        return None

    # ---- upload --------------------------------------------------------------------------
    def _new_temp(self) -> tuple[Path, int]:
        path = self.tmp_dir / f"{secrets.token_hex(12)}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return path, fd

    @staticmethod
    def _absorb(hasher: Any, fd: int | None, chunks: list[bytes], finish: bool) -> None:
        for chunk in chunks:
            hasher.update(chunk)
        if fd is not None:
            _write_all(fd, chunks)
            if finish:
                os.fsync(fd)

    async def stage(
        self, block_id: str, body: AsyncIterator[bytes], max_bytes: int, known: bool = False
    ) -> StagedBlock:
        final = self.path_of(block_id)
        # The uploader's own block, already stored: only verify the body, and keep it in memory
        # in case gc removes the file before publish(). Otherwise stream it into a temp file
        # while hashing, even if another user stored it (equal work: no timing side channel).
        in_memory = known and await self._run(final.exists)
        staged = StagedBlock(block_id, 0)
        fd: int | None = None
        if not in_memory:
            staged.temp_path, fd = await self._run(self._new_temp)
        hasher = blake3.blake3()
        try:
            pending: list[bytes] = []
            pending_bytes = 0
            async for chunk in body:
                if not chunk:
                    continue
                staged.size += len(chunk)
                if staged.size > max_bytes:
                    raise TooLargeError(f"block bodies are limited to {max_bytes} bytes")
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= FLUSH_BYTES:
                    await self._run(self._absorb, hasher, fd, pending, False)
                    if in_memory:
                        staged.chunks.extend(pending)
                    pending, pending_bytes = [], 0
            await self._run(self._absorb, hasher, fd, pending, True)
            if in_memory:
                staged.chunks.extend(pending)
            if fd is not None:
                fd_, fd = fd, None
                await self._run(os.close, fd_)
            actual = hasher.hexdigest()
            if actual != block_id:
                raise HashMismatchError(
                    f"body hashes to {actual}, not to the address {block_id}; nothing stored",
                    actual=actual,
                )
        except BaseException:
            if fd is not None:
                os.close(fd)
            await asyncio.shield(self.discard(staged))
            raise
        return staged

    def _publish(self, staged: StagedBlock) -> None:
        final = self.path_of(staged.block_id)
        try:
            intact = final.stat().st_size == staged.size
        except FileNotFoundError:
            intact = False
        if intact:
            if staged.temp_path is not None:
                staged.temp_path.unlink(missing_ok=True)
            return
        # Missing (gc removed it after stage() looked) or damaged (wrong size): write it anew.
        if staged.temp_path is None:
            staged.temp_path, fd = self._new_temp()
            try:
                _write_all(fd, staged.chunks)
                os.fsync(fd)
            finally:
                os.close(fd)
        if not final.parent.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(final.parent.parent)
        os.replace(staged.temp_path, final)
        staged.temp_path = None
        _fsync_dir(final.parent)

    async def publish(self, staged: StagedBlock) -> None:
        await self._run(self._publish, staged)
        staged.chunks = []

    async def discard(self, staged: StagedBlock) -> None:
        staged.chunks = []
        if staged.temp_path is not None:
            path, staged.temp_path = staged.temp_path, None
            await self._run(functools.partial(path.unlink, missing_ok=True))

    # ---- read ----------------------------------------------------------------------------
    async def local_path(self, block_id: str) -> Path | None:
        path = self.path_of(block_id)
        if not await self._run(path.is_file):
            raise NotFoundError(f"block {block_id} is not stored")
        return path

    async def read(self, block_id: str, offset: int, length: int) -> bytes:
        path = self.path_of(block_id)

        def run() -> bytes:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    return f.read(length)
            except FileNotFoundError:
                raise NotFoundError(f"block {block_id} is not stored") from None

        return await self._run(run)

    # ---- maintenance ---------------------------------------------------------------------
    async def delete(self, block_id: str) -> bool:
        path = self.path_of(block_id)

        def run() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

        return await self._run(run)

    def _verify(self, block_id: str, size: int) -> str | None:
        path = self.path_of(block_id)
        hasher = blake3.blake3()
        total = 0
        try:
            with open(path, "rb") as f:
                while chunk := f.read(VERIFY_CHUNK):
                    hasher.update(chunk)
                    total += len(chunk)
        except FileNotFoundError:
            return "missing"
        if total != size:
            return f"corrupt: {total} bytes, expected {size}"
        if hasher.hexdigest() != block_id:
            return f"corrupt: rehashes to {hasher.hexdigest()}"
        return None

    async def verify(self, block_id: str, size: int) -> str | None:
        return await self._run(self._verify, block_id, size)

    async def quarantine(self, block_id: str) -> str:
        path = self.path_of(block_id)
        aside = self.corrupt_dir / block_id

        def run() -> None:
            self.corrupt_dir.mkdir(parents=True, exist_ok=True)
            os.replace(path, aside)

        await self._run(run)
        return str(aside)

    async def list_ids(self) -> list[str]:
        def run() -> list[str]:
            out: list[str] = []
            if not self.blocks_dir.is_dir():
                return out
            for _dirpath, _dirnames, filenames in os.walk(self.blocks_dir):
                out.extend(name for name in filenames if BLOCK_ID_RE.fullmatch(name))
            return out

        return await self._run(run)

    async def clean_temp(self, older_than_s: float) -> int:
        def run() -> int:
            removed = 0
            cutoff = time.time() - older_than_s
            if not self.tmp_dir.is_dir():
                return 0
            for entry in os.scandir(self.tmp_dir):
                try:
                    if entry.stat().st_mtime <= cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
            return removed

        return await self._run(run)

    # ---- stored form and markers (for the layers) ----------------------------------------
    async def put_stored(self, block_id: str, data: bytes) -> None:
        staged = StagedBlock(block_id, len(data), chunks=[data])
        try:
            await self._run(self._publish, staged)
        finally:
            await self.discard(staged)

    async def get_stored(self, block_id: str) -> bytes:
        path = self.path_of(block_id)

        def run() -> bytes:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                raise NotFoundError(f"block {block_id} is not stored") from None

        return await self._run(run)

    async def stored_sizes(self) -> dict[str, int]:
        def run() -> dict[str, int]:
            out: dict[str, int] = {}
            if not self.blocks_dir.is_dir():
                return out
            for dirpath, _dirnames, filenames in os.walk(self.blocks_dir):
                for name in filenames:
                    if BLOCK_ID_RE.fullmatch(name):
                        try:
                            out[name] = os.stat(os.path.join(dirpath, name)).st_size
                        except FileNotFoundError:
                            continue
            return out

        return await self._run(run)

    def _marker_path(self, name: str) -> Path:
        if not name.isidentifier():
            raise ValueError(f"bad marker name {name!r}")
        return self.blocks_dir / f"cloudfs-{name}"

    async def get_marker(self, name: str) -> bytes | None:
        path = self._marker_path(name)

        def run() -> bytes | None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

        return await self._run(run)

    async def put_marker(self, name: str, data: bytes) -> None:
        path = self._marker_path(name)

        def run() -> None:
            temp, fd = self._new_temp()
            try:
                _write_all(fd, [data])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
            _fsync_dir(path.parent)

        await self._run(run)
