"""The block store interface: immutable content-addressed blobs, written once, verified on upload.

Upload is two steps so the gc lock is held only briefly: `stage()` receives and verifies the body
(no lock; a mismatch stores nothing), then `publish()` makes it durable under its id, called while
holding the shared gc lock together with the metadata upsert. Engines: `engines/dir.py` (a local
directory); an S3-compatible engine can implement the same methods.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StagedBlock:
    """A received, verified block not yet published. Engine-specific fields are opaque."""

    block_id: str
    size: int
    temp_path: Path | None = None
    # Chunks held in memory instead of a temp file (when the block already existed at start).
    chunks: list[bytes] = field(default_factory=list)


class BlockStore(abc.ABC):
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
