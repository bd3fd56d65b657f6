"""`cloudfs.sync.SyncTask` with the real `FileSystem` core, real LMDB and a real server process,
without FUSE: which caches each change drops (the kernel calls are recorded by a notifier that
stands in for pyfuse3), own changes coming back, the persisted cursor, the rescan after the log
was compacted, and the server's back-off hint."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from cloudfs import errors
from cloudfs.api import ApiClient
from cloudfs.cache import LocalCache
from cloudfs.filesystem import FileSystem, Options
from cloudfs.inodes import ROOT_INODE
from cloudfs.sync import CURSOR_KEY, SyncOptions, SyncTask
from tests.support import ServerProcess, User, server_cmd

pytestmark = pytest.mark.trio


class RecordingNotifier:
    """Records the kernel invalidations the core asks for (pyfuse3 needs a mounted kernel)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def invalidate_inode(self, ino: int, attr_only: bool = False) -> None:
        self.calls.append(("inode", ino, attr_only))

    def invalidate_entry(self, parent_ino: int, name: bytes) -> None:
        self.calls.append(("entry", parent_ino, name))


class Device:
    def __init__(self, fs: FileSystem, task: SyncTask, notifier: RecordingNotifier) -> None:
        self.fs, self.task, self.notifier = fs, task, notifier

    async def settled(self, latest: int) -> None:
        """Wait until the feed applied everything up to `latest`."""
        with trio.fail_after(5):
            while self.task.cursor != latest or not self.fs.metadata_live:  # noqa: ASYNC110
                await trio.sleep(0.005)


async def latest_seq(api: ApiClient) -> int:
    return int((await api.changes("latest"))["cursor"])


@asynccontextmanager
async def device(
    server: ServerProcess, user: User, cache_dir: Path, name: str, **sync: Any
) -> AsyncIterator[Device]:
    api = ApiClient(server.url, user.token, name)
    cache = LocalCache(cache_dir, 64 << 20)
    notifier = RecordingNotifier()
    me = await api.me()
    try:
        async with trio.open_nursery() as nursery:
            fs = FileSystem(
                api,
                cache,
                int(me["root"]),
                cache_dir / "staging",
                Options(device=name),
                nursery=nursery,
                notifier=notifier,
            )
            await fs.start()
            task = SyncTask(fs, SyncOptions(**sync))
            await nursery.start(task.run)
            try:
                yield Device(fs, task, notifier)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        cache.close()
        await api.aclose()


async def write(fs: FileSystem, parent_ino: int, name: bytes, data: bytes) -> int:
    fh, attr = await fs.create(parent_ino, name, 0o644, os.O_WRONLY)
    await fs.write(fh, 0, data)
    await fs.flush(fh)
    await fs.release(fh)
    return attr.ino


async def listing(fs: FileSystem, ino: int) -> list[str]:
    fh = await fs.opendir(ino)
    names: list[str] = []

    def reply(name: bytes, attr: Any, next_id: int) -> bool:
        names.append(name.decode())
        return True

    await fs.readdir(fh, 0, reply)
    await fs.releasedir(fh)
    return names


async def test_own_changes_drop_nothing(server: ServerProcess, alice: User, tmp_path: Path) -> None:
    async with device(server, alice, tmp_path / "a", "laptop") as a:
        fs = a.fs
        await a.settled(await latest_seq(fs.api))
        a.notifier.calls.clear()  # (a new cache starts by forgetting what it held)
        latest = fs.api.changes

        async def step(coro: Any) -> Any:  # one user action, then its echo arrives
            result = await coro
            await a.settled(int((await latest("latest"))["cursor"]))
            return result

        d = await step(fs.mkdir(ROOT_INODE, b"dir", 0o755))
        assert await listing(fs, d.ino) == []
        ino = await step(write(fs, d.ino, b"f.txt", b"hello"))
        await step(fs.setattr(ino, mode=0o600))
        await step(fs.rename(d.ino, b"f.txt", d.ino, b"g.txt"))
        await step(write(fs, d.ino, b"h.txt", b"x"))
        await step(fs.unlink(d.ino, b"h.txt"))
        assert a.task.applied == 0, a.task.statistics()
        assert a.task.echoes == 8  # mkdir, 2x(create+modify), setattr, move, delete
        assert a.notifier.calls == []
        requests = fs.api.requests
        assert await listing(fs, d.ino) == ["g.txt"]
        assert (await fs.lookup(d.ino, b"g.txt")).mode & 0o777 == 0o600
        with pytest.raises(errors.NodeNotFoundError):
            await fs.lookup(d.ino, b"h.txt")
        assert fs.api.requests == requests, "the listing and lookups asked the server"


