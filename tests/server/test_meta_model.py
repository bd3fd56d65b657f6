"""Hypothesis state machine: each metadata engine (SQLite, PostgreSQL) against an in-memory oracle.

Random mkdir/create/commit/move/delete/trash-restore/version-restore with tiny blocks (create,
commit, move and delete each either through its own method or as a one-op batch); after every
step the listings, histories, usage, each directory's `subdirs` and mtime (the time of the last
change of an entry in it) must match the oracle, and the store's own consistency check (refcounts,
counters, availability, tree, subdirs) must find nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from cloudfs_server import errors
from cloudfs_server.engines import sqlite as meta_sqlite
from cloudfs_server.engines.meta import MetadataStore
from cloudfs_server.engines.postgres import PostgresMetadataStore
from cloudfs_server.engines.sqlite import SqliteMetadataStore
from cloudfs_server.model import BatchOp, CommitOp, CreateOp, DeleteOp, MoveOp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.pg import PgCluster
from tests.server.helpers import bid

NAMES = st.sampled_from(["a", "b", "c"])
CONTENTS = st.sampled_from([b"", b"x", b"xy", b"xyz", b"hello", b"xyxy"])


def split(content: bytes) -> list[tuple[str, int]]:
    parts = [content[i : i + 2] for i in range(0, len(content), 2)]
    return [(bid(p), len(p)) for p in parts]


@dataclass
class ONode:
    kind: str
    parent: int | None
    name: str
    history: list[tuple[int, bytes]] = field(default_factory=list)  # files: (version, content)
    trashed: bool = False
    original_parent: int | None = None
    mtime_ns: int | None = None  # dirs: expected mtime (None: not known, the root at first)

    @property
    def version(self) -> int:
        return self.history[-1][0] if self.history else 1

    @property
    def content(self) -> bytes:
        return self.history[-1][1] if self.history else b""


class MetaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = TemporaryDirectory()
        # Tiny purge batches, so purging exercises the batch loops.
        self.saved_batch, meta_sqlite.PURGE_BATCH = meta_sqlite.PURGE_BATCH, 3
        self.loop = asyncio.new_event_loop()
        self.store = self.make_store()
        self.run(self.store.open())
        user, _ = self.run(self.store.create_user("u", None))
        self.uid, self.root = user.user_id, user.root
        self.nodes: dict[int, ONode] = {self.root: ONode("dir", None, "")}
        self.seq = self.run(self.store.changes(self.uid, None, 1)).cursor
        for content in [b"x", b"xy", b"z", b"hello", b"lo", b"he", b"ll", b"yz"]:
            for block_id, size in split(content):
                self.run(self.store.record_upload(self.uid, block_id, size))

    def make_store(self) -> MetadataStore:
        return SqliteMetadataStore(Path(self.tmp.name) / "m.sqlite3", synchronous="OFF")

    def teardown(self) -> None:
        meta_sqlite.PURGE_BATCH = self.saved_batch
        self.run(self.store.close())
        self.loop.close()
        self.tmp.cleanup()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def attempt(self, coro: Any) -> tuple[type[Exception] | None, Any]:
        try:
            return None, self.run(coro)
        except errors.ServerError as exc:
            return type(exc), None

    def attempt_op(self, op: BatchOp, via_batch: bool) -> tuple[type[Exception] | None, Any]:
        """`op` through its single method, or as a one-op `apply_batch`; the same answer shape
        either way, so one oracle checks that the two paths agree."""
        if not via_batch:
            if isinstance(op, CreateOp):
                assert isinstance(op.parent, int)
                return self.attempt(
                    self.store.create_node(
                        self.uid,
                        op.parent,
                        op.name,
                        op.kind,
                        None,
                        None,
                        None,
                        op.size,
                        op.blocks,
                        "d",
                    )
                )
            if isinstance(op, CommitOp):
                assert isinstance(op.node, int)
                return self.attempt(
                    self.store.commit(
                        self.uid, op.node, op.base_version, op.size, op.blocks, None, "d"
                    )
                )
            if isinstance(op, MoveOp):
                assert isinstance(op.node, int) and isinstance(op.parent, int)
                return self.attempt(
                    self.store.move(self.uid, op.node, op.parent, op.name, op.replace, "d")
                )
            assert isinstance(op, DeleteOp) and isinstance(op.node, int)
            return self.attempt(self.store.delete(self.uid, op.node, "d"))
        (result,) = self.run(self.store.apply_batch(self.uid, [op], "d"))
        if result.error is not None:
            return type(result.error), None
        if isinstance(op, MoveOp):
            return None, (result.node, result.replaced)
        if isinstance(op, DeleteOp):
            return None, result.trashed
        return None, result.node

    # ---- oracle helpers ------------------------------------------------------------------
    def changed(self, *dir_ids: int | None, one_op: bool = True) -> int:
        """The time of the change(s) the last op logged; those directories now have it as
        mtime. Every change row of one op carries the same time."""
        page = self.run(self.store.changes(self.uid, self.seq, 10_000))
        assert page.changes, "the op logged no change"
        times = {c.time_ns for c in page.changes if c.seq > self.seq}
        self.seq = page.cursor
        last = page.changes[-1].time_ns
        for dir_id in dir_ids:
            if dir_id is not None:
                self.nodes[dir_id].mtime_ns = last
        assert len(times) == 1 or not dir_ids or not one_op, times
        return last

    def live(self, kind: str | None = None) -> list[int]:
        return sorted(
            i for i, n in self.nodes.items() if not n.trashed and (kind is None or n.kind == kind)
        )

    def child(self, parent: int, name: str) -> int | None:
        for i, n in self.nodes.items():
            if not n.trashed and n.parent == parent and n.name == name:
                return i
        return None

    def has_children(self, node_id: int) -> bool:
        return any(not n.trashed and n.parent == node_id for n in self.nodes.values())

    def ancestors(self, node_id: int | None) -> list[int]:
        out = []
        while node_id is not None:
            out.append(node_id)
            node_id = self.nodes[node_id].parent
        return out

    # ---- rules ---------------------------------------------------------------------------
    @rule(
        data=st.data(),
        name=NAMES,
        kind=st.sampled_from(["dir", "file"]),
        content=CONTENTS,
        via_batch=st.booleans(),
    )
    def create(
        self, data: st.DataObject, name: str, kind: str, content: bytes, via_batch: bool
    ) -> None:
        parent = data.draw(st.sampled_from(self.live()))
        if kind == "dir":
            content = b""
        blocks = split(content)
        exc, node = self.attempt_op(
            CreateOp(parent, name, kind, size=len(content), blocks=blocks), via_batch
        )
        if self.nodes[parent].kind != "dir":
            assert exc is errors.NotDirError
        elif self.child(parent, name) is not None:
            assert exc is errors.ExistsError
        elif set(b for b, _ in blocks) - self.uploaded():
            assert exc is errors.MissingBlocksError
        else:
            assert exc is None
            self.nodes[node.node_id] = ONode(
                kind, parent, name, [(1, content)] if kind == "file" else []
            )
            now = self.changed(parent)
            if kind == "dir":
                self.nodes[node.node_id].mtime_ns = now

    def uploaded(self) -> set[str]:
        return {
            b
            for c in [b"x", b"xy", b"z", b"hello", b"lo", b"he", b"ll", b"yz"]
            for b, _ in split(c)
        }

    @rule(data=st.data(), content=CONTENTS, stale=st.booleans(), via_batch=st.booleans())
    def commit(self, data: st.DataObject, content: bytes, stale: bool, via_batch: bool) -> None:
        files = self.live("file")
        if not files:
            return
        node_id = data.draw(st.sampled_from(files))
        node = self.nodes[node_id]
        base = node.version - 1 if stale else node.version
        blocks = split(content)
        exc, result = self.attempt_op(CommitOp(node_id, base, len(content), blocks), via_batch)
        if set(b for b, _ in blocks) - self.uploaded():
            assert exc is errors.MissingBlocksError
        elif stale:
            assert exc is errors.VersionConflictError
        else:
            assert exc is None and result.version == node.version + 1
            node.history.append((node.version + 1, content))
            self.changed()

    @rule(data=st.data(), name=NAMES, replace=st.booleans(), via_batch=st.booleans())
    def move(self, data: st.DataObject, name: str, replace: bool, via_batch: bool) -> None:
        node_id = data.draw(st.sampled_from(self.live()))
        parent = data.draw(st.sampled_from(self.live()))
        exc, result = self.attempt_op(MoveOp(node_id, parent, name, replace), via_batch)
        node = self.nodes[node_id]
        expected: type[Exception] | None = None
        target = self.child(parent, name)
        if node.parent is None:
            expected = errors.InvalidMoveError
        elif self.nodes[parent].kind != "dir":
            expected = errors.NotDirError
        elif node.kind == "dir" and node_id in self.ancestors(parent):
            expected = errors.InvalidMoveError
        elif target == node_id:
            assert exc is None and result[1] is None
            return
        elif target is not None:
            t = self.nodes[target]
            if not replace:
                expected = errors.ExistsError
            elif t.kind == "dir":
                if node.kind != "dir":
                    expected = errors.IsDirError
                elif self.has_children(target):
                    expected = errors.NotEmptyError
            elif node.kind == "dir":
                expected = errors.NotDirError
        assert exc is expected, (exc, expected)
        if exc is not None:
            return
        assert result[1] == target
        if target is not None:
            t = self.nodes[target]
            if t.kind == "dir":
                del self.nodes[target]
            elif node.kind == "file" and t.kind == "file":
                node.history = [*t.history, (t.version + 1, node.content)]
                del self.nodes[target]
            else:
                t.trashed, t.original_parent, t.parent = True, t.parent, None
        self.changed(node.parent, parent)
        node.parent, node.name = parent, name

    @rule(data=st.data(), via_batch=st.booleans())
    def delete(self, data: st.DataObject, via_batch: bool) -> None:
        node_id = data.draw(st.sampled_from(self.live()))
        node = self.nodes[node_id]
        exc, trashed = self.attempt_op(DeleteOp(node_id), via_batch)
        if node.parent is None:
            assert exc is errors.InvalidMoveError
        elif node.kind == "dir" and self.has_children(node_id):
            assert exc is errors.NotEmptyError
        elif node.kind == "dir":
            assert exc is None and trashed is False
            self.changed(node.parent)
            del self.nodes[node_id]
        else:
            assert exc is None and trashed is True
            self.changed(node.parent)
            node.trashed, node.original_parent, node.parent = True, node.parent, None

    @rule(data=st.data(), names=st.lists(NAMES, min_size=2, max_size=4))
    def batch_of_mkdirs(self, data: st.DataObject, names: list[str]) -> None:
        """Several ops in one batch: each sees the earlier ones (a repeated name is `exists`),
        and a failing one leaves the others applied."""
        parent = data.draw(st.sampled_from(self.live()))
        ops: list[BatchOp] = [CreateOp(parent, name, "dir") for name in names]
        results = self.run(self.store.apply_batch(self.uid, ops, "d"))
        applied = False
        for name, result in zip(names, results, strict=True):
            if self.nodes[parent].kind != "dir":
                assert type(result.error) is errors.NotDirError
            elif self.child(parent, name) is not None:
                assert type(result.error) is errors.ExistsError
            else:
                assert result.error is None and result.node is not None
                self.nodes[result.node.node_id] = ONode("dir", parent, name)
                applied = True
        if applied:  # the parent's mtime: the time of the batch's last applied create
            self.changed(parent, one_op=False)
            for result in results:
                if result.node is not None:  # a new directory's own mtime: its create's time
                    self.nodes[result.node.node_id].mtime_ns = result.node.mtime_ns

    @rule(data=st.data())
    def restore_trash(self, data: st.DataObject) -> None:
        trashed = sorted(i for i, n in self.nodes.items() if n.trashed)
        if not trashed:
            return
        node_id = data.draw(st.sampled_from(trashed))
        node = self.nodes[node_id]
        exc, _ = self.attempt(self.store.restore_trash(self.uid, node_id, None, None, "d"))
        parent = node.original_parent
        assert parent is not None
        if parent not in self.nodes or self.nodes[parent].trashed:
            assert exc is errors.NotFoundError
        elif self.child(parent, node.name) is not None:
            assert exc is errors.ExistsError
        else:
            assert exc is None
            node.trashed, node.parent = False, parent
            self.changed(parent)

    @rule(data=st.data())
    def restore_version(self, data: st.DataObject) -> None:
        files = self.live("file")
        if not files:
            return
        node_id = data.draw(st.sampled_from(files))
        node = self.nodes[node_id]
        version, content = data.draw(st.sampled_from(node.history))
        exc, result = self.attempt(self.store.restore_version(self.uid, node_id, version, "d"))
        assert exc is None and result.version == node.version + 1
        node.history.append((node.version + 1, content))
        self.changed()

    @rule()
    def purge_everything_old(self) -> None:
        versions, trashed = self.run(self.store.purge(0))
        want_versions = sum(
            max(len(n.history) - 1, 0) for n in self.nodes.values() if not n.trashed
        )
        want_versions += sum(len(n.history) for n in self.nodes.values() if n.trashed)
        assert (versions, trashed) == (
            want_versions,
            sum(1 for n in self.nodes.values() if n.trashed),
        )
        for node_id, node in list(self.nodes.items()):
            if node.trashed:
                del self.nodes[node_id]
            else:
                node.history = node.history[-1:]

    # ---- invariants ----------------------------------------------------------------------
    @invariant()
    def listings_match(self) -> None:
        for dir_id in self.live("dir"):
            entries, _ = self.run(self.store.list_children(self.uid, dir_id, None, 5000))
            got = [(e.name, e.node_id, e.kind, e.size, e.version) for e in entries]
            want = sorted(
                (n.name, i, n.kind, len(n.content), n.version)
                for i, n in self.nodes.items()
                if not n.trashed and n.parent == dir_id
            )
            assert got == want

    @invariant()
    def directories_match(self) -> None:
        for dir_id in self.live("dir"):
            got = self.run(self.store.get_node(self.uid, dir_id))
            want = sum(
                1
                for n in self.nodes.values()
                if not n.trashed and n.parent == dir_id and n.kind == "dir"
            )
            assert got.subdirs == want, (dir_id, got.subdirs, want)
            if self.nodes[dir_id].mtime_ns is not None:
                assert got.mtime_ns == self.nodes[dir_id].mtime_ns, dir_id

    @invariant()
    def histories_match(self) -> None:
        for node_id in self.live("file"):
            versions = self.run(self.store.list_versions(self.uid, node_id))
            want = [(v, len(c)) for v, c in reversed(self.nodes[node_id].history)]
            assert [(v.version, v.size) for v in versions] == want
            node = self.run(self.store.get_node(self.uid, node_id, with_blocks=True))
            assert node.blocks == split(self.nodes[node_id].content)

    @invariant()
    def trash_and_usage_match(self) -> None:
        trash = self.run(self.store.list_trash(self.uid))
        assert sorted(n.node_id for n in trash) == sorted(
            i for i, n in self.nodes.items() if n.trashed
        )
        usage = self.run(self.store.usage(self.uid))
        assert usage.logical_bytes == sum(len(self.nodes[i].content) for i in self.live("file"))

    @invariant()
    def store_is_consistent(self) -> None:
        report = self.run(self.store.check(False, set()))
        assert report.errors == []


MetaMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_metadata_store_matches_oracle = MetaMachine.TestCase


def test_postgres_store_matches_oracle(pg_cluster: PgCluster) -> None:
    """The same machine on PostgreSQL (a new database per example; fewer examples, as each
    step costs round trips)."""

    class PgMetaMachine(MetaMachine):
        def make_store(self) -> MetadataStore:
            return PostgresMetadataStore(pg_cluster.new_database("model"), threads=2)

    run_state_machine_as_test(
        PgMetaMachine,
        settings=settings(
            max_examples=8,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
