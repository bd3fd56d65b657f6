"""The gc lock: uploads hold it shared while publishing, gc exclusive while deleting.

`GcLock` is the interface; `FileGcLock` (the embedded engine's) is a `fcntl.flock` on
`DATA/gc.lock`, so it also excludes a `cloudfs-server gc` run from another process; with
PostgreSQL metadata it is an advisory lock (`engines/postgres.PgGcLock`). An uncontended flock is
taken with LOCK_NB on the loop (two fast syscalls on a local file); a contended one is waited for
in this lock's own threads, so waiting uploads can never use up the default executor that file
I/O needs: the event loop never blocks on it.
"""

from __future__ import annotations

import abc
import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path


def _release_late(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        os.close(fut.result())


class GcLock(abc.ABC):
    """Many shared holders or one exclusive holder, across every process using the stores."""

    @abc.abstractmethod
    def shared(self) -> AbstractAsyncContextManager[None]: ...

    @abc.abstractmethod
    def exclusive(self) -> AbstractAsyncContextManager[None]: ...

    def close(self) -> None:  # noqa: B027 - most engines hold nothing to release
        """Release what the lock keeps between uses (connections). No call may follow."""


class FileGcLock(GcLock):
    def __init__(self, path: Path, max_waiters: int = 64) -> None:
        self.path = Path(path)
        self._waiters = ThreadPoolExecutor(max_workers=max_waiters, thread_name_prefix="gclock")

    def _try(self, operation: int) -> int | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _acquire(self, operation: int) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, operation)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @asynccontextmanager
    async def _held(self, operation: int) -> AsyncIterator[None]:
        # Each holder opens its own descriptor: flock locks belong to open file descriptions,
        # so shared holders in one process do not interfere with each other.
        fd = self._try(operation)
        if fd is None:
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self._waiters, self._acquire, operation)
            try:
                fd = await asyncio.shield(fut)
            except asyncio.CancelledError:
                # The thread may still get the lock; release it when it does.
                fut.add_done_callback(_release_late)
                raise
        try:
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def shared(self) -> AbstractAsyncContextManager[None]:
        return self._held(fcntl.LOCK_SH)

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        return self._held(fcntl.LOCK_EX)