async def test_foreign_changes_drop_exactly_what_changed(
    server: ServerProcess, alice: User, tmp_path: Path
) -> None:
    other = ApiClient(server.url, alice.token, "phone")
    try:
        root = int((await other.me())["root"])
        docs = await other.create(root, "docs", "dir")
        keep = await other.create(docs.node_id, "keep.txt", "file")
        edit = await other.create(docs.node_id, "edit.txt", "file")
        async with device(server, alice, tmp_path / "b", "desktop") as b:
            fs, calls = b.fs, b.notifier.calls
            await b.settled(await latest_seq(other))
            docs_ino = (await fs.lookup(ROOT_INODE, b"docs")).ino
            assert await listing(fs, docs_ino) == ["edit.txt", "keep.txt"]
            edit_ino = (await fs.lookup(docs_ino, b"edit.txt")).ino
            keep_ino = (await fs.lookup(docs_ino, b"keep.txt")).ino
            calls.clear()

            # modify of a file nobody has open: node dropped, full kernel invalidation
            await other.commit(edit.node_id, 1, 0, [])
            await b.settled(await latest_seq(other))
            assert calls == [("inode", edit_ino, False)]
            assert fs.cache.get_node(edit.node_id) is None
            assert fs.cache.get_node(keep.node_id) is not None, "an unchanged node was dropped"
            assert (await fs.getattr(edit_ino)).version == 2

            # modify of a file open here: attributes only (pages stay while reads may run)
            fh, _ = await fs.open(edit_ino, os.O_RDONLY)
            calls.clear()
            await other.commit(edit.node_id, 2, 0, [])
            await b.settled(await latest_seq(other))
            assert calls == [("inode", edit_ino, True)]
            await fs.release(fh)

            # chmod: attributes only
            calls.clear()
            await other.patch(keep.node_id, mode=0o640)
            await b.settled(await latest_seq(other))
            assert calls == [("inode", keep_ino, True)]
            assert (await fs.getattr(keep_ino)).mode & 0o7777 == 0o640

            # create in a listed directory: the name is known without a server listing
            calls.clear()
            await other.create(docs.node_id, "new.txt", "file")
            await b.settled(await latest_seq(other))
            assert calls == [("entry", docs_ino, b"new.txt")]
            assert await listing(fs, docs_ino) == ["edit.txt", "keep.txt", "new.txt"]

            # move: both names invalidated; delete: the entry, and ENOENT without a request
            calls.clear()
            await other.move(keep.node_id, docs.node_id, "kept.txt", replace=False)
            await other.delete(edit.node_id)
            await b.settled(await latest_seq(other))
            assert ("entry", docs_ino, b"keep.txt") in calls
            assert ("entry", docs_ino, b"kept.txt") in calls
            assert ("entry", docs_ino, b"edit.txt") in calls
            assert await listing(fs, docs_ino) == ["kept.txt", "new.txt"]
            requests = fs.api.requests
            for gone in (b"edit.txt", b"keep.txt"):
                with pytest.raises(errors.NodeNotFoundError):
                    await fs.lookup(docs_ino, gone)
            assert fs.api.requests == requests
            assert b.task.echoes == 0 and b.task.applied == 6
    finally:
        await other.aclose()


async def test_answer_stored_after_the_change_that_outdated_it_is_dropped(
    server: ServerProcess, alice: User, tmp_path: Path
) -> None:
    """A lookup the server answered just before another device deleted (or changed) the node,
    but that the mount stores just after the feed applied the change, must not stay in LMDB.
    The late answer is replayed here by learning the node object fetched before the change
    (what the lookup handler does with the answer it awaited)."""
    other = ApiClient(server.url, alice.token, "phone")
    try:
        root = int((await other.me())["root"])
        doomed = await other.create(root, "doomed.txt", "file")
        changed = await other.create(root, "changed.txt", "file")
        async with device(server, alice, tmp_path / "e", "slowpoke") as e:
            fs = e.fs
            await e.settled(await latest_seq(other))
            assert await listing(fs, ROOT_INODE) == ["changed.txt", "doomed.txt"]
            before_delete = await fs.api.get_node(doomed.node_id)  # answered ...
            before_chmod = await fs.api.get_node(changed.node_id)
            await other.delete(doomed.node_id)  # ... then the other device acts ...
            await other.patch(changed.node_id, mode=0o600)
            await e.settled(await latest_seq(other))
            fs._learn(before_delete)  # ... and the old answers are stored after the feed
            fs._learn(before_chmod)
            with trio.fail_after(2):
                while fs.cache.get_node(doomed.node_id) is not None:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert fs.cache.get_entry(fs.table.root_id, "doomed.txt") is None
            assert await listing(fs, ROOT_INODE) == ["changed.txt"]
            with pytest.raises(errors.NodeNotFoundError):
                await fs.lookup(ROOT_INODE, b"doomed.txt")
            ino = (await fs.lookup(ROOT_INODE, b"changed.txt")).ino
            assert (await fs.getattr(ino)).mode & 0o7777 == 0o600
            assert e.task.late_fixed == 2
    finally:
        await other.aclose()


