"""The kernel adapter (layer 4): the one `pyfuse3.Operations` class. It decodes arguments, calls
the filesystem core, and translates `CloudfsError` into `FUSEError(errno)` (exactly here).

pyfuse3 ends the mount on any exception other than FUSEError, so an unexpected exception (a bug)
is logged with its traceback and answered EIO; `internal_errors` counts them.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from cloudfs import errors
from cloudfs.filesystem import Attr, FileSystem

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def fuse_errno(exc: BaseException) -> int:
    """The errno for an exception raised by the core (the unit-tested translation table)."""
    if isinstance(exc, errors.CloudfsError):
        return errors.errno_of(exc)
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def translated(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(self: CloudfsOperations, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except errors.CloudfsError as exc:
            code = fuse_errno(exc)
            if code == errno.EIO:
                log.warning("%s failed: %s", fn.__name__, exc)
            else:
                log.debug("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(code) from exc
        except OSError as exc:  # local staging I/O (disk full, ...)
            log.error("%s failed on local storage: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(fuse_errno(exc)) from exc
        except Exception as exc:
            self.internal_errors += 1
            log.exception("internal error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from exc

    return wrapper  # type: ignore[return-value]


class KernelNotifier:
    """Runs pyfuse3 invalidations in one worker thread (they may block on the kernel)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cloudfs-invalidate", daemon=True)
        self._thread.start()

    def invalidate_inode(self, ino: int, attr_only: bool = False) -> None:
        self._queue.put(("inode", (ino, attr_only)))

    def invalidate_entry(self, parent_ino: int, name: bytes) -> None:
        self._queue.put(("entry", (parent_ino, name)))

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, args = item
            try:
                if kind == "inode":
                    pyfuse3.invalidate_inode(args[0], attr_only=args[1])
                else:
                    pyfuse3.invalidate_entry_async(args[0], args[1], ignore_enoent=True)
            except OSError as exc:  # ENOENT: the kernel no longer caches it
                log.debug("invalidate %s %s: %s", kind, args, exc)
            except Exception:  # a dead thread would silently stop live sync: log, keep going
                log.exception("kernel invalidation %s %s failed", kind, args)


class CloudfsOperations(pyfuse3.Operations):
    enable_writeback_cache = False
    supports_dot_lookup = False

    def __init__(
        self, fs: FileSystem, attr_timeout_s: float = 1.0, entry_timeout_s: float = 1.0
    ) -> None:
        super().__init__()
        self.fs = fs
        self.attr_timeout_s = attr_timeout_s
        self.entry_timeout_s = entry_timeout_s
        self.internal_errors = 0

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = attr.ino
        entry.generation = 0
        entry.entry_timeout = self.entry_timeout_s
        entry.attr_timeout = self.attr_timeout_s
        entry.st_mode = attr.mode
        entry.st_nlink = attr.nlink
        entry.st_uid = attr.uid
        entry.st_gid = attr.gid
        entry.st_rdev = 0
        entry.st_size = attr.size
        entry.st_blksize = 1 << 20
        entry.st_blocks = (attr.size + 511) // 512
        entry.st_atime_ns = attr.mtime_ns
        entry.st_mtime_ns = attr.mtime_ns
        entry.st_ctime_ns = attr.ctime_ns
        return entry

    # ---- lifecycle (must not raise) --------------------------------------------------------------
    def init(self) -> None:
        log.info("filesystem initialised by the kernel")

    async def forget(self, inode_list: Any) -> None:
        try:
            self.fs.forget(list(inode_list))
        except Exception:  # forget must never raise
            log.exception("internal error in forget")

    # ---- metadata ----------------------------------------------------------------------------
    @translated
    async def lookup(
        self,
        parent_inode: int,
        name: bytes,
        ctx: Any = None,
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.lookup(parent_inode, name))

    @translated
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.getattr(inode))

    @translated
    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        result = await self.fs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            size=attr.st_size if fields.update_size else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            fh=fh,
        )
        return self._entry(result)

    @translated
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return await self.fs.readlink(inode)

    @translated
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        for key, value in (await self.fs.statfs()).items():
            setattr(data, key, value)
        return data

    # ---- namespace ---------------------------------------------------------------------------
    @translated
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.mkdir(parent_inode, name, mode & ~ctx.umask))

    @translated
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        raise errors.OperationNotPermittedError("only files, directories and symlinks")

    @translated
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.fs.symlink(parent_inode, name, target))

    @translated
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        raise errors.OperationNotPermittedError("hard links are not supported")

    @translated
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.fs.unlink(parent_inode, name)

    @translated
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.fs.rmdir(parent_inode, name)

    @translated
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        await self.fs.rename(
            parent_inode_old,
            name_old,
            parent_inode_new,
            name_new,
            noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
            exchange=bool(flags & pyfuse3.RENAME_EXCHANGE),
        )

    # ---- directories -------------------------------------------------------------------------
    @translated
    async def opendir(self, inode: int, ctx: Any) -> int:
        return await self.fs.opendir(inode)

    @translated
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        def reply(name: bytes, attr: Attr, next_id: int) -> bool:
            return pyfuse3.readdir_reply(token, name, self._entry(attr), next_id)

        await self.fs.readdir(fh, start_id, reply)

    @translated
    async def releasedir(self, fh: int) -> None:
        await self.fs.releasedir(fh)

    @translated
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # ---- files -------------------------------------------------------------------------------
    @translated
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fh, keep = await self.fs.open(inode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @translated
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, attr = await self.fs.create(parent_inode, name, mode & ~ctx.umask, flags)
        return pyfuse3.FileInfo(fh=fh), self._entry(attr)

    @translated
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:  # type: ignore[override]
        return await self.fs.read(fh, off, size)

    @translated
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.fs.write(fh, off, buf)

    @translated
    async def flush(self, fh: int) -> None:
        await self.fs.flush(fh)

    @translated
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh)

    @translated
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)


def raise_read_ahead(mountpoint: str, read_ahead_kb: int = 1024) -> bool:
    """Raise the mount's bdi read-ahead (the kernel otherwise asks for 128 KiB at a time)."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(read_ahead_kb))
        return True
    except OSError as exc:
        log.info("could not raise read-ahead for %s: %s", mountpoint, exc)
        return False
