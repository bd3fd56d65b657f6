"""A Hypothesis state machine drives the filesystem core (layer 3, no FUSE) against a real server
process with tiny chunks, and checks it against an in-memory model of the file's contents:
write, truncate, read, close (commit), fsync, restart of the client, eviction of the cache, and
"another device commits" (which must end as a conflicted copy when we had local edits).
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cloudfs.api import ApiClient
from cloudfs.cache import LocalCache
from cloudfs.chunking import Chunker, ChunkParams
from cloudfs.filesystem import FileSystem, Options
from cloudfs.inodes import ROOT_INODE
from tests.support import ServerProcess, User

TINY = ChunkParams.tiny()
MAX_SIZE = 12_000
_names = itertools.count()


class TrioThread:
    """One trio run in a background thread, so synchronous Hypothesis rules can await."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, afn: Any, *args: Any) -> Any:
        return trio.from_thread.run(afn, *args, trio_token=self.token)

    def stop(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(10)


class Client:
    """The core of one mount: API client, LMDB cache, FileSystem (started on the trio thread)."""

    def __init__(
        self, loop: TrioThread, server: ServerProcess, user: User, cache_dir: Path, root_id: int
    ) -> None:
        self.loop = loop
        self.api = ApiClient(server.url, user.token, "model-dev", retry_budget_s=2.0)
        self.cache = LocalCache(cache_dir / "lmdb", 64 << 20)
        self.fs = FileSystem(
            self.api,
            self.cache,
            root_id,
            cache_dir / "staging",
            Options(device="model-dev", chunk_params=TINY, commit_budget_s=5),
            nursery=loop.nursery,
        )
        loop.run(self.fs.start)

    def close(self) -> None:
        async def shutdown() -> None:
            await self.fs.drain(budget_s=10)
            await self.api.aclose()

        self.loop.run(shutdown)
        self.cache.close()


class FileModel(RuleBasedStateMachine):
    server: ServerProcess
    user: User
    base: Path
    root_id: int

    def __init__(self) -> None:
        super().__init__()
        self.loop = TrioThread()
        n = next(_names)
        self.name = f"f{n}.bin"
        self.cache_dir = self.base / f"cache{n}"
        self.client = Client(self.loop, self.server, self.user, self.cache_dir, self.root_id)
        self.other = ApiClient(self.server.url, self.user.token, "other-dev")
        self.model = bytearray()  # what reads on this mount must return
        self.server_content = b""  # what the server's current version holds
        self.dirty = False
        self.conflicts: list[bytes] = []  # contents expected in conflicted copies
        fs = self.client.fs
        self.fh, attr = self.loop.run(fs.create, ROOT_INODE, self.name.encode(), 0o644, os.O_RDWR)
        self.ino = attr.ino
        self.loop.run(fs.lookup, ROOT_INODE, self.name.encode())  # the kernel would hold it

    # ---- helpers ---------------------------------------------------------------------------
    def _server_file(self) -> tuple[Any, bytes]:
        async def fetch() -> tuple[Any, bytes]:
            node = await self.other.lookup(self.root_id, self.name)
            full = await self.other.get_node(node.node_id, blocks=True)
            parts = [await self.other.get_block(b) for b, _ in full.blocks or ()]
            return full, b"".join(parts)

        return self.loop.run(fetch)

    def _reopen(self) -> None:
        """A fresh open after every handle closed sees the server's current content."""
        fs = self.client.fs
        self.fh, _ = self.loop.run(fs.open, self.ino, os.O_RDWR)
        assert not self.dirty
        self.model = bytearray(self.server_content)
        self.stale = False

    def _close(self) -> None:
        fs = self.client.fs
        self.loop.run(fs.flush, self.fh)
        self.loop.run(fs.release, self.fh)
        self._after_commit()

    def _after_commit(self) -> None:
        """Expected effect of a commit: ours wins, or (if another device committed since our
        base) our content goes to a conflicted copy and the file shows theirs."""
        if not self.dirty:
            return
        if self.stale:
            self.conflicts.append(bytes(self.model))
            self.model = bytearray(self.server_content)
        else:
            self.server_content = bytes(self.model)
        self.dirty = False
        self.stale = False

    stale = False  # another device committed after the version our open file is based on

    # ---- rules -----------------------------------------------------------------------------
    @rule(offset=st.integers(0, MAX_SIZE), data=st.binary(min_size=1, max_size=3000))
    def write(self, offset: int, data: bytes) -> None:
        offset = min(offset, len(self.model) + 500)
        self.loop.run(self.client.fs.write, self.fh, offset, data)
        if offset > len(self.model):
            self.model.extend(bytes(offset - len(self.model)))
        self.model[offset : offset + len(data)] = data
        self.dirty = True

    @rule(size=st.integers(0, MAX_SIZE))
    def truncate(self, size: int) -> None:
        self.loop.run(lambda: self.client.fs.setattr(self.ino, size=size, fh=self.fh))
        if size != len(self.model):
            self.dirty = True
        del self.model[size:]
        self.model.extend(bytes(size - len(self.model)))

    @rule(offset=st.integers(0, MAX_SIZE), length=st.integers(0, 5000))
    def read(self, offset: int, length: int) -> None:
        got = self.loop.run(self.client.fs.read, self.fh, offset, length)
        assert got == bytes(self.model[offset : offset + length]), f"read({offset}, {length})"

    @rule()
    def close_and_reopen(self) -> None:
        self._close()
        self._reopen()
        _node, content = self._server_file()
        assert content == self.server_content, "server content after commit"

    @rule()
    def fsync(self) -> None:
        self.loop.run(self.client.fs.fsync, self.fh)
        self._after_commit()

    @rule()
    def restart(self) -> None:
        self._close()
        self.client.close()
        self.client = Client(self.loop, self.server, self.user, self.cache_dir, self.root_id)
        fs = self.client.fs
        self.loop.run(fs.lookup, ROOT_INODE, self.name.encode())
        self._reopen()

    @rule()
    def evict_all(self) -> None:
        self.client.cache.evict_all_clean()

    @rule(data=st.binary(max_size=4000))
    def another_device_commits(self, data: bytes) -> None:
        async def commit() -> None:
            node = await self.other.lookup(self.root_id, self.name)
            chunks, _ = Chunker(TINY).cut_and_hash(data, True)
            for b, o, n in chunks:
                await self.other.put_block(b, data[o : o + n])
            await self.other.commit(
                node.node_id, node.version, len(data), [(b, n) for b, _, n in chunks]
            )

        self.loop.run(commit)
        self.server_content = data
        self.stale = True

    @invariant()
    def size_matches(self) -> None:
        attr = self.loop.run(self.client.fs.getattr, self.ino)
        assert attr.size == len(self.model)

    def teardown(self) -> None:
        try:
            self._close()
            _node, content = self._server_file()
            assert content == self.server_content
            copies = self._conflict_copies()
            assert sorted(copies) == sorted(self.conflicts), "conflicted copies hold our edits"
            assert self.client.cache.verify() == []
            # every dirty block is referenced by something pending (nothing is pending now)
            assert self.client.cache.queued() == []
            assert self.client.cache.dirty_block_ids() == [], "unreferenced dirty blocks"
            self.client.close()
            self.loop.run(self.other.aclose)
        finally:
            self.loop.stop()

    def _conflict_copies(self) -> list[bytes]:
        stem = self.name.rsplit(".", 1)[0]

        async def list_copies() -> list[bytes]:
            out = []
            after = None
            while True:
                page, after = await self.other.children(self.root_id, after=after)
                for node in page:
                    if node.name.startswith(f"{stem} (conflicted copy from model-dev "):
                        full = await self.other.get_node(node.node_id, blocks=True)
                        out.append(
                            b"".join([await self.other.get_block(b) for b, _ in full.blocks or ()])
                        )
                if after is None:
                    return out

        return self.loop.run(list_copies)


@pytest.mark.slow
def test_file_core_matches_model(server: ServerProcess, alice: User, tmp_path: Path) -> None:
    status, me = server.request("GET", "/v1/me", alice)
    assert status == 200
    FileModel.server, FileModel.user, FileModel.base = server, alice, tmp_path
    FileModel.root_id = int(me["root"])  # type: ignore[index]
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        FileModel, settings=settings(max_examples=20, stateful_step_count=20, deadline=None)
    )
