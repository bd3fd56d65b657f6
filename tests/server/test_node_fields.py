"""Node fields of schema v2 (atime_ns, subdirs, directory mtimes) through the routes, the
migration of a version-1 database, and fsck of `subdirs`."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cloudfs_server.engines.sqlite import SqliteMetadataStore
from cloudfs_server.http.state import META

from tests.server.conftest import BOTH_ENGINES, AppUser
from tests.server.helpers import bid

pytestmark = pytest.mark.asyncio

# The tables exactly as schema version 1 created them (frozen copy of the released code's SCHEMA).
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS users (
    user_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    token_sha256  TEXT NOT NULL UNIQUE,
    root          INTEGER,
    quota_bytes   INTEGER,
    logical_bytes INTEGER NOT NULL DEFAULT 0,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    log_floor     INTEGER NOT NULL DEFAULT 0,
    created_at_ns INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS nodes (
    node_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         INTEGER NOT NULL,
    parent          INTEGER,
    name            TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('dir', 'file', 'symlink')),
    mode            INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    ctime_ns        INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    committed_by    TEXT NOT NULL,
    committed_at_ns INTEGER NOT NULL,
    target          TEXT,
    trashed_at_ns   INTEGER,
    original_parent INTEGER,
    original_path   TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_by_parent_name ON nodes (parent, name)
    WHERE parent IS NOT NULL;
CREATE INDEX IF NOT EXISTS nodes_trash ON nodes (user_id, trashed_at_ns)
    WHERE trashed_at_ns IS NOT NULL;
CREATE INDEX IF NOT EXISTS nodes_by_user ON nodes (user_id, kind);

CREATE TABLE IF NOT EXISTS versions (
    node_id          INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    size             INTEGER NOT NULL,
    mtime_ns         INTEGER NOT NULL,
    committed_at_ns  INTEGER NOT NULL,
    device           TEXT NOT NULL,
    blocks           TEXT NOT NULL,
    superseded_at_ns INTEGER,
    PRIMARY KEY (node_id, version)
);
CREATE INDEX IF NOT EXISTS versions_superseded ON versions (superseded_at_ns)
    WHERE superseded_at_ns IS NOT NULL;

CREATE TABLE IF NOT EXISTS blocks (
    block_id       TEXT PRIMARY KEY,
    size           INTEGER NOT NULL,
    refcount       INTEGER NOT NULL DEFAULT 0,
    uploaded_at_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_unreferenced ON blocks (uploaded_at_ns) WHERE refcount = 0;

CREATE TABLE IF NOT EXISTS availability (
    user_id  INTEGER NOT NULL,
    block_id TEXT NOT NULL,
    PRIMARY KEY (user_id, block_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS availability_by_block ON availability (block_id);

CREATE TABLE IF NOT EXISTS changes (
    user_id    INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    op         TEXT NOT NULL,
    node_id    INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    parent     INTEGER,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    device     TEXT NOT NULL,
    time_ns    INTEGER NOT NULL,
    old_parent INTEGER,
    old_name   TEXT,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
"""


async def node(user: AppUser, node_id: int) -> dict[str, Any]:
    status, body = await user.call("GET", f"/v1/nodes/{node_id}")
    assert status == 200, body
    return dict(body)


async def last_change(user: AppUser) -> dict[str, Any]:
    status, latest = await user.call("GET", "/v1/changes?cursor=latest")
    status, body = await user.call("GET", f"/v1/changes?cursor={latest['cursor'] - 1}")
    assert status == 200 and len(body["changes"]) == 1, body
    return dict(body["changes"][0])


@BOTH_ENGINES
async def test_atime_is_stored_set_by_patch_and_create_and_kept_by_commits(ann: AppUser) -> None:
    status, f = await ann.call(
        "POST",
        f"/v1/nodes/{ann.root}/children",
        {"name": "f", "type": "file", "mtime_ns": 1000, "atime_ns": 500},
    )
    assert status == 201 and f["mtime_ns"] == 1000 and f["atime_ns"] == 500
    status, g = await ann.call(
        "POST", f"/v1/nodes/{ann.root}/children", {"name": "g", "type": "dir", "mtime_ns": 7}
    )
    assert g["atime_ns"] == 7  # defaults to the mtime
    status, patched = await ann.call("PATCH", f"/v1/nodes/{f['id']}", {"atime_ns": 123})
    assert status == 200 and patched["atime_ns"] == 123 and patched["mtime_ns"] == 1000
    status, patched = await ann.call("PATCH", f"/v1/nodes/{f['id']}", {"mode": 0o600})
    assert patched["atime_ns"] == 123
    status, committed = await ann.commit(f["id"], 1, b"new")
    assert status == 200 and committed["atime_ns"] == 123 and committed["mtime_ns"] != 1000
    assert (await node(ann, f["id"]))["atime_ns"] == 123
    status, body = await ann.call("PATCH", f"/v1/nodes/{f['id']}", {"atime_ns": "now"})
    assert status == 400 and "'atime_ns' must be an integer" in body["message"]
    assert "subdirs" not in committed