async def test_cursor_persists_and_compaction_forces_rescan(
    server: ServerProcess, alice: User, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloudfs.sync")
    other = ApiClient(server.url, alice.token, "phone")
    cache_dir = tmp_path / "c"
    try:
        root = int((await other.me())["root"])
        f = await other.create(root, "f.txt", "file")
        async with device(server, alice, cache_dir, "tablet") as t:
            await t.settled(await latest_seq(other))
            assert await listing(t.fs, ROOT_INODE) == ["f.txt"]
            saved = t.task.cursor
        # offline: changes happen; the restarted task catches up from the saved cursor
        await other.create(root, "while-away.txt", "file")
        await other.delete(f.node_id)
        async with device(server, alice, cache_dir, "tablet") as t:
            await t.settled(await latest_seq(other))
            assert f"catching up from cursor {saved}" in caplog.text
            assert t.task.rescans == 0 and t.task.applied == 2
            assert await listing(t.fs, ROOT_INODE) == ["while-away.txt"]
            saved = t.task.cursor
        # offline again, and the server compacts its log past the saved cursor
        await other.create(root, "after-compaction.txt", "file")
        out = await trio.run_process(
            server_cmd("compact-log", "--data", str(server.data_dir), "--keep", "0"),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        async with device(server, alice, cache_dir, "tablet") as t:
            await t.settled(await latest_seq(other))
            assert t.task.rescans == 1
            assert f"compacted past cursor {saved}" in caplog.text
            assert t.fs.cache.get_state(CURSOR_KEY) == await latest_seq(other)
            assert await listing(t.fs, ROOT_INODE) == ["after-compaction.txt", "while-away.txt"]
    finally:
        await other.aclose()


async def test_unreachable_server_leaves_live_mode_and_recovers(
    server: ServerProcess, alice: User, tmp_path: Path
) -> None:
    async with device(
        server, alice, tmp_path / "d", "roamer", backoff_min_s=0.05, backoff_max_s=0.2
    ) as r:
        await r.settled(await latest_seq(r.fs.api))
        r.fs.api.retry_budget_s = 0.2
        server.kill9()  # the server dies under the held long-poll
        with trio.fail_after(10):
            while r.fs.metadata_live:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert r.task.errors >= 1
        _restart_on_port(server, server.url.rsplit(":", 1)[1])
        other = ApiClient(server.url, alice.token, "phone")
        try:
            root = int((await other.me())["root"])
            await other.create(root, "back.txt", "file")
            await r.settled(await latest_seq(other))
            assert await listing(r.fs, ROOT_INODE) == ["back.txt"]
        finally:
            await other.aclose()


def _restart_on_port(server: ServerProcess, port: str) -> None:
    """Start the same server data dir again on the same port (the mount keeps its URL)."""
    proc = subprocess.Popen(
        server_cmd("serve", "--data", str(server.data_dir), "--host", "127.0.0.1", "--port", port),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            break
    server.proc = proc  # stopped by the fixture, by this PID
    threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()


async def test_busy_server_suggests_back_off(tmp_path: Path) -> None:
    """A server that holds its limit of long-polls answers further ones at once with
    `retry_after_s`; the subscriber waits (capped by its options) and still gets every change."""
    busy = ServerProcess(tmp_path / "busy-data", "--max-long-polls", "1").start()
    try:
        carol = busy.add_user("carol")
        other = ApiClient(busy.url, carol.token, "phone")
        try:
            async with (
                device(busy, carol, tmp_path / "first", "first") as first,
                device(busy, carol, tmp_path / "second", "second", max_busy_delay_s=0.1) as second,
            ):
                await first.settled(await latest_seq(other))
                await second.settled(await latest_seq(other))
                answer = await other.changes(await latest_seq(other), wait_s=5)
                assert answer["changes"] == [] and 5.0 <= answer["retry_after_s"] <= 10.0
                root = int((await other.me())["root"])
                await other.create(root, "seen-by-both.txt", "file")
                await first.settled(await latest_seq(other))
                await second.settled(await latest_seq(other))
                for d in (first, second):
                    assert await listing(d.fs, ROOT_INODE) == ["seen-by-both.txt"]
                assert second.task.busy + first.task.busy >= 1, second.task.statistics()
        finally:
            await other.aclose()
    finally:
        busy.stop()


async def test_two_mounts_with_one_device_name_see_each_other(
    server: ServerProcess, alice: User, tmp_path: Path
) -> None:
    """Echoes are recognised by state, not by device name: two mounts that both call themselves
    "laptop" (the default is the hostname) still apply each other's changes."""
    async with (
        device(server, alice, tmp_path / "x", "laptop") as x,
        device(server, alice, tmp_path / "y", "laptop") as y,
    ):
        await x.settled(await latest_seq(x.fs.api))
        await y.settled(await latest_seq(y.fs.api))
        assert await listing(y.fs, ROOT_INODE) == []
        ino = await write(x.fs, ROOT_INODE, b"twin.txt", b"from x")
        await x.fs.setattr(ino, mode=0o640)
        await y.settled(await latest_seq(y.fs.api))
        assert await listing(y.fs, ROOT_INODE) == ["twin.txt"]
        attr = await y.fs.lookup(ROOT_INODE, b"twin.txt")
        assert (attr.size, attr.mode & 0o7777) == (6, 0o640)
        assert y.task.applied == 3 and x.task.applied == 0, (
            x.task.statistics(),
            y.task.statistics(),
        )
