"""The block store interface: immutable content-addressed blobs, written once, verified on upload.

Upload is two steps so the gc lock is held only briefly: `stage()` receives and verifies the body
(no lock; a mismatch stores nothing), then `publish()` makes it durable under its id, called while
holding the shared gc lock together with the metadata upsert. Engines: `engines/dir.py` (a local
directory), `engines/s3.py` (S3-compatible object storage). Layers wrapping any store:
`engines/compress.py`, `engines/encrypt.py`, `engines/mirror.py`; `engines/chain.py` stacks them.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from cloudfs_server.errors import HashMismatchError, TooLargeError

# Received bytes are hashed in batches of this size (one worker-thread hop each).
HASH_BATCH_BYTES = 1 << 20


@dataclass
class StagedBlock:
    """A received, verified block not yet published. Engine-specific fields are opaque."""

    block_id: str
    size: int
    temp_path: Path | None = None
    # Chunks held in memory instead of a temp file (when the block already existed at start).
    chunks: list[bytes] = field(default_factory=list)


class BlockStore(abc.ABC):
    label = "blocks"  # names the store in logs and scrub reports (never holds credentials)

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def stage(
        self, block_id: str, body: AsyncIterator[bytes], max_bytes: int, known: bool = False
    ) -> StagedBlock:
        """Receive `body`, hash it, keep it aside.

        `known`: the block is already available to the uploader, so the engine may skip storing
        the body again. Otherwise it must do the same work whether or not another user stored
        the block, so response times do not reveal that someone else holds the content.

        Raises: HashMismatchError (nothing kept), TooLargeError (over `max_bytes`).
        """

    @abc.abstractmethod
    async def publish(self, staged: StagedBlock) -> None:
        """Make the staged block durable under its id (idempotent). Hold the shared gc lock."""

    @abc.abstractmethod
    async def discard(self, staged: StagedBlock) -> None:
        """Forget a staged block that will not be published."""

    @abc.abstractmethod
    async def local_path(self, block_id: str) -> Path | None:
        """A local file holding the block (for sendfile), or None if this engine has none.

        Raises: NotFoundError if the block is not stored.
        """

    @abc.abstractmethod
    async def read(self, block_id: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a block. Raises: NotFoundError."""

    @abc.abstractmethod
    async def delete(self, block_id: str) -> bool:
        """Remove a block; False if it was not there. Hold the exclusive gc lock."""

    @abc.abstractmethod
    async def verify(self, block_id: str, size: int) -> str | None:
        """None if the block is present, `size` bytes long and rehashes to its id; else why not."""

    @abc.abstractmethod
    async def quarantine(self, block_id: str) -> str:
        """Move a corrupt block out of the way (kept for inspection, no longer served), so the
        next upload stores it anew. Returns where it went. Hold the exclusive gc lock."""

    @abc.abstractmethod
    async def list_ids(self) -> list[str]:
        """Every stored block id (for fsck and gc of orphans)."""

    @abc.abstractmethod
    async def clean_temp(self, older_than_s: float) -> int:
        """Remove abandoned staging files older than the age; returns how many."""

    # ---- the stored form, for the layers (engines/compress.py, encrypt.py, mirror.py) ------
    # A layer hands the engine already-verified, already-transformed bytes; the engine keeps
    # them as they are. Seen from above a layer, these are the bytes *before* that layer's
    # transformation (a layer encodes on the way down and decodes on the way up).

    @abc.abstractmethod
    async def put_stored(self, block_id: str, data: bytes) -> None:
        """Store `data` as the block's stored form, durably, without hashing it (the layer
        above verified the plaintext). Idempotent. Hold the shared gc lock.

        Raises: StoreUnavailableError (nothing changed)."""

    @abc.abstractmethod
    async def get_stored(self, block_id: str) -> bytes:
        """The block's whole stored form. Raises: NotFoundError, StoreUnavailableError,
        StoreCorruptError (a layer could not decode it)."""

    async def stored_sizes(self) -> dict[str, int] | None:
        """The stored (physical) size of every block, or None if the engine cannot tell."""
        return None

    @abc.abstractmethod
    async def get_marker(self, name: str) -> bytes | None:
        """A small named object kept beside the blocks (the format marker), or None."""

    @abc.abstractmethod
    async def put_marker(self, name: str, data: bytes) -> None:
        """Write a marker durably (replacing it)."""


async def receive(block_id: str, body: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The whole body, hashed while it arrives (off the loop) and checked against `block_id`.

    For engines and layers that keep a staged block in memory (at most `max_bytes`).
    Raises: HashMismatchError, TooLargeError.
    """
    loop = asyncio.get_running_loop()
    hasher = blake3.blake3()
    chunks: list[bytes] = []
    pending: list[bytes] = []
    pending_bytes = size = 0

    def absorb(batch: list[bytes]) -> None:
        for chunk in batch:
            hasher.update(chunk)

    async for chunk in body:
        if not chunk:
            continue
        size += len(chunk)
        if size > max_bytes:
            raise TooLargeError(f"block bodies are limited to {max_bytes} bytes")
        pending.append(chunk)
        pending_bytes += len(chunk)
        if pending_bytes >= HASH_BATCH_BYTES:
            await loop.run_in_executor(None, absorb, pending)
            chunks.extend(pending)
            pending, pending_bytes = [], 0
    await loop.run_in_executor(None, absorb, pending)
    chunks.extend(pending)
    actual = hasher.hexdigest()
    if actual != block_id:
        raise HashMismatchError(
            f"body hashes to {actual}, not to the address {block_id}; nothing stored",
            actual=actual,
        )
    return b"".join(chunks)