@BOTH_ENGINES
async def test_subdirs_follow_create_delete_move_and_replace(
    ann: AppUser, client: TestClient
) -> None:
    a = await ann.mkdir(ann.root, "a")
    assert a["subdirs"] == 0
    b = await ann.mkdir(a["id"], "b")
    c = await ann.mkdir(a["id"], "c")
    await ann.create_file(a["id"], "file", b"x")
    assert (await node(ann, a["id"]))["subdirs"] == 2
    assert (await node(ann, ann.root))["subdirs"] == 1
    assert (await ann.call("DELETE", f"/v1/nodes/{b['id']}"))[0] == 200
    assert (await node(ann, a["id"]))["subdirs"] == 1
    status, _ = await ann.call(
        "POST", f"/v1/nodes/{c['id']}/move", {"parent": ann.root, "name": "c"}
    )
    assert status == 200
    assert (await node(ann, a["id"]))["subdirs"] == 0
    assert (await node(ann, ann.root))["subdirs"] == 2
    status, _ = await ann.call(
        "POST", f"/v1/nodes/{c['id']}/move", {"parent": ann.root, "name": "c2"}
    )
    assert (await node(ann, ann.root))["subdirs"] == 2  # a rename keeps the count
    empty = await ann.mkdir(a["id"], "empty")
    assert (await node(ann, a["id"]))["subdirs"] == 1
    status, moved = await ann.call(
        "POST", f"/v1/nodes/{c['id']}/move", {"parent": a["id"], "name": "empty", "replace": True}
    )
    assert status == 200 and moved["replaced"] == empty["id"]
    assert (await node(ann, a["id"]))["subdirs"] == 1
    assert (await node(ann, ann.root))["subdirs"] == 1
    report = await client.app[META].check(False, set())
    assert report.errors == []


@BOTH_ENGINES
async def test_directory_times_are_the_time_of_each_entry_change(ann: AppUser) -> None:
    a = await ann.mkdir(ann.root, "a")
    b = await ann.mkdir(ann.root, "b")

    async def assert_touched(*dir_ids: int) -> None:
        change = await last_change(ann)
        for dir_id in dir_ids:
            d = await node(ann, dir_id)
            assert d["mtime_ns"] == d["ctime_ns"] == change["time_ns"], (dir_id, d, change)

    f = await ann.create_file(a["id"], "f", b"hi")
    await assert_touched(a["id"])
    before_b = await node(ann, b["id"])
    await ann.call("POST", f"/v1/nodes/{f['id']}/move", {"parent": b["id"], "name": "g"})
    await assert_touched(a["id"], b["id"])
    await ann.call("POST", f"/v1/nodes/{f['id']}/move", {"parent": b["id"], "name": "h"})
    await assert_touched(b["id"])
    assert (await node(ann, b["id"]))["mtime_ns"] > before_b["mtime_ns"]
    a_before = await node(ann, a["id"])
    status, _ = await ann.commit(f["id"], 1, b"content changes leave the directory alone")
    assert status == 200
    assert (await node(ann, a["id"]))["mtime_ns"] == a_before["mtime_ns"]
    await ann.call("DELETE", f"/v1/nodes/{f['id']}")
    await assert_touched(b["id"])
    status, _ = await ann.call("POST", f"/v1/trash/{f['id']}/restore", {})
    assert status == 200
    await assert_touched(b["id"])
    sub = await ann.mkdir(a["id"], "sub")
    await assert_touched(a["id"])
    await ann.call("DELETE", f"/v1/nodes/{sub['id']}")
    await assert_touched(a["id"])
    root_before = await node(ann, ann.root)
    status, _ = await ann.call("PATCH", f"/v1/nodes/{a['id']}", {"mode": 0o700})
    assert (await node(ann, ann.root))["mtime_ns"] == root_before["mtime_ns"]  # setattr: no


