"""POSIX semantics of the drive (layer 3): namespace operations, open files, commit on close and
fsync with optimistic locking and conflicted copies, the durable commit queue, and the one place
that invalidates cached metadata (`invalidate`), for the change feed to call.

Does not import pyfuse3: the kernel adapter (fuse_ops) decodes arguments, calls this class, and
translates `CloudfsError` into errnos. Every public coroutine may raise `CloudfsError`.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from cloudfs import errors
from cloudfs.api import ApiClient
from cloudfs.blocks import BlockStore
from cloudfs.cache import LocalCache
from cloudfs.chunking import Chunker, ChunkParams
from cloudfs.files import FileState, build_manifest
from cloudfs.inodes import ROOT_INODE, Inode, InodeTable
from cloudfs.locks import KeyedLock
from cloudfs.protocol import Node, conflict_name, decode_name

log = logging.getLogger(__name__)

BLKSIZE = 1 << 20
OFFLINE_BACKOFF_S = 5.0
HELD_UPLOAD_BYTES = 64 << 20  # new blocks a commit keeps in memory to upload without re-reading


class Notifier(Protocol):
    """Drops kernel caches. Implementations must not block the event loop (worker thread)."""

    def invalidate_inode(self, ino: int, attr_only: bool = False) -> None: ...

    def invalidate_entry(self, parent_ino: int, name: bytes) -> None: ...


class NullNotifier:
    def invalidate_inode(self, ino: int, attr_only: bool = False) -> None:
        pass

    def invalidate_entry(self, parent_ino: int, name: bytes) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Attr:
    """Attributes for the kernel (layer-3 value; the adapter makes EntryAttributes of it)."""

    ino: int
    mode: int  # including the S_IF* kind bits
    size: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    uid: int
    gid: int
    version: int


@dataclass
class Handle:
    ino: int
    writable: bool
    append: bool
    state: FileState


@dataclass
class DirHandle:
    ino: int
    node_id: int
    entries: list[Node]
    next_after: str | None
    done: bool
    from_cache: bool = False  # pages come from the LMDB listing (live change feed)
    sync_generation: int = -1  # fs.sync_generation when the server listing started


@dataclass(frozen=True)
class Options:
    device: str
    chunk_params: ChunkParams = field(default_factory=ChunkParams)
    attr_timeout_s: float = 1.0
    commit_budget_s: float = 8.0  # how long close() tries before queueing the commit
    queue_retry_s: float = 2.0


_KIND_BITS = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK}


class FileSystem:
    """The drive as POSIX sees it. One instance per mount; all methods run on the trio loop."""

    def __init__(
        self,
        api: ApiClient,
        cache: LocalCache,
        root_id: int,
        staging_dir: Path,
        options: Options,
        nursery: trio.Nursery | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.api = api
        self.cache = cache
        self.options = options
        self.nursery = nursery
        self.notifier: Notifier = notifier or NullNotifier()
        self.blocks = BlockStore(cache, api, nursery)
        self.table = InodeTable(root_id)
        self.staging_dir = Path(staging_dir)
        self.staging_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._locks = KeyedLock()
        self._files: dict[int, FileState] = {}  # by ino
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._queue_wakeup = trio.Event()
        self._last_usage: dict[str, Any] | None = None
        self._offline_until_s = 0.0  # metadata is served from what we know until then
        self.metadata_live = False  # set by the change feed: cached metadata is authoritative
        self.sync_generation = 0  # bumped by the change feed for every foreign change it applies
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.commits = 0
        self.conflicts = 0
        self._background_commits = 0
        self._committing: set[int] = set()
        for leftover in self.staging_dir.iterdir():
            leftover.unlink()

    # ==== setup ==================================================================================
    async def start(self) -> None:
        """Load the root node. Raises CloudfsError if the server cannot be asked."""
        root = await self.api.get_node(self.table.root_id)
        self._learn(root, lookups=1)
        dropped = self.drop_orphan_blocks()
        if dropped:
            log.info(
                "dropped %d unreferenced dirty blocks (edits never closed before a crash)", dropped
            )

    def drop_orphan_blocks(self) -> int:
        """Dirty blocks that no queued commit references (left by a crash before close or by
        a commit that finished) can never be needed: drop them so they do not pin the cache.
        Only safe when no file is open (at start)."""
        referenced = {b for e in self.cache.queued() for b, _ in e["blocks"]}
        referenced.update(b for st in self._files.values() for b, _ in st.base.blocks)
        orphans = [b for b in self.cache.dirty_block_ids() if b not in referenced]
        self.cache.drop_blocks(orphans, force=True)
        return len(orphans)

    # ==== metadata helpers =======================================================================
    def _learn(self, node: Node, lookups: int = 0) -> Inode:
        inode = self.table.learn(node, lookups)
        self.cache.put_node(node.to_json())
        return inode

    def attr_of(self, inode: Inode) -> Attr:
        node = inode.node
        size, mtime_ns = node.size, node.mtime_ns
        state = self._files.get(inode.ino)
        if state is not None and (state.writers or state.is_dirty or state.queued):
            # this mount's content; a clean file open only for reading shows the server's
            # current attributes (the change feed may have a newer version than its readers)
            size, mtime_ns = state.size, state.mtime_ns
        return Attr(
            ino=inode.ino,
            mode=_KIND_BITS.get(node.kind, stat.S_IFREG) | node.mode,
            size=size,
            mtime_ns=mtime_ns,
            ctime_ns=max(node.ctime_ns, mtime_ns),
            nlink=2 if node.is_dir else 1,
            uid=self.uid,
            gid=self.gid,
            version=node.version,
        )

    def _attr_of_node(self, node: Node) -> Attr:
        inode = self.table.by_node(node.node_id)
        if inode is not None:
            return self.attr_of(inode)
        return Attr(
            ino=self.table.ino_of(node.node_id),
            mode=_KIND_BITS.get(node.kind, stat.S_IFREG) | node.mode,
            size=node.size,
            mtime_ns=node.mtime_ns,
            ctime_ns=max(node.ctime_ns, node.mtime_ns),
            nlink=2 if node.is_dir else 1,
            uid=self.uid,
            gid=self.gid,
            version=node.version,
        )

    def _fresh(self, inode: Inode) -> bool:
        """Whether `inode`'s metadata may be served without asking the server."""
        if inode.unlinked:
            return True
        if self.metadata_live and inode.fetched_at_s != float("-inf"):  # not invalidated
            return True
        return time.monotonic() - inode.fetched_at_s < self.options.attr_timeout_s

    def _dir(self, ino: int) -> Inode:
        inode = self.table.get(ino)
        if not inode.node.is_dir:
            raise errors.NotADirectoryError_(f"inode {ino} is not a directory")
        return inode

    def invalidate(
        self, node_id: int, parent_id: int | None = None, name: str | None = None, data: bool = True
    ) -> None:
        """The one place that forgets cached metadata about a node (and a directory entry):
        the LMDB copy, the inode's freshness, and the kernel's caches (via the notifier, which
        works off the event loop). Safe to call for nodes the mount never saw. Never raises.
        The node's own directory entry stays (lookups then ask the server for the node); it is
        dropped only when `parent_id`/`name` are given. Pages of an open file are kept (only
        its attributes are invalidated): full invalidation during a read can deadlock."""
        self.cache.drop_node(node_id, keep_entry=True)
        inode = self.table.by_node(node_id)
        if inode is not None:
            inode.fetched_at_s = float("-inf")
            if data:
                inode.page_cache_version = None
            attr_only = not data or inode.opens > 0 or inode.node.is_dir
            self.notifier.invalidate_inode(inode.ino, attr_only=attr_only)
        if parent_id is not None and name is not None:
            self.cache.drop_entry(parent_id, name)
            parent = self.table.by_node(parent_id)
            if parent is not None:
                self.notifier.invalidate_entry(parent.ino, name.encode())

    # ==== lookups and attributes =================================================================
    async def lookup(self, parent_ino: int, name: bytes) -> Attr:
        parent = self._dir(parent_ino)
        name_s = decode_name(name)
        if self.metadata_live:  # the change feed keeps the LMDB metadata current
            child_id = self.cache.get_entry(parent.node_id, name_s)
            if child_id is not None:
                cached = self.cache.get_node(child_id)
                if cached is not None:
                    return self.attr_of(self._learn(Node.from_json(cached), lookups=1))
            elif self.cache.is_listed(parent.node_id):
                raise errors.NodeNotFoundError(f"{name_s} does not exist (cached listing)")
        try:
            node = await self.api.lookup(parent.node_id, name_s)
        except errors.NodeNotFoundError:
            self.cache.drop_entry(parent.node_id, name_s)
            raise
        except errors.TemporaryError:
            offline = self._cached_child(parent.node_id, name_s)  # offline: what we knew
            if offline is None:
                raise
            return self.attr_of(self.table.learn(offline, lookups=1))
        return self.attr_of(self._learn(node, lookups=1))

    def _cached_child(self, parent_id: int, name: str) -> Node | None:
        """The metadata cache's idea of `name` in `parent_id` (used while offline)."""
        child_id = self.cache.get_entry(parent_id, name)
        if child_id is None:
            return None
        obj = self.cache.get_node(child_id)
        return None if obj is None else Node.from_json(obj)

    def forget(self, items: list[tuple[int, int]]) -> None:
        """Never raises (pyfuse3 requires it)."""
        for ino, count in items:
            inode = self.table.find(ino)
            if inode is None:
                continue
            inode.lookups = max(0, inode.lookups - count)
            self._maybe_drop(inode)

    def _maybe_drop(self, inode: Inode) -> None:
        state = self._files.get(inode.ino)
        busy = state is not None and (state.handles > 0 or state.is_dirty or state.queued)
        if self.table.maybe_drop(inode, busy=busy) and state is not None:
            state.close_staging()
            del self._files[inode.ino]

    async def getattr(self, ino: int) -> Attr:
        inode = self.table.get(ino)
        if not self._fresh(inode):
            await self._refresh(inode)
        return self.attr_of(inode)

    async def _refresh(self, inode: Inode, blocks: bool = False) -> Inode:
        """Fresh metadata (and block list) from the server. While the server is unreachable,
        what we already know is served instead (offline reads of known files); after a failure
        the server is not asked again for a few seconds, so stat() does not stall each time."""
        known = inode.blocks is not None or not blocks
        if known and time.monotonic() < self._offline_until_s:
            return inode
        try:
            node = await self.api.get_node(inode.node_id, blocks=blocks)
        except errors.TemporaryError:
            self._offline_until_s = time.monotonic() + OFFLINE_BACKOFF_S
            if known:
                log.info("server unreachable; serving cached metadata of %s", inode.node.name)
                return inode
            raise
        except errors.NodeNotFoundError:
            # Gone on the server (removed or replaced, possibly by a rename still in flight
            # here): what we already hold stays readable, as on a local filesystem.
            if inode.unlinked or inode.blocks is not None or inode.ino in self._files:
                inode.unlinked = True
                return inode
            raise
        return self._learn(node)

    async def setattr(
        self,
        ino: int,
        mode: int | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
        fh: int | None = None,
    ) -> Attr:
        inode = self.table.get(ino)
        if size is not None:
            if inode.node.is_dir:
                raise errors.IsADirectoryError_("cannot truncate a directory")
            async with self._locks.hold(ino):
                state = await self._state_for(inode)
                state.truncate(size)
                if mtime_ns is not None:
                    state.touch(mtime_ns)
                    mtime_ns = None
                if state.writers == 0:
                    await self._commit_locked(inode, state)
                self._release_state_if_idle(inode)
        if mtime_ns is not None:
            open_state = self._files.get(ino)
            if open_state is not None and open_state.is_dirty:
                open_state.touch(mtime_ns)
                mtime_ns = None
            elif open_state is not None:
                open_state.mtime_ns = mtime_ns
        if (mode is not None or mtime_ns is not None) and not inode.unlinked:
            node = await self.api.patch(
                inode.node_id, mode=None if mode is None else mode & 0o7777, mtime_ns=mtime_ns
            )
            self._learn(node)
        elif mode is not None:
            inode.node = _replace_node(inode.node, mode=mode & 0o7777)
        return self.attr_of(inode)

    async def readlink(self, ino: int) -> bytes:
        inode = self.table.get(ino)
        if inode.node.kind != "symlink":
            raise errors.BadRequestError("not a symlink")
        return (inode.node.target or "").encode()

    async def statfs(self) -> dict[str, int]:
        try:
            usage = await self.api.usage()
            self._last_usage = usage
        except errors.TemporaryError:
            if self._last_usage is None:
                raise
            usage = self._last_usage  # offline: the last known figures
        used = int(usage.get("logical_bytes") or 0)
        quota = usage.get("quota_bytes")
        total = int(quota) if quota else max(used * 2, 1 << 40)
        bsize = 4096
        files = int(usage.get("files") or 0) + int(usage.get("directories") or 0)
        return {
            "f_bsize": bsize,
            "f_frsize": bsize,
            "f_blocks": total // bsize,
            "f_bfree": max(0, total - used) // bsize,
            "f_bavail": max(0, total - used) // bsize,
            "f_files": files + 1_000_000,
            "f_ffree": 1_000_000,
            "f_favail": 1_000_000,
            "f_namemax": 255,
        }

    # ==== namespace ==============================================================================
    async def mkdir(self, parent_ino: int, name: bytes, mode: int) -> Attr:
        parent = self._dir(parent_ino)
        generation = self.sync_generation
        node = await self.api.create(
            parent.node_id, decode_name(name), "dir", mode=mode & 0o7777, mtime_ns=time.time_ns()
        )
        inode = self._learn(node, lookups=1)
        if self.metadata_live and generation == self.sync_generation:
            # A directory this mount just made is known to be empty: lookups of new names in
            # it (the kernel asks before every create) need no server call. Later changes by
            # other devices reach it through the feed like any listed directory.
            self.cache.put_listing(node.node_id, ())
        return self.attr_of(inode)

    async def symlink(self, parent_ino: int, name: bytes, target: bytes) -> Attr:
        parent = self._dir(parent_ino)
        try:
            target_s = target.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise errors.InvalidNameError("symlink target is not UTF-8") from exc
        node = await self.api.create(
            parent.node_id,
            decode_name(name),
            "symlink",
            mode=0o777,
            target=target_s,
            mtime_ns=time.time_ns(),
        )
        return self.attr_of(self._learn(node, lookups=1))

    async def unlink(self, parent_ino: int, name: bytes) -> None:
        parent = self._dir(parent_ino)
        name_s = decode_name(name)
        node = await self.api.lookup(parent.node_id, name_s)
        if node.is_dir:
            raise errors.IsADirectoryError_(f"{name_s} is a directory")
        await self._keep_readable(node.node_id)
        await self.api.delete(node.node_id)
        self._mark_unlinked(node.node_id, parent.node_id, name_s)

    async def rmdir(self, parent_ino: int, name: bytes) -> None:
        parent = self._dir(parent_ino)
        name_s = decode_name(name)
        node = await self.api.lookup(parent.node_id, name_s)
        if not node.is_dir:
            raise errors.NotADirectoryError_(f"{name_s} is not a directory")
        await self.api.delete(node.node_id)
        self._mark_unlinked(node.node_id, parent.node_id, name_s)

    async def _keep_readable(self, node_id: int) -> None:
        """Before a file disappears from the server, remember its block list if the kernel
        still holds it, so descriptors (and opens racing with the removal) keep reading."""
        inode = self.table.by_node(node_id)
        if inode is None or inode.node.kind != "file":
            return
        if inode.blocks is None:
            try:
                await self._refresh(inode, blocks=True)
            except errors.NodeNotFoundError:
                pass

    def _mark_unlinked(self, node_id: int, parent_id: int, name: str) -> None:
        self.cache.drop_node(node_id)
        self.cache.drop_entry(parent_id, name)
        inode = self.table.by_node(node_id)
        if inode is not None:
            inode.unlinked = True
            state = self._files.get(inode.ino)
            if state is not None:
                state.unlinked = True
                if not state.queued:
                    state.content_dirty = state.mtime_dirty = False
            self._maybe_drop(inode)

    async def rename(
        self,
        old_parent_ino: int,
        old_name: bytes,
        new_parent_ino: int,
        new_name: bytes,
        noreplace: bool = False,
        exchange: bool = False,
    ) -> None:
        if exchange:
            raise errors.NotSupportedError("RENAME_EXCHANGE is not supported")
        src_parent = self._dir(old_parent_ino)
        dst_parent = self._dir(new_parent_ino)
        old_s, new_s = decode_name(old_name), decode_name(new_name)
        node = await self.api.lookup(src_parent.node_id, old_s)
        target: Node | None = None
        if not noreplace:
            try:
                target = await self.api.lookup(dst_parent.node_id, new_s)
            except errors.NodeNotFoundError:
                target = None
            if target is not None and target.node_id == node.node_id:
                return
            if target is not None and target.kind == "file":
                await self._keep_readable(target.node_id)
        moved, replaced = await self.api.move(
            node.node_id, dst_parent.node_id, new_s, replace=not noreplace
        )
        inode = self.table.by_node(moved.node_id)
        if inode is not None:
            state = self._files.get(inode.ino)
            if state is not None and moved.version != inode.node.version:
                # the moved file took over the replaced file's history: same content, new number
                state.base_version = moved.version
            self._learn(moved)
        else:
            self.cache.put_node(moved.to_json())
        self.cache.drop_entry(src_parent.node_id, old_s)
        if replaced is not None:
            self._mark_unlinked(replaced, dst_parent.node_id, new_s)
            self.cache.put_node(moved.to_json())

    # ==== directories ============================================================================
    async def opendir(self, ino: int) -> int:
        inode = self._dir(ino)
        fh = self._new_fh()
        self._dirs[fh] = DirHandle(
            ino=ino, node_id=inode.node_id, entries=[], next_after=None, done=False
        )
        return fh

    async def readdir(self, fh: int, start: int, reply: Callable[[bytes, Attr, int], bool]) -> None:
        """Calls `reply(name, attr, next_offset)` for entries from offset `start` until it returns
        False. Pages are fetched from the server as the listing advances (never all at once)."""
        handle = self._dirs.get(fh)
        if handle is None:
            raise errors.BadRequestError(f"unknown directory handle {fh}")
        index = start
        while True:
            while index >= len(handle.entries) and not handle.done:
                page, nxt = await self._children_page(handle)
                handle.entries.extend(page)
                handle.next_after = nxt
                handle.done = nxt is None or not page
                if handle.done and not handle.from_cache:
                    self._maybe_mark_listed(handle)
            if index >= len(handle.entries):
                return
            node = handle.entries[index]
            inode = self.table.by_node(node.node_id)
            if inode is not None and inode.ino not in self._files:
                self.table.learn(node)
            if not reply(node.name.encode(), self._attr_of_node(node), index + 1):
                return
            self._learn(node, lookups=1)
            index += 1

    async def _children_page(self, handle: DirHandle) -> tuple[list[Node], str | None]:
        """The next page of a listing: from LMDB when the change feed is live and the directory
        was listed completely before (nodes missing there are fetched one by one), else from the
        server."""
        if not handle.entries and handle.next_after is None:
            handle.from_cache = self.metadata_live and self.cache.is_listed(handle.node_id)
            handle.sync_generation = self.sync_generation
        if not handle.from_cache:
            return await self.api.children(handle.node_id, after=handle.next_after)
        names = self.cache.list_entries(handle.node_id, after=handle.next_after, limit=1000)
        page: list[Node] = []
        for name, child_id in names:
            cached = self.cache.get_node(child_id)
            if cached is not None:
                page.append(Node.from_json(cached))
                continue
            try:
                node = await self.api.get_node(child_id)
            except errors.NodeNotFoundError:
                node = None
            if node is None or node.parent != handle.node_id or node.name != name:
                self.cache.drop_entry(handle.node_id, name)  # stale; the feed fixes the rest
                continue
            self.cache.put_node(node.to_json())
            page.append(node)
        return page, (names[-1][0] if len(names) == 1000 else None)

    def _maybe_mark_listed(self, handle: DirHandle) -> None:
        """A complete server listing read while the feed was live and applied no foreign change
        in between: remember it, so later listings and lookups need no server call."""
        if self.metadata_live and handle.sync_generation == self.sync_generation:
            self.cache.put_listing(handle.node_id, (n.to_json() for n in handle.entries))

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ==== files ==================================================================================
    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def _state_for(self, inode: Inode, current: bool = False) -> FileState:
        """The shared open-file state of `inode`, loading its block list if needed.
        `current`: the caller knows the cached node and blocks are the server's latest (it just
        created the file), so no refresh round trip is needed."""
        state = self._files.get(inode.ino)
        if state is not None:
            return state
        if inode.node.kind != "file":
            raise errors.IsADirectoryError_(f"inode {inode.ino} is not a regular file")
        if inode.blocks is None or not (inode.unlinked or current):
            await self._refresh(inode, blocks=True)
        if inode.blocks is None:
            if inode.node.size == 0:
                inode.blocks = ()
            else:
                raise errors.NodeNotFoundError(f"content of inode {inode.ino} is not available")
        state = FileState(
            inode.node_id, inode.node.version, inode.blocks, inode.node.mtime_ns, self.staging_dir
        )
        state.unlinked = inode.unlinked
        self._files[inode.ino] = state
        return state

    async def open(self, ino: int, flags: int, created: bool = False) -> tuple[int, bool]:
        """Returns (fh, keep_cache). `created`: this mount has just created the file."""
        inode = self.table.get(ino)
        if inode.node.is_dir:
            raise errors.IsADirectoryError_("cannot open a directory as a file")
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        async with self._locks.hold(ino):
            state = self._files.get(ino)
            if state is not None and state.handles == 0 and not state.is_dirty and not state.queued:
                # nobody has it open: look for a newer version on the server
                state.close_staging()
                del self._files[ino]
                state = None
            elif (
                state is not None
                and state.writers == 0
                and not state.is_dirty
                and not state.queued
                and inode.page_cache_version != state.base_version
                and not inode.unlinked
            ):
                # readers only, and the change feed said the file changed: a new open sees the
                # new version (close-to-open), as do the pages the kernel reads from now on
                fresh = await self._refresh(inode, blocks=True)
                if fresh.node.version != state.base_version and fresh.blocks is not None:
                    state.rebase(fresh.node.version, fresh.blocks, fresh.node.mtime_ns)
            if state is None:
                state = await self._state_for(inode, current=created)
            if flags & os.O_TRUNC and writable and state.size:
                state.truncate(0)
            fh = self._new_fh()
            self._handles[fh] = Handle(
                ino=ino, writable=writable, append=bool(flags & os.O_APPEND), state=state
            )
            state.handles += 1
            if writable:
                state.writers += 1
            inode.opens += 1
            keep = inode.page_cache_version == state.base_version and not state.is_dirty
            inode.page_cache_version = state.base_version
            return fh, keep

    async def create(self, parent_ino: int, name: bytes, mode: int, flags: int) -> tuple[int, Attr]:
        parent = self._dir(parent_ino)
        name_s = decode_name(name)
        created = True
        try:
            node = await self.api.create(
                parent.node_id, name_s, "file", mode=mode & 0o7777, mtime_ns=time.time_ns()
            )
        except errors.NameExistsError:
            if flags & os.O_EXCL:
                raise
            created = False
            node = await self.api.lookup(parent.node_id, name_s)
            if node.is_dir:
                raise errors.IsADirectoryError_(f"{name_s} is a directory") from None
        inode = self._learn(node, lookups=1)
        if node.size == 0:
            inode.blocks = ()
        fh, _ = await self.open(inode.ino, flags, created=created)
        return fh, self.attr_of(inode)

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise errors.BadRequestError(f"unknown file handle {fh}")
        return handle

    async def read(self, fh: int, offset: int, length: int) -> bytes | bytearray | memoryview:
        handle = self._handle(fh)
        return await handle.state.read(offset, length, self.blocks)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._handle(fh)
        state = handle.state
        # backpressure: a writer faster than sealing/uploading waits for it to catch up
        while state.sealing and state.staged_bytes > self._stage_limit_bytes:
            await state.seal_progress.wait()
        async with self._locks.hold(handle.ino):
            if handle.append:
                offset = state.size
            written = state.write(offset, data)
        self._account_staging()
        self._maybe_seal(handle.ino, state)
        return written

    # ---- sealing: sequential writers upload finished chunks while they write ----------------
    @property
    def _seal_min_bytes(self) -> int:
        return max(self.options.chunk_params.max_bytes * 3 // 2, 4096)

    @property
    def _stage_limit_bytes(self) -> int:
        return max(2 * self._seal_min_bytes, min(64 << 20, self.cache.limit_bytes // 8))

    def _maybe_seal(self, ino: int, state: FileState) -> None:
        if state.sealing or self.nursery is None or state.unlinked:
            return
        start = state.sealable_from()
        if start is None or state.size - start < self._seal_min_bytes:
            return
        state.sealing = True
        self.nursery.start_soon(self._seal_task, ino, state)

    async def _seal_task(self, ino: int, state: FileState) -> None:
        """Cut the finished part of a sequential writer's dirty tail into chunks, store them
        (pinned), make them base blocks, and upload them; uploads of up to two windows run
        while the next window is cut."""
        chunker = Chunker(self.options.chunk_params)
        window = max(2 * self._seal_min_bytes, min(32 << 20, self._stage_limit_bytes))
        in_flight = trio.Semaphore(2)
        paused = False

        async def upload(held: dict[str, bytes | bytearray | memoryview]) -> None:
            nonlocal paused
            try:
                await self.blocks.upload(list(held), data=held)
            except errors.TemporaryError as exc:
                log.info("upload while writing paused (%s); close() will retry", exc)
                paused = True
            except errors.CloudfsError as exc:
                log.warning("upload while writing failed (%s); close() will retry", exc)
                paused = True
            finally:
                in_flight.release()

        try:
            async with trio.open_nursery() as uploads:
                while not paused:
                    async with self._locks.hold(ino):
                        if state.unlinked or self._files.get(ino) is not state:
                            break
                        start = state.sealable_from()
                        if start is None or state.size - start < self._seal_min_bytes:
                            break
                        buf = state.read_staging(start, min(state.size, start + window))
                        chunks, _ = await trio.to_thread.run_sync(chunker.cut_and_hash, buf, False)
                        if not chunks:
                            break
                        view = memoryview(buf)
                        held: dict[str, bytes | bytearray | memoryview] = {
                            b: view[o : o + n] for b, o, n in chunks
                        }
                        await self._store_dirty(list(held.items()))
                        state.seal(start, [(b, n) for b, _, n in chunks])
                        self._account_staging()
                        del buf, view
                    progress, state.seal_progress = state.seal_progress, trio.Event()
                    progress.set()
                    await in_flight.acquire()
                    uploads.start_soon(upload, held)
        except errors.CloudfsError as exc:
            log.warning("sealing of inode %d stopped: %s", ino, exc)
            paused = True
        finally:
            state.sealing = False
            state.seal_progress.set()
            state.seal_progress = trio.Event()
        # Writes that arrived while the last uploads were in flight found `sealing` set and did
        # not start a task: look again, or their data would wait for close().
        if not paused and self._files.get(ino) is state:
            self._maybe_seal(ino, state)

    def _account_staging(self) -> None:
        """Staged bytes count against the cache budget (they live in the cache dir too)."""
        self.cache.reserved_bytes = sum(st.staged_bytes for st in self._files.values())

    async def _store_dirty(self, items: list[tuple[str, bytes | bytearray | memoryview]]) -> None:
        """Store new blocks locally, pinned until the server has them. When data the server
        has not acknowledged fills the cache, upload it to make room (writers wait); ENOSPC
        only when that cannot help (server unreachable, or the data alone exceeds the budget).
        """
        for _attempt in range(4):
            try:
                self.cache.put_dirty(items)
                return
            except errors.QuotaExceededError as exc:
                full = exc
            try:
                await self.blocks.upload(self.cache.dirty_block_ids())
            except errors.TemporaryError as exc:
                raise errors.QuotaExceededError(
                    "local cache is full of data the server has not acknowledged yet"
                ) from exc
        raise full

    async def flush(self, fh: int) -> None:
        """close(2) of a descriptor: the last writer's close commits (errors reach close)."""
        handle = self._handle(fh)
        if handle.writable and handle.state.writers <= 1 and handle.state.is_dirty:
            await self._commit(handle.ino)

    async def fsync(self, fh: int) -> None:
        handle = self._handle(fh)
        if handle.state.is_dirty:
            await self._commit(handle.ino)

    async def release(self, fh: int) -> None:
        """Errors here are discarded by the kernel: anything that must be reported happened in
        flush. A still-dirty last writer (mmap written after close) commits in the background."""
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        state = handle.state
        state.handles -= 1
        if handle.writable:
            state.writers -= 1
        inode = self.table.find(handle.ino)
        if inode is not None:
            inode.opens = max(0, inode.opens - 1)
        if state.writers == 0 and state.is_dirty and not state.unlinked:
            if self.nursery is not None:
                self.nursery.start_soon(self._background_commit, handle.ino)
            return
        if inode is not None:
            self._release_state_if_idle(inode)
            self._maybe_drop(inode)

    def _release_state_if_idle(self, inode: Inode) -> None:
        state = self._files.get(inode.ino)
        if state is not None and state.handles == 0 and not state.is_dirty and not state.queued:
            state.close_staging()
            del self._files[inode.ino]

    async def _background_commit(self, ino: int) -> None:
        self._background_commits += 1
        try:
            await self._commit(ino)
        except errors.CloudfsError as exc:
            log.error("background commit of inode %d failed: %s", ino, exc)
        finally:
            self._background_commits -= 1
        inode = self.table.find(ino)
        if inode is not None:
            self._release_state_if_idle(inode)
            self._maybe_drop(inode)

    # ==== commit =================================================================================
    async def _commit(self, ino: int) -> None:
        inode = self.table.get(ino)
        async with self._locks.hold(ino):
            state = self._files.get(ino)
            if state is not None:
                await self._commit_locked(inode, state)

    async def _commit_locked(self, inode: Inode, state: FileState) -> None:
        """Upload missing blocks, then commit the block list against the base version.
        Conflict → conflicted copy; unreachable → durable queue (returns normally).
        Caller holds the inode lock."""
        if not state.is_dirty or state.unlinked:
            return
        if not state.content_dirty and not state.queued:
            # only the mtime changed: a PATCH is enough
            patched = await self.api.patch(state.node_id, mtime_ns=state.mtime_ns)
            state.mtime_dirty = False
            self._learn(patched)
            return
        new_ids: list[str] = []
        held: dict[str, bytes | bytearray | memoryview] = {}  # up to 64 MiB, sent from memory
        held_bytes = 0

        async def store_dirty(items: list[tuple[str, bytes | bytearray | memoryview]]) -> None:
            nonlocal held_bytes
            await self._store_dirty(items)
            new_ids.extend(bid for bid, _ in items)
            for bid, data in items:
                if held_bytes + len(data) <= HELD_UPLOAD_BYTES:
                    held[bid] = data
                    held_bytes += len(data)

        block_list = await build_manifest(
            state, self.blocks, self.options.chunk_params, store_dirty
        )
        size = sum(n for _, n in block_list)
        entry = {
            "node_id": state.node_id,
            "base_version": state.base_version,
            "size": size,
            "blocks": block_list,
            "mtime_ns": state.mtime_ns,
            "mode": inode.node.mode,
            "parent": inode.node.parent,
            "name": inode.node.name,
            "queued_at_ns": time.time_ns(),
            "new_blocks": sorted(set(new_ids)),
        }
        self._committing.add(inode.ino)
        try:
            # bounded: close() must return even if the server hangs
            pushed: Node | None = None
            with trio.move_on_after(self.options.commit_budget_s + 2.0) as scope:
                pushed = await self._push(entry, budget_s=self.options.commit_budget_s, data=held)
            if scope.cancelled_caught:
                raise errors.TemporaryError("the server did not answer the commit in time")
        except errors.TemporaryError as exc:
            log.warning("server unreachable, queueing commit of %s: %s", inode.node.name, exc)
            self._queue(state, entry, block_list)
            self._queue_wakeup.set()
            return
        except errors.QuotaExceededError as exc:
            # close() reports ENOSPC, but the edit is not dropped: it waits in the durable
            # queue (retried every queue_retry_s) until space is freed or the quota raised.
            log.warning("over quota, keeping the edit of %s queued: %s", inode.node.name, exc)
            entry["waiting_for"] = "quota"
            self._queue(state, entry, block_list)
            raise
        finally:
            self._committing.discard(inode.ino)
        node = pushed
        if node is None:  # resolved as a conflicted copy; the file now holds the server's version
            try:
                current = await self._refresh(inode, blocks=True)
                state.rebase(current.node.version, current.blocks or (), current.node.mtime_ns)
            except errors.NodeNotFoundError:  # deleted elsewhere; our content is in the copy
                state.rebase(state.base_version, block_list, state.mtime_ns)
                state.unlinked = inode.unlinked = True
            state.queued = False
            self.cache.drop_queued(state.node_id)
            self.invalidate(state.node_id)
            return
        state.rebase(node.version, block_list, node.mtime_ns)
        state.queued = False
        self.cache.drop_queued(state.node_id, new_ids)
        learned = self._learn(node.with_blocks(tuple(block_list)))
        learned.page_cache_version = node.version
        self.commits += 1

    def _queue(self, state: FileState, entry: dict[str, Any], block_list: list[Any]) -> None:
        """Keep a commit that did not go through in the durable queue (fsync'ed before return)."""
        self.cache.put_queued(state.node_id, entry)
        state.rebase(state.base_version, block_list, state.mtime_ns)
        state.queued = True

    async def _push(
        self,
        entry: dict[str, Any],
        budget_s: float | None,
        data: dict[str, bytes | bytearray | memoryview] | None = None,
    ) -> Node | None:
        """Send one commit (uploads first). Returns the new node, or None when it ended as a
        conflicted copy. Raises TemporaryError if the server cannot be reached."""
        blocks = [(b, int(n)) for b, n in entry["blocks"]]
        await self.blocks.upload(list(dict.fromkeys(b for b, _ in blocks)), data=data)
        for _attempt in range(3):
            try:
                return await self.api.commit(
                    entry["node_id"],
                    entry["base_version"],
                    entry["size"],
                    blocks,
                    mtime_ns=entry["mtime_ns"],
                    budget_s=budget_s,
                )
            except errors.MissingBlocksError as exc:
                log.warning("server lacks %d blocks; uploading them again", len(exc.missing))
                await self.blocks.upload(exc.missing, known_missing=True)
            except errors.VersionConflictError as exc:
                mine = await self._already_committed(entry)
                if mine is not None:  # our own commit whose answer was lost (queue replay)
                    return mine
                await self._conflicted_copy(entry, exc.details)
                return None
            except errors.NodeNotFoundError:
                inode = self.table.by_node(entry["node_id"])
                if inode is not None and inode.unlinked:
                    log.info("file %s was removed here; dropping its pending edit", entry["name"])
                    return None
                await self._conflicted_copy(entry, {"committed_by": "(deleted elsewhere)"})
                return None
        raise errors.ProtocolError("the server keeps reporting missing blocks after upload")

    async def _already_committed(self, entry: dict[str, Any]) -> Node | None:
        """The server's current node if it already holds exactly this content from us."""
        try:
            current = await self.api.get_node(entry["node_id"], blocks=True)
        except errors.NodeNotFoundError:
            return None
        blocks = tuple((b, int(n)) for b, n in entry["blocks"])
        if current.committed_by == self.options.device and current.blocks == blocks:
            return current
        return None

    async def _conflicted_copy(self, entry: dict[str, Any], details: dict[str, Any]) -> None:
        """Keep our content as a sibling `NAME (conflicted copy from DEVICE …).EXT`."""
        parent_id, name = entry["parent"], entry["name"]
        try:
            current = await self.api.get_node(entry["node_id"])
            parent_id, name = current.parent, current.name
        except errors.NodeNotFoundError:
            try:
                await self.api.get_node(parent_id)
            except errors.NodeNotFoundError:
                parent_id = self.table.root_id
        blocks = [(b, int(n)) for b, n in entry["blocks"]]
        when = time.time()
        for attempt in range(100):
            copy_name = conflict_name(name, self.options.device, when, attempt)
            try:
                node = await self.api.create(
                    parent_id,
                    copy_name,
                    "file",
                    mode=entry["mode"],
                    mtime_ns=entry["mtime_ns"],
                    size=entry["size"],
                    blocks=blocks,
                )
                break
            except errors.NameExistsError:
                continue
        else:
            raise errors.ProtocolError("could not find a free name for the conflicted copy")
        self.cache.put_node(node.to_json())
        self.cache.mark_clean(entry.get("new_blocks", []))
        record = {
            "time_ns": time.time_ns(),
            "name": name,
            "copy": copy_name,
            "node_id": entry["node_id"],
            "copy_id": node.node_id,
            "other_device": details.get("committed_by"),
            "other_version": details.get("current_version"),
        }
        self.cache.add_conflict(record["time_ns"], record)
        self.conflicts += 1
        log.warning(
            "conflict on %s: kept this device's content as %s (other device: %s)",
            name,
            copy_name,
            details.get("committed_by"),
        )
        parent_inode = self.table.by_node(parent_id)
        if parent_inode is not None:
            self.invalidate(parent_id, data=False)

    # ==== the durable queue ======================================================================
    def pending(self) -> list[dict[str, Any]]:
        return self.cache.queued()

    async def flush_queue(self, budget_s: float | None = None) -> int:
        """Try every queued commit once. Returns how many are still queued."""
        for entry in self.cache.queued():
            node_id = entry["node_id"]
            inode = self.table.by_node(node_id)
            ino = inode.ino if inode is not None else self.table.ino_of(node_id)
            async with self._locks.hold(ino):
                current = self.cache.get_queued(node_id)
                if current is None:
                    continue
                try:
                    node = await self._push(current, budget_s=budget_s)
                except (errors.TemporaryError, errors.QuotaExceededError) as exc:
                    log.info("queued commit of %s still waiting: %s", current["name"], exc)
                    reason = "quota" if isinstance(exc, errors.QuotaExceededError) else "server"
                    if current.get("waiting_for", "server") != reason:
                        self.cache.put_queued(node_id, {**current, "waiting_for": reason})
                    continue
                self.cache.drop_queued(node_id, current.get("new_blocks", []))
                state = self._files.get(ino)
                if node is not None:
                    self.commits += 1
                    self.cache.put_node(node.to_json())
                    if inode is not None:
                        self._learn(
                            node.with_blocks(tuple((b, int(n)) for b, n in current["blocks"]))
                        )
                    if state is not None and state.queued:
                        state.base_version = node.version
                        state.queued = False
                elif inode is not None and state is not None:
                    fresh = await self._refresh(inode, blocks=True)
                    if not state.is_dirty:
                        state.rebase(fresh.node.version, fresh.blocks or (), fresh.node.mtime_ns)
                    state.queued = False
                    self.invalidate(node_id)
                if inode is not None:
                    self._release_state_if_idle(inode)
                    self._maybe_drop(inode)
        return len(self.cache.queued())

    async def queue_task(self) -> None:
        """Background: retry the durable queue until it is empty, waking on new entries."""
        while True:
            if self.cache.queued():
                try:
                    left = await self.flush_queue(budget_s=1.0)
                except errors.CloudfsError as exc:
                    log.error("commit queue: %s", exc)
                    left = 1
                if left:
                    with trio.move_on_after(self.options.queue_retry_s):
                        await self._queue_wakeup.wait()
                    self._queue_wakeup = trio.Event()
                    continue
            await self._queue_wakeup.wait()
            self._queue_wakeup = trio.Event()

    async def drain(self, budget_s: float = 30.0) -> int:
        """Commit every dirty file and try the queue until empty or `budget_s` passes.
        Returns the number of commits still queued."""
        for ino, state in list(self._files.items()):
            if state.is_dirty and not state.unlinked:
                try:
                    await self._commit(ino)
                except errors.CloudfsError as exc:
                    log.error("commit of inode %d at unmount failed: %s", ino, exc)
        with trio.move_on_after(budget_s):
            while self._background_commits:  # noqa: ASYNC110 - a counter, polled briefly
                await trio.sleep(0.05)
            while await self.flush_queue(budget_s=2.0):
                if all(e.get("waiting_for") == "quota" for e in self.cache.queued()):
                    break  # waiting cannot help; they stay queued for the next mount
                await trio.sleep(0.5)
        return len(self.cache.queued())

    def status(self) -> dict[str, Any]:
        dirty = [
            {"node_id": s.node_id, "size": s.size, "staged_bytes": s.staged_bytes}
            for s in self._files.values()
            if s.is_dirty
        ]
        queued = [
            {
                "node_id": e["node_id"],
                "name": e["name"],
                "size": e["size"],
                "queued_at_ns": e["queued_at_ns"],
                "waiting_for": e.get("waiting_for", "server"),
            }
            for e in self.cache.queued()
        ]
        return {
            "cache": self.cache.statistics(),
            "dirty_files": dirty,
            "queued": queued,
            "uploads_pending": self.blocks.uploads_pending,
            "upload_bytes_pending": self.blocks.upload_bytes_pending,
            "uploaded_bytes": self.blocks.uploaded_bytes,
            "downloaded_bytes": self.api.bytes_downloaded,
            "committing": len(self._committing),
            "commits": self.commits,
            "conflicts": self.cache.recent_conflicts(10),
            "inodes": len(self.table),
            "open_files": len(self._handles),
        }


def _replace_node(node: Node, **changes: Any) -> Node:
    from dataclasses import replace

    return replace(node, **changes)


__all__ = ["ROOT_INODE", "Attr", "FileSystem", "Notifier", "NullNotifier", "Options"]
