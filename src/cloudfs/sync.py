"""Live sync of remote changes (layer 3): `SyncTask` follows the account's change log
(`GET /v1/changes`, long-poll) from a cursor persisted in LMDB and drops exactly what each change
made stale from the metadata cache and the kernel's caches. Design: docs/sync.md.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import trio

from cloudfs import errors
from cloudfs.filesystem import FileSystem

log = logging.getLogger(__name__)

CURSOR_KEY = "sync.cursor"  # LMDB state key: seq of the last change applied to the cache


@dataclass(frozen=True)
class SyncOptions:
    wait_s: float = 25.0  # long-poll hold asked of the server (it caps at 60 s)
    wait_jitter_s: float = 5.0  # ± spread of the hold, so idle subscribers do not wake together
    limit: int = 1000  # changes per page
    backoff_min_s: float = 0.25  # first pause after a failed poll
    backoff_max_s: float = 30.0  # longest pause between failed polls
    max_busy_delay_s: float = 60.0  # cap on a server-suggested `retry_after_s`
    settle_s: float = 0.5  # longest wait for own requests in flight before applying an echo
    late_window_s: float = 3.0  # how long an applied change guards against late answers
    sweep_every_s: float = 0.2  # how often that guard looks
    late_max_nodes: int = 10_000  # nodes guarded at once


@dataclass
class _Applied:
    op: str
    time_ns: int  # the change's server time; a cached node with an older ctime is outdated
    gone: list[tuple[int, str]]  # names the node no longer has
    expires_s: float


class SyncTask:
    """Keeps one mount's metadata current. Start it in the mount's root nursery with
    `nursery.start(task.run)`; it runs until cancelled and never raises `CloudfsError`.

    Invariants:
      - `fs.metadata_live` is True only while the cursor has caught up with the server and the
        last poll succeeded; the filesystem then answers lookups, listings and attributes
        from LMDB.
      - Every change is applied synchronously (no await between the check and the drops), so a
        filesystem handler never sees half of one change.
      - The cursor is saved after a page is applied: after a crash the feed replays from the
        saved cursor; replaying a change the cache already reflects is a no-op (see `_known`).
    """

    def __init__(self, fs: FileSystem, options: SyncOptions | None = None) -> None:
        self.fs = fs
        self.cache = fs.cache
        self.api = fs.api
        self.options = options or SyncOptions()
        self.cursor: int | None = None
        self.polls = 0
        self.applied = 0  # foreign changes that dropped something
        self.echoes = 0  # changes the cache already reflected (own changes, replays)
        self.rescans = 0
        self.errors = 0
        self.busy = 0  # answers that asked us to back off (server holds too many long-polls)
        self.last_lag_ms: float | None = None  # server commit -> applied here, last change
        self.caught_up = trio.Event()
        self.late_fixed = 0  # stale answers stored after the change that outdated them
        self._recent: dict[int, _Applied] = {}  # foreign changes applied in the last seconds
        self._sweep_wakeup = trio.Event()
        self._delay = self.options.backoff_min_s

    # ---- the loop --------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_task)
            task_status.started()
            await self._feed()

    async def _feed(self) -> None:
        while True:
            try:
                await self._follow()
            except errors.CursorExpiredError as exc:
                await self._rescan(exc)
                continue
            except errors.CloudfsError as exc:
                # unreachable, 5xx after retries, 401 after a token was revoked, bad answers
                self.errors += 1
                self._set_live(False)
                pause = self._delay * (0.5 + random.random())
                log.warning("change feed interrupted (%s); retrying in %.1fs", exc, pause)
                await trio.sleep(pause)
                self._delay = min(self._delay * 2, self.options.backoff_max_s)
                continue

    async def _follow(self) -> None:
        """Catch up from the saved cursor, then long-poll. Returns never; raises on errors."""
        if self.cursor is None:
            saved = self.cache.get_state(CURSOR_KEY)
            if saved is None:
                await self._start_fresh()
            else:
                self.cursor = int(saved)
                log.info("change feed: catching up from cursor %d", self.cursor)
        while True:
            assert self.cursor is not None
            live = self.fs.metadata_live
            wait_s = 0.0
            if live:
                jitter = random.uniform(-1, 1) * self.options.wait_jitter_s
                wait_s = max(1.0, self.options.wait_s + jitter)
            page = await self.api.changes(self.cursor, wait_s=wait_s, limit=self.options.limit)
            self.polls += 1
            changes = page.get("changes") or []
            for change in changes:
                if change.get("device") == self.api.device and self.api.mutations_in_flight:
                    await self._settle()
                self._apply(change)
            new_cursor = int(page.get("cursor", self.cursor))
            if new_cursor != self.cursor:
                self.cursor = new_cursor
                self.cache.set_state(CURSOR_KEY, new_cursor)
            if not page.get("more") and not live:
                self._set_live(True)
                log.info("change feed live at cursor %d", self.cursor)
                self.caught_up.set()
            busy_s = page.get("retry_after_s")
            if busy_s and not page.get("more"):
                # the server is busy: it asks idle subscribers to come back later
                self.busy += 1
                await trio.sleep(min(float(busy_s), self.options.max_busy_delay_s))
            self._delay = self.options.backoff_min_s  # the next failure starts small again

    async def _settle(self) -> None:
        """The feed can deliver this device's change before the answer to the request that made
        it (the server wakes long-polls before it answers). Wait briefly for our requests in
        flight to be answered and learned, so the echo is recognised and not applied."""
        with trio.move_on_after(self.options.settle_s):
            while self.api.mutations_in_flight:  # noqa: ASYNC110 - a counter, polled briefly
                await trio.sleep(0.001)

    async def _start_fresh(self) -> None:
        """First mount of this cache dir: start at the server's latest cursor. Metadata cached
        before (an older client without a feed) cannot be trusted: forget it."""
        page = await self.api.changes("latest")
        self.cursor = int(page["cursor"])
        dropped = self._forget_all()
        self.cache.set_state(CURSOR_KEY, self.cursor)
        log.info(
            "change feed: new cache, starting at cursor %d (%d cached nodes dropped)",
            self.cursor,
            dropped,
        )

    async def _rescan(self, exc: errors.CursorExpiredError) -> None:
        """The server compacted its log past our cursor: changes were lost to us, so nothing
        cached about the namespace can be trusted. Forget it all (blocks stay: they are
        addressed by content) and continue from the latest cursor; directories and attributes
        are fetched again as they are used."""
        self._set_live(False)
        page = await self.api.changes("latest")
        old = self.cursor
        self.cursor = int(page["cursor"])
        dropped = self._forget_all()
        self.cache.set_state(CURSOR_KEY, self.cursor)
        self.rescans += 1
        log.warning(
            "change log was compacted past cursor %s (server keeps %s..%s): rescanning — dropped "
            "%d cached nodes and every cached listing, continuing from cursor %d",
            old,
            exc.details.get("oldest"),
            exc.details.get("latest"),
            dropped,
            self.cursor,
        )

    def _set_live(self, live: bool) -> None:
        if self.fs.metadata_live and not live:
            log.info("change feed not live: metadata is checked with the server again")
        self.fs.metadata_live = live

    def _forget_all(self) -> int:
        fs = self.fs
        dropped = self.cache.drop_metadata()
        fs.sync_generation += 1
        for inode in list(fs.table):
            fs.invalidate(inode.node_id, data=False)  # version checks guard the page cache
            self._kernel_entry(inode.node.parent, inode.node.name)
        return dropped

    # ---- applying one change ---------------------------------------------------------------------
    def _known(self, change: dict[str, Any]) -> bool:
        """Whether the cache already reflects `change` (this mount's own change coming back, or
        a replay after restart): then nothing is dropped and nothing refetched. Decided by
        state, not by device name, so two mounts that share a device name still see each
        other: a cached node object at least as new (version and ctime, both set by the server
        in the change's transaction), whatever its name is now; for a delete, no trace of the
        node. (A node created and removed here before the feed delivers its create is not
        recognised: its create re-adds the name, which the delete right behind it removes.)"""
        node_id = int(change["node"])
        cached = self.cache.get_node(node_id)
        if change["op"] == "delete":
            if cached is not None:
                return False
            parent, name = change.get("parent"), change.get("name")
            if parent is not None and name and self.cache.get_entry(int(parent), name) == node_id:
                return False
            inode = self.fs.table.by_node(node_id)
            return inode is None or inode.unlinked
        if cached is None:
            return False
        # A newer cached state (a later rename, say) also covers this change: the later changes
        # arrive after it and are checked themselves.
        return int(cached.get("version", 0)) >= int(change.get("version") or 0) and int(
            cached.get("ctime_ns", 0)
        ) >= int(change.get("time_ns") or 0)

    def _apply(self, change: dict[str, Any]) -> None:
        if self._known(change):
            self.echoes += 1
            return
        self.applied += 1
        fs, cache = self.fs, self.cache
        op = change["op"]
        node_id = int(change["node"])
        parent = None if change.get("parent") is None else int(change["parent"])
        name = change.get("name")
        fs.sync_generation += 1
        if op in ("modify", "setattr"):
            fs.invalidate(node_id, data=(op == "modify"))
        elif op in ("create", "restore"):
            fs.invalidate(node_id, data=True)
            self._add_entry(parent, name, node_id)
        elif op == "move":
            old_parent = change.get("old_parent")
            old_name = change.get("old_name")
            fs.invalidate(node_id, data=False)
            if old_parent is not None and old_name is not None:
                self._drop_entry(int(old_parent), old_name, node_id)
            self._add_entry(parent, name, node_id)
        elif op == "delete":
            fs.invalidate(node_id, data=True)
            if parent is not None and name is not None:
                self._drop_entry(parent, name, node_id)
            if change.get("type") == "dir":
                cache.drop_listed(node_id)
        else:
            log.warning("change %s has unknown op %r; dropping what it names", change["seq"], op)
            fs.invalidate(node_id, data=True)
            if parent is not None:
                cache.drop_listed(parent)
        time_ns = change.get("time_ns")
        if time_ns:
            self.last_lag_ms = max(0.0, (time.time_ns() - int(time_ns)) / 1e6)
            self._remember(change, node_id, op, parent, name)

    # ---- answers that arrive after the change that outdated them -------------------------------
    def _remember(
        self, change: dict[str, Any], node_id: int, op: str, parent: int | None, name: str | None
    ) -> None:
        """A lookup, getattr or listing the server answered just before this change but that is
        stored just after it would put the old state back into LMDB (and the inode). Remember
        the change for a few seconds so `_sweep` can drop such a late copy."""
        applied = self._recent.get(node_id)
        if applied is None:
            if len(self._recent) >= self.options.late_max_nodes:
                return  # a burst (an untar elsewhere): guard the first ones, keep sweeps cheap
            applied = self._recent[node_id] = _Applied(op, 0, [], 0.0)
        applied.op = op
        applied.time_ns = max(applied.time_ns, int(change["time_ns"]))
        applied.expires_s = trio.current_time() + self.options.late_window_s
        if op == "delete" and parent is not None and name is not None:
            applied.gone.append((parent, name))
        elif op == "move" and change.get("old_parent") is not None and change.get("old_name"):
            applied.gone.append((int(change["old_parent"]), change["old_name"]))
        elif op in ("create", "restore"):
            applied.gone.clear()
        self._sweep_wakeup.set()

    async def _sweep_task(self) -> None:
        while True:
            await self._sweep_wakeup.wait()
            while self._recent:
                await trio.sleep(self.options.sweep_every_s)
                self._sweep()
            self._sweep_wakeup = trio.Event()

    def _sweep(self) -> None:
        now = trio.current_time()
        for node_id, applied in list(self._recent.items()):
            cached = self.cache.get_node(node_id)
            if cached is not None and int(cached.get("ctime_ns", 0)) < applied.time_ns:
                self.late_fixed += 1
                log.info("dropping a late, outdated copy of node %d (%s)", node_id, applied.op)
                self.fs.sync_generation += 1
                self.fs.invalidate(node_id, data=applied.op == "modify")
                for parent, name in applied.gone:
                    self._drop_entry(parent, name, node_id)
            if now >= applied.expires_s:
                del self._recent[node_id]

    def _add_entry(self, parent: int | None, name: str | None, node_id: int) -> None:
        """A name appeared: a listed directory records it (the node is fetched when used);
        any kernel dentry under that name is stale."""
        if parent is None or name is None:
            return
        if self.cache.is_listed(parent):
            self.cache.put_entry(parent, name, node_id)
        else:
            self.cache.drop_entry(parent, name)
        self._kernel_entry(parent, name)

    def _drop_entry(self, parent: int, name: str, node_id: int) -> None:
        """A name went away (only if it still names `node_id`: a later change may reuse it)."""
        if self.cache.get_entry(parent, name) == node_id:
            self.cache.drop_entry(parent, name)
        self._kernel_entry(parent, name)

    def _kernel_entry(self, parent: int | None, name: str | None) -> None:
        if parent is None or not name:
            return
        parent_inode = self.fs.table.by_node(parent)
        if parent_inode is not None:
            self.fs.notifier.invalidate_entry(parent_inode.ino, name.encode())

    # ---- introspection ---------------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        return {
            "live": self.fs.metadata_live,
            "cursor": self.cursor,
            "polls": self.polls,
            "applied": self.applied,
            "echoes": self.echoes,
            "rescans": self.rescans,
            "errors": self.errors,
            "busy": self.busy,
            "late_fixed": self.late_fixed,
            "last_lag_ms": self.last_lag_ms,
        }


__all__ = ["CURSOR_KEY", "SyncOptions", "SyncTask"]