def build_v1_database(path: Path, token_sha256: str = "digest") -> dict[str, int]:
    """A data file as the version-1 server left it: a user with a tree, history and trash."""
    now = time.time_ns()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO settings VALUES ('schema_version', '1')")
    conn.execute(
        "INSERT INTO users (user_id, name, token_sha256, root, logical_bytes, last_seq, "
        "created_at_ns) VALUES (1, 'old', ?, 1, 2, 0, ?)",
        (token_sha256, now),
    )
    ids = {"root": 1, "a": 2, "b": 3, "c": 4, "f": 5, "trashed": 6}
    rows = [
        (1, None, "", "dir", 1000),
        (2, 1, "a", "dir", 2000),
        (3, 2, "b", "dir", 3000),
        (4, 2, "c", "dir", 4000),
        (5, 3, "f", "file", 5000),
    ]
    for node_id, parent, name, kind, mtime in rows:
        conn.execute(
            "INSERT INTO nodes (node_id, user_id, parent, name, kind, mode, size, mtime_ns, "
            "ctime_ns, version, committed_by, committed_at_ns) "
            "VALUES (?, 1, ?, ?, ?, 420, ?, ?, ?, 1, 'laptop', ?)",
            (node_id, parent, name, kind, 2 if kind == "file" else 0, mtime, mtime, mtime),
        )
    block = bid(b"hi")
    conn.execute(
        "INSERT INTO nodes (node_id, user_id, parent, name, kind, mode, size, mtime_ns, ctime_ns, "
        "version, committed_by, committed_at_ns, trashed_at_ns, original_parent, original_path) "
        "VALUES (6, 1, NULL, 'gone', 'file', 420, 2, 6000, 6000, 1, 'laptop', 6000, ?, 2, "
        "'/a/gone')",
        (now,),
    )
    for node_id in (5, 6):
        conn.execute(
            "INSERT INTO versions (node_id, version, size, mtime_ns, committed_at_ns, device, "
            "blocks) VALUES (?, 1, 2, 5000, 5000, 'laptop', ?)",
            (node_id, f'[["{block}",2]]'),
        )
    conn.execute("INSERT INTO blocks VALUES (?, 2, 2, ?)", (block, now))
    conn.execute("INSERT INTO availability VALUES (1, ?)", (block,))
    conn.close()
    return ids


async def test_a_version_1_database_is_migrated_at_open(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite3"
    ids = build_v1_database(path)
    store = SqliteMetadataStore(path, synchronous="OFF")
    await store.open()
    try:
        root = await store.get_node(1, ids["root"])
        a = await store.get_node(1, ids["a"])
        b = await store.get_node(1, ids["b"])
        f = await store.get_node(1, ids["f"])
        assert (root.subdirs, a.subdirs, b.subdirs) == (1, 2, 0)
        assert [n.atime_ns for n in (root, a, b, f)] == [1000, 2000, 3000, 5000]
        assert (await store.list_trash(1))[0].atime_ns == 6000
        assert (await store.check(False, set())).errors == []
        await store.create_node(1, ids["a"], "d", "dir", None, None, None, 0, [], "new")
        assert (await store.get_node(1, ids["a"])).subdirs == 3
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()
        columns = [r[1] for r in conn.execute("PRAGMA table_info(nodes)")]
    finally:
        conn.close()
    assert version == ("3",)  # every step ran (3: device tokens, docs/server.md)
    assert columns[-2:] == ["atime_ns", "subdirs"]
    reopened = SqliteMetadataStore(path, synchronous="OFF")  # a current file opens as it is
    await reopened.open()
    try:
        assert (await reopened.get_node(1, ids["a"])).subdirs == 3
    finally:
        await reopened.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite3"
    build_v1_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE settings SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    store = SqliteMetadataStore(path, synchronous="OFF")
    with pytest.raises(RuntimeError, match="schema version 99"):
        await store.open()
    await store.close()


async def test_fsck_finds_and_repairs_a_wrong_subdirs(
    ann: AppUser, client: TestClient, data_dir: Path
) -> None:
    a = await ann.mkdir(ann.root, "a")
    await ann.mkdir(a["id"], "b")
    meta = client.app[META]
    assert (await meta.check(False, set())).errors == []
    conn = sqlite3.connect(data_dir / "meta.sqlite3", isolation_level=None)
    conn.execute("UPDATE nodes SET subdirs = 5 WHERE node_id = ?", (a["id"],))
    conn.close()
    report = await meta.check(False, set())
    assert report.errors == [f"directory {a['id']}: subdirs 5, expected 1"]
    report = await meta.check(True, set())
    assert report.repaired == [f"directory {a['id']}: subdirs 5, expected 1"]
    assert (await meta.check(False, set())).errors == []
    assert (await node(ann, a["id"]))["subdirs"] == 1
