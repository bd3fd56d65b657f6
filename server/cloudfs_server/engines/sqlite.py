"""The embedded metadata engine: SQLite in WAL mode, one connection per thread.

Reads run in this store's thread pool, each in its own read transaction (a snapshot). Writes go to
one writer thread that commits them in groups: it takes every write waiting in its queue, runs each
inside its own SAVEPOINT of one `BEGIN IMMEDIATE` transaction (a failing write rolls back only its
savepoint and gets its own exception), and COMMITs once, so one fsync covers the whole group. A
caller is answered only after that COMMIT. Other processes (the CLI) are serialised by SQLite's
lock and `busy_timeout`. The schema is documented column by column in docs/server.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cloudfs_server.auth import new_token, token_digest
from cloudfs_server.engines.meta import MetadataStore
from cloudfs_server.errors import (
    BadRequestError,
    CursorExpiredError,
    DependencyFailedError,
    ExistsError,
    InvalidMoveError,
    IsDirError,
    MissingBlocksError,
    NotDirError,
    NotEmptyError,
    NotFoundError,
    QuotaExceededError,
    ServerError,
    ServerFullError,
    VersionConflictError,
)
from cloudfs_server.model import (
    ADMIN_DEVICE,
    DEFAULT_MODE,
    MODE_MASK,
    BatchOp,
    BatchResult,
    BlockList,
    Change,
    ChangePage,
    CommitOp,
    CreateOp,
    DeleteOp,
    FsckReport,
    MoveOp,
    Node,
    NodeRef,
    ServerUsage,
    SetattrOp,
    TokenInfo,
    Usage,
    UserInfo,
    VersionInfo,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 3
# A token's `last_used_ns` is written at most this often (not once per request).
TOKEN_TOUCH_NS = 60 * 1_000_000_000
TOUCHED_MAX = 100_000  # tokens whose last write this process remembers (then it forgets all)
# SQLite's default limit on host parameters is 32766 (>= 3.32); stay well below it.
IN_CHUNK = 500

# The version-1 tables. A new file gets them and then every step of MIGRATIONS, exactly like an
# existing version-1 file, so the migration path is the one every test runs.
SCHEMA = """
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

# (version, script): the ordered steps from one schema version to the next, applied at open in the
# same transaction as the new `settings.schema_version`. Never edit a released step; append one.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        2,
        """
ALTER TABLE nodes ADD COLUMN atime_ns INTEGER NOT NULL DEFAULT 0;
UPDATE nodes SET atime_ns = mtime_ns;
ALTER TABLE nodes ADD COLUMN subdirs INTEGER NOT NULL DEFAULT 0;
UPDATE nodes SET subdirs = (
    SELECT COUNT(*) FROM nodes AS c WHERE c.parent = nodes.node_id AND c.kind = 'dir'
) WHERE kind = 'dir';
""",
    ),
    (
        3,
        # Per-device tokens and passwords. Each user's one token becomes its `admin-cli` device
        # token (same digest: it keeps working); `users` is rebuilt without `token_sha256` (a
        # UNIQUE column cannot be dropped in place) and with `password_hash`.
        """
CREATE TABLE tokens (
    user_id       INTEGER NOT NULL,
    device        TEXT NOT NULL,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_at_ns INTEGER NOT NULL,
    last_used_ns  INTEGER,
    PRIMARY KEY (user_id, device)
) WITHOUT ROWID;
INSERT INTO tokens (user_id, device, token_sha256, created_at_ns)
    SELECT user_id, 'admin-cli', token_sha256, created_at_ns FROM users;
CREATE TABLE users_v3 (
    user_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    root          INTEGER,
    quota_bytes   INTEGER,
    logical_bytes INTEGER NOT NULL DEFAULT 0,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    log_floor     INTEGER NOT NULL DEFAULT 0,
    created_at_ns INTEGER NOT NULL
);
INSERT INTO users_v3 (user_id, name, root, quota_bytes, logical_bytes, last_seq, log_floor,
    created_at_ns)
    SELECT user_id, name, root, quota_bytes, logical_bytes, last_seq, log_floor, created_at_ns
    FROM users;
DROP TABLE users;
ALTER TABLE users_v3 RENAME TO users;
""",
    ),
)

NODE_COLS = (
    "node_id, parent, name, kind, mode, size, mtime_ns, ctime_ns, version, committed_by, "
    "committed_at_ns, target, trashed_at_ns, original_parent, original_path, atime_ns, subdirs"
)
CHANGE_COLS = "seq, op, node_id, kind, parent, name, version, device, time_ns, old_parent, old_name"


def _node(row: tuple[Any, ...]) -> Node:
    return Node(
        node_id=row[0],
        parent=row[1],
        name=row[2],
        kind=row[3],
        mode=row[4],
        size=row[5],
        mtime_ns=row[6],
        ctime_ns=row[7],
        version=row[8],
        committed_by=row[9],
        committed_at_ns=row[10],
        target=row[11],
        trashed_at_ns=row[12],
        original_parent=row[13],
        original_path=row[14],
        atime_ns=row[15],
        subdirs=row[16],
    )


def _dump_blocks(blocks: BlockList) -> str:
    return json.dumps([[b, n] for b, n in blocks], separators=(",", ":"))


def _load_blocks(text: str) -> BlockList:
    return [(b, n) for b, n in json.loads(text)]


# Rows per purge transaction.
PURGE_BATCH = 1000
# At most this many writes share one transaction (bounds the work lost to one failed COMMIT).
GROUP_MAX = 64


def is_sqlite_full(exc: BaseException) -> bool:
    """SQLite's "database or disk is full" (SQLITE_FULL, also as an extended code)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code is None:
        return False
    return bool(code & 0xFF == sqlite3.SQLITE_FULL)


@contextlib.contextmanager
def _full_as_server_full(path: Path) -> Iterator[None]:
    """The engine boundary for a full disk: SQLITE_FULL becomes `ServerFullError` (507)."""
    try:
        yield
    except sqlite3.Error as exc:
        if is_sqlite_full(exc):
            raise ServerFullError(f"the metadata database {path.name} is out of space") from exc
        raise


class _WriteItem:
    __slots__ = ("args", "durable", "fn", "future")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], durable: bool, future: Future[Any]
    ) -> None:
        self.fn, self.args, self.durable, self.future = fn, args, durable, future


def _chunks(items: list[T], size: int = IN_CHUNK) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SqliteMetadataStore(MetadataStore):
    """`MetadataStore` on one SQLite file. Thread-safe; every call runs in its own pool."""

    def __init__(
        self,
        path: Path,
        threads: int = 4,
        busy_timeout_s: float = 30.0,
        synchronous: str = "FULL",
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="meta")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._writes: queue.SimpleQueue[_WriteItem | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._touched: dict[str, int] = {}  # token digest → when this process last wrote its use
        self.groups_committed = 0  # statistics: transactions the writer committed
        self.writes_committed = 0  # statistics: writes they contained

    # ---- plumbing ------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = OFF")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _writer_main(self) -> None:
        conn = self._conn()
        while True:
            item = self._writes.get()
            if item is None:
                return
            group = [item]
            stop = False
            while len(group) < GROUP_MAX:
                try:
                    more = self._writes.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            self._commit_group(conn, group)
            if stop:
                return

    def _commit_group(self, conn: sqlite3.Connection, group: list[_WriteItem]) -> None:
        """Run a group of writes in one transaction; answer each future after COMMIT.

        This is the writer thread's boundary: every exception is handed to the caller whose
        write raised it (or, for BEGIN/COMMIT failures, to every caller of the group).
        """
        # A group with no durable write (only upload rows) is committed without fsyncing the
        # WAL: WAL is append-only, so the next durable commit (the one that references the
        # block) makes it durable too; losing it to a power cut only means a re-upload.
        durable = any(item.durable for item in group)
        conn.execute(f"PRAGMA synchronous = {self.synchronous if durable else 'NORMAL'}")
        group = [item for item in group if item.future.set_running_or_notify_cancel()]
        if not group:
            return
        done: list[tuple[_WriteItem, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in group:
                conn.execute("SAVEPOINT write")
                try:
                    result = item.fn(conn, *item.args)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                    done.append((item, None, exc))
                    continue
                conn.execute("RELEASE write")
                done.append((item, result, None))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not is_sqlite_full(exc):  # a full disk is logged (rate-limited) by the middleware
                log.error("metadata transaction of %d writes failed: %s", len(group), exc)
            for item in group:
                item.future.set_exception(exc)
            return
        self.groups_committed += 1
        self.writes_committed += len(group)
        for item, result, error in done:
            if error is None:
                item.future.set_result(result)
            else:
                item.future.set_exception(error)

    def _read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            return fn(conn, *args)
        finally:
            conn.execute("COMMIT")

    async def _write(self, fn: Callable[..., T], *args: Any, durable: bool = True) -> T:
        """Run `fn(conn, *args)` as one atomic write; return after it is committed."""
        if self._writer is None:
            raise RuntimeError("the metadata store is not open")
        future: Future[T] = Future()
        self._writes.put(_WriteItem(fn, args, durable, future))
        with _full_as_server_full(self.path):
            return await asyncio.wrap_future(future)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        with _full_as_server_full(self.path):
            return await loop.run_in_executor(
                self._executor, functools.partial(self._read_sync, fn, *args)
            )

    # ---- lifecycle -----------------------------------------------------------------------
    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"SQLite refused WAL mode (got {mode!r}) for {self.path}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()
            fresh = row is None
            version = 1 if fresh else int(row[0])  # a new file has just got the v1 tables
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {version}, this server knows "
                    f"{SCHEMA_VERSION}; use a newer cloudfs-server"
                )
            for target, script in MIGRATIONS:
                if version < target:
                    if not fresh:
                        log.info("migrating %s to schema version %d", self.path, target)
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    version = target
            conn.execute(
                "INSERT INTO settings VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(version),),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_sync)
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._writer_main, name="meta-writer", daemon=True
            )
            self._writer.start()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            self._writes.put(None)  # the writer finishes what is queued first
            await loop.run_in_executor(None, self._writer.join)
            self._writer = None
        await loop.run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    # ---- shared helpers (run inside a transaction) -----------------------------------------
    @staticmethod
    def _live(conn: sqlite3.Connection, user_id: int, node_id: int) -> Node:
        row = conn.execute(
            f"SELECT {NODE_COLS} FROM nodes "
            "WHERE node_id = ? AND user_id = ? AND trashed_at_ns IS NULL",
            (node_id, user_id),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"node {node_id} not found")
        return _node(row)

    @staticmethod
    def _child(conn: sqlite3.Connection, parent: int, name: str) -> Node | None:
        row = conn.execute(
            f"SELECT {NODE_COLS} FROM nodes WHERE parent = ? AND name = ?", (parent, name)
        ).fetchone()
        return None if row is None else _node(row)

    @staticmethod
    def _has_children(conn: sqlite3.Connection, node_id: int) -> bool:
        return (
            conn.execute("SELECT 1 FROM nodes WHERE parent = ? LIMIT 1", (node_id,)).fetchone()
            is not None
        )

    @staticmethod
    def _ancestors(conn: sqlite3.Connection, node_id: int) -> list[tuple[int, str]]:
        """(node_id, name) from `node_id` up to its root, node first."""
        rows = conn.execute(
            "WITH RECURSIVE up(node_id, parent, name, depth) AS ("
            " SELECT node_id, parent, name, 0 FROM nodes WHERE node_id = ?"
            " UNION ALL SELECT n.node_id, n.parent, n.name, up.depth + 1"
            " FROM nodes n JOIN up ON n.node_id = up.parent WHERE up.depth < 100000)"
            " SELECT node_id, name FROM up ORDER BY depth",
            (node_id,),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def _path(self, conn: sqlite3.Connection, node_id: int) -> str:
        names = [name for _, name in reversed(self._ancestors(conn, node_id))]
        return "/" + "/".join(names[1:])

    @staticmethod
    def _log(
        conn: sqlite3.Connection,
        user_id: int,
        op: str,
        node: Node,
        device: str,
        now: int,
        old_parent: int | None = None,
        old_name: str | None = None,
        parent: int | None = None,
    ) -> int:
        seq = conn.execute(
            "UPDATE users SET last_seq = last_seq + 1 WHERE user_id = ? RETURNING last_seq",
            (user_id,),
        ).fetchone()[0]
        conn.execute(
            f"INSERT INTO changes (user_id, {CHANGE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                user_id,
                seq,
                op,
                node.node_id,
                node.kind,
                node.parent if parent is None else parent,
                node.name,
                node.version,
                device,
                now,
                old_parent,
                old_name,
            ),
        )
        return int(seq)

    @staticmethod
    def _check_blocks(conn: sqlite3.Connection, user_id: int, blocks: BlockList) -> None:
        """Every block available to the user and of the stated length, else raise."""
        wanted = list(dict.fromkeys(b for b, _ in blocks))
        sizes: dict[str, int] = {}
        for part in _chunks(wanted):
            marks = ",".join("?" * len(part))
            for block_id, size in conn.execute(
                "SELECT b.block_id, b.size FROM availability a "
                "JOIN blocks b ON b.block_id = a.block_id "
                f"WHERE a.user_id = ? AND a.block_id IN ({marks})",
                (user_id, *part),
            ):
                sizes[block_id] = size
        missing = [b for b in wanted if b not in sizes]
        if missing:
            raise MissingBlocksError(
                f"{len(missing)} block(s) are not available to you; upload them and retry",
                missing=missing,
            )
        for index, (block_id, length) in enumerate(blocks):
            if sizes[block_id] != length:
                raise BadRequestError(
                    f"blocks[{index}] gives length {length} but block {block_id} "
                    f"is {sizes[block_id]} bytes"
                )

    @staticmethod
    def _add_refs(conn: sqlite3.Connection, blocks: BlockList, delta: int) -> None:
        counts = Counter(b for b, _ in blocks)
        conn.executemany(
            "UPDATE blocks SET refcount = refcount + ? WHERE block_id = ?",
            [(n * delta, b) for b, n in counts.items()],
        )

    @staticmethod
    def _check_quota(conn: sqlite3.Connection, user_id: int, delta: int) -> None:
        if delta <= 0:
            return
        quota, used = conn.execute(
            "SELECT quota_bytes, logical_bytes FROM users WHERE user_id = ?", (user_id,)
        ).fetchone()
        if quota is not None and used + delta > quota:
            raise QuotaExceededError(
                f"this change needs {delta} more bytes; {used} of your {quota} bytes are used",
                quota_bytes=quota,
                used_bytes=used,
            )

    @staticmethod
    def _add_logical(conn: sqlite3.Connection, user_id: int, delta: int) -> None:
        if delta:
            conn.execute(
                "UPDATE users SET logical_bytes = logical_bytes + ? WHERE user_id = ?",
                (delta, user_id),
            )

    @staticmethod
    def _drop_versions(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> int:
        rows = conn.execute(f"SELECT node_id, version, blocks FROM versions WHERE {where}", args)
        rows_l = rows.fetchall()
        counts: Counter[str] = Counter()
        for _, _, text in rows_l:
            counts.update(b for b, _ in _load_blocks(text))
        conn.executemany(
            "UPDATE blocks SET refcount = refcount - ? WHERE block_id = ?",
            [(n, b) for b, n in counts.items()],
        )
        conn.executemany(
            "DELETE FROM versions WHERE node_id = ? AND version = ?",
            [(r[0], r[1]) for r in rows_l],
        )
        return len(rows_l)

    @staticmethod
    def _dir_changed(
        conn: sqlite3.Connection, dir_id: int | None, now: int, subdirs_delta: int = 0
    ) -> None:
        """An entry of `dir_id` was added, removed or renamed at `now`: its mtime and ctime
        become `now` (the change's `time_ns`), and `subdirs` moves by `subdirs_delta`."""
        if dir_id is not None:
            conn.execute(
                "UPDATE nodes SET mtime_ns = ?, ctime_ns = ?, subdirs = subdirs + ? "
                "WHERE node_id = ?",
                (now, now, subdirs_delta, dir_id),
            )

    def _trash(self, conn: sqlite3.Connection, node: Node, now: int) -> None:
        path = self._path(conn, node.node_id)
        conn.execute(
            "UPDATE nodes SET parent = NULL, trashed_at_ns = ?, original_parent = ?, "
            "original_path = ? WHERE node_id = ?",
            (now, node.parent, path, node.node_id),
        )

    # ---- users ---------------------------------------------------------------------------
    @staticmethod
    def _user_id(conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT user_id FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"no user named {name!r}")
        return int(row[0])

    @staticmethod
    def _issue_token(conn: sqlite3.Connection, user_id: int, device: str) -> str:
        """A new token for `device`, replacing that device's previous one (if any)."""
        token = new_token()
        conn.execute(
            "INSERT INTO tokens (user_id, device, token_sha256, created_at_ns) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (user_id, device) DO UPDATE SET token_sha256 = excluded.token_sha256, "
            "created_at_ns = excluded.created_at_ns, last_used_ns = NULL",
            (user_id, device, token_digest(token), time.time_ns()),
        )
        return token

    def _create_user(
        self, conn: sqlite3.Connection, name: str, quota: int | None, password_hash: str | None
    ) -> tuple[UserInfo, str]:
        if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise ExistsError(f"user {name!r} already exists")
        now = time.time_ns()
        user_id = conn.execute(
            "INSERT INTO users (name, password_hash, quota_bytes, created_at_ns) "
            "VALUES (?, ?, ?, ?) RETURNING user_id",
            (name, password_hash, quota, now),
        ).fetchone()[0]
        root = conn.execute(
            "INSERT INTO nodes (user_id, parent, name, kind, mode, size, mtime_ns, ctime_ns, "
            "atime_ns, version, committed_by, committed_at_ns) VALUES (?, NULL, '', 'dir', ?, 0, "
            "?, ?, ?, 1, 'server', ?) RETURNING node_id",
            (user_id, DEFAULT_MODE["dir"], now, now, now, now),
        ).fetchone()[0]
        conn.execute("UPDATE users SET root = ? WHERE user_id = ?", (root, user_id))
        token = self._issue_token(conn, user_id, ADMIN_DEVICE)
        return UserInfo(user_id, name, root, quota), token

    async def create_user(
        self, name: str, quota_bytes: int | None, password_hash: str | None = None
    ) -> tuple[UserInfo, str]:
        return await self._write(self._create_user, name, quota_bytes, password_hash)

    async def list_users(self) -> list[UserInfo]:
        def run(conn: sqlite3.Connection) -> list[UserInfo]:
            rows = conn.execute(
                "SELECT user_id, name, root, quota_bytes FROM users ORDER BY user_id"
            )
            return [UserInfo(*r) for r in rows]

        return await self._read(run)

    async def reset_token(self, name: str) -> str:
        def run(conn: sqlite3.Connection) -> str:
            return self._issue_token(conn, self._user_id(conn, name), ADMIN_DEVICE)

        return await self._write(run)

    async def issue_token(self, user_id: int, device: str) -> str:
        return await self._write(self._issue_token, user_id, device)

    async def set_password_hash(self, name: str, password_hash: str | None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name)
            )
            if cur.rowcount != 1:
                raise NotFoundError(f"no user named {name!r}")

        await self._write(run)

    async def password_hash(self, name: str) -> tuple[UserInfo, str | None] | None:
        def run(conn: sqlite3.Connection) -> tuple[UserInfo, str | None] | None:
            row = conn.execute(
                "SELECT user_id, name, root, quota_bytes, password_hash FROM users WHERE name = ?",
                (name,),
            ).fetchone()
            return None if row is None else (UserInfo(*row[:4]), row[4])

        return await self._read(run)

    async def list_tokens(self, name: str) -> list[TokenInfo]:
        def run(conn: sqlite3.Connection) -> list[TokenInfo]:
            rows = conn.execute(
                "SELECT device, created_at_ns, last_used_ns FROM tokens WHERE user_id = ? "
                "ORDER BY device",
                (self._user_id(conn, name),),
            )
            return [TokenInfo(*r) for r in rows]

        return await self._read(run)

    async def revoke_token(self, name: str, device: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "DELETE FROM tokens WHERE user_id = ? AND device = ?",
                (self._user_id(conn, name), device),
            )
            if cur.rowcount != 1:
                raise NotFoundError(f"user {name!r} has no token for device {device!r}")

        await self._write(run)

    async def set_quota(self, name: str, quota_bytes: int | None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE users SET quota_bytes = ? WHERE name = ?", (quota_bytes, name)
            )
            if cur.rowcount != 1:
                raise NotFoundError(f"no user named {name!r}")

        await self._write(run)

    @staticmethod
    def _lookup_token(conn: Any, digest: str) -> tuple[UserInfo, int | None] | None:
        row = conn.execute(
            "SELECT u.user_id, u.name, u.root, u.quota_bytes, t.last_used_ns "
            "FROM tokens AS t JOIN users AS u ON u.user_id = t.user_id WHERE t.token_sha256 = ?",
            (digest,),
        ).fetchone()
        return None if row is None else (UserInfo(*row[:4]), row[4])

    @staticmethod
    def _touch_token(conn: Any, digest: str, now: int) -> None:
        conn.execute(
            "UPDATE tokens SET last_used_ns = ? WHERE token_sha256 = ? "
            "AND (last_used_ns IS NULL OR last_used_ns < ?)",
            (now, digest, now - TOKEN_TOUCH_NS),
        )

    async def _token_row(self, digest: str) -> tuple[UserInfo, int | None] | None:
        def run() -> tuple[UserInfo, int | None] | None:
            return self._lookup_token(self._conn(), digest)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, run)

    async def authenticate(self, token: str) -> UserInfo | None:
        digest = token_digest(token)
        found = await self._token_row(digest)
        if found is None:
            return None
        user, last_used_ns = found
        now = time.time_ns()
        stale = last_used_ns is None or now - last_used_ns >= TOKEN_TOUCH_NS
        if stale and now - self._touched.get(digest, 0) >= TOKEN_TOUCH_NS:
            # At most one write a minute per token and process (concurrent first requests
            # find `_touched` set; other processes' writes are dropped by the UPDATE's
            # condition); an upload-row-like write: no fsync of its own.
            if len(self._touched) >= TOUCHED_MAX:
                self._touched.clear()
            self._touched[digest] = now
            await self._write(self._touch_token, digest, now, durable=False)
        return user

    @staticmethod
    def _usage(conn: sqlite3.Connection, user_id: int) -> Usage:
        quota = conn.execute(
            "SELECT quota_bytes FROM users WHERE user_id = ?", (user_id,)
        ).fetchone()[0]
        logical, files = conn.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM nodes "
            "WHERE user_id = ? AND kind = 'file' AND trashed_at_ns IS NULL",
            (user_id,),
        ).fetchone()
        dirs = conn.execute(
            "SELECT COUNT(*) FROM nodes WHERE user_id = ? AND kind = 'dir' AND parent IS NOT NULL",
            (user_id,),
        ).fetchone()[0]
        stored = conn.execute(
            "SELECT COALESCE(SUM(size), 0) FROM blocks WHERE block_id IN ("
            " SELECT json_extract(j.value, '$[0]') FROM nodes n"
            " JOIN versions v ON v.node_id = n.node_id, json_each(v.blocks) j"
            " WHERE n.user_id = ?)",
            (user_id,),
        ).fetchone()[0]
        return Usage(logical, stored, quota, files, dirs)

    async def usage(self, user_id: int) -> Usage:
        return await self._read(self._usage, user_id)

    async def server_usage(self) -> ServerUsage:
        def run(conn: sqlite3.Connection) -> ServerUsage:
            out = ServerUsage()
            for user_id, name in conn.execute("SELECT user_id, name FROM users ORDER BY name"):
                usage = self._usage(conn, user_id)
                out.users.append((name, usage))
                out.logical_bytes += usage.logical_bytes
            out.referenced_bytes = conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM versions"
            ).fetchone()[0]
            out.stored_bytes, out.blocks = conn.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM blocks"
            ).fetchone()
            return out

        return await self._read(run)

    # ---- blocks --------------------------------------------------------------------------
    async def record_upload(self, user_id: int, block_id: str, size: int) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "INSERT INTO blocks (block_id, size, refcount, uploaded_at_ns) VALUES (?, ?, 0, ?)"
                " ON CONFLICT (block_id) DO UPDATE SET uploaded_at_ns = excluded.uploaded_at_ns",
                (block_id, size, time.time_ns()),
            )
            cur = conn.execute(
                "INSERT OR IGNORE INTO availability (user_id, block_id) VALUES (?, ?)",
                (user_id, block_id),
            )
            return cur.rowcount == 1

        return await self._write(run, durable=False)

    async def missing_blocks(self, user_id: int, block_ids: list[str]) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            wanted = list(dict.fromkeys(block_ids))
            have: set[str] = set()
            for part in _chunks(wanted):
                marks = ",".join("?" * len(part))
                have.update(
                    r[0]
                    for r in conn.execute(
                        "SELECT block_id FROM availability "
                        f"WHERE user_id = ? AND block_id IN ({marks})",
                        (user_id, *part),
                    )
                )
            return [b for b in wanted if b not in have]

        return await self._read(run)

    async def available_block_size(self, user_id: int, block_id: str) -> int | None:
        def run(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT b.size FROM availability a JOIN blocks b ON b.block_id = a.block_id "
                "WHERE a.user_id = ? AND a.block_id = ?",
                (user_id, block_id),
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._read(run)

    # ---- namespace -----------------------------------------------------------------------
    async def get_node(self, user_id: int, node_id: int, with_blocks: bool = False) -> Node:
        def run(conn: sqlite3.Connection) -> Node:
            node = self._live(conn, user_id, node_id)
            if with_blocks and node.kind == "file":
                text = conn.execute(
                    "SELECT blocks FROM versions WHERE node_id = ? AND version = ?",
                    (node_id, node.version),
                ).fetchone()[0]
                node.blocks = _load_blocks(text)
            return node

        return await self._read(run)

    async def list_children(
        self, user_id: int, node_id: int, after: str | None, limit: int
    ) -> tuple[list[Node], str | None]:
        def run(conn: sqlite3.Connection) -> tuple[list[Node], str | None]:
            parent = self._live(conn, user_id, node_id)
            if parent.kind != "dir":
                raise NotDirError(f"node {node_id} is not a directory")
            rows = conn.execute(
                f"SELECT {NODE_COLS} FROM nodes WHERE parent = ? AND name > ? "
                "ORDER BY name LIMIT ?",
                (node_id, after or "", limit + 1),
            ).fetchall()
            nodes = [_node(r) for r in rows[:limit]]
            return nodes, (nodes[-1].name if len(rows) > limit else None)

        return await self._read(run)

    async def lookup(self, user_id: int, parent: int, name: str) -> Node:
        def run(conn: sqlite3.Connection) -> Node:
            node = self._live(conn, user_id, parent)
            if node.kind != "dir":
                raise NotDirError(f"node {parent} is not a directory")
            child = self._child(conn, parent, name)
            if child is None:
                raise NotFoundError(f"no entry {name!r} in directory {parent}")
            return child

        return await self._read(run)

    def _create(
        self,
        conn: sqlite3.Connection,
        user_id: int,
        parent: int,
        name: str,
        kind: str,
        mode: int | None,
        mtime_ns: int | None,
        target: str | None,
        size: int,
        blocks: BlockList,
        device: str,
        atime_ns: int | None = None,
    ) -> Node:
        directory = self._live(conn, user_id, parent)
        if directory.kind != "dir":
            raise NotDirError(f"parent {parent} is not a directory")
        existing = self._child(conn, parent, name)
        if existing is not None:
            raise ExistsError(
                f"{name!r} already exists in directory {parent}", node=existing.to_json()
            )
        if kind == "file":
            self._check_blocks(conn, user_id, blocks)
            self._check_quota(conn, user_id, size)
        elif kind == "symlink":
            assert target is not None
            size = len(target.encode("utf-8"))
        else:
            size = 0
        now = time.time_ns()
        mtime = now if mtime_ns is None else mtime_ns
        perm = DEFAULT_MODE[kind] if mode is None else mode & MODE_MASK
        atime = mtime if atime_ns is None else atime_ns
        row = conn.execute(
            "INSERT INTO nodes (user_id, parent, name, kind, mode, size, mtime_ns, ctime_ns, "
            "atime_ns, version, committed_by, committed_at_ns, target) "
            f"VALUES (?,?,?,?,?,?,?,?,?,1,?,?,?) RETURNING {NODE_COLS}",
            (user_id, parent, name, kind, perm, size, mtime, now, atime, device, now, target),
        ).fetchone()
        node = _node(row)
        if kind == "file":
            conn.execute(
                "INSERT INTO versions (node_id, version, size, mtime_ns, committed_at_ns, device,"
                " blocks) VALUES (?, 1, ?, ?, ?, ?, ?)",
                (node.node_id, size, mtime, now, device, _dump_blocks(blocks)),
            )
            self._add_refs(conn, blocks, +1)
            self._add_logical(conn, user_id, size)
        self._dir_changed(conn, parent, now, 1 if kind == "dir" else 0)
        self._log(conn, user_id, "create", node, device, now)
        return node

    async def create_node(
        self,
        user_id: int,
        parent: int,
        name: str,
        kind: str,
        mode: int | None,
        mtime_ns: int | None,
        target: str | None,
        size: int,
        blocks: BlockList,
        device: str,
        atime_ns: int | None = None,
    ) -> Node:
        return await self._write(
            self._create,
            user_id,
            parent,
            name,
            kind,
            mode,
            mtime_ns,
            target,
            size,
            blocks,
            device,
            atime_ns,
        )

    def _new_version(
        self,
        conn: sqlite3.Connection,
        user_id: int,
        node: Node,
        size: int,
        blocks: BlockList,
        mtime_ns: int,
        device: str,
        now: int,
    ) -> Node:
        """Append version `node.version + 1` (checks quota; blocks already checked)."""
        self._check_quota(conn, user_id, size - node.size)
        new_version = node.version + 1
        conn.execute(
            "UPDATE versions SET superseded_at_ns = ? WHERE node_id = ? AND version = ?",
            (now, node.node_id, node.version),
        )
        conn.execute(
            "INSERT INTO versions (node_id, version, size, mtime_ns, committed_at_ns, device, "
            "blocks) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (node.node_id, new_version, size, mtime_ns, now, device, _dump_blocks(blocks)),
        )
        self._add_refs(conn, blocks, +1)
        self._add_logical(conn, user_id, size - node.size)
        row = conn.execute(
            "UPDATE nodes SET size = ?, version = ?, mtime_ns = ?, ctime_ns = ?, committed_by = ?,"
            f" committed_at_ns = ? WHERE node_id = ? RETURNING {NODE_COLS}",
            (size, new_version, mtime_ns, now, device, now, node.node_id),
        ).fetchone()
        updated = _node(row)
        self._log(conn, user_id, "modify", updated, device, now)
        return updated

    @staticmethod
    def _require_file(node: Node) -> None:
        if node.kind == "dir":
            raise IsDirError(f"node {node.node_id} is a directory")
        if node.kind != "file":
            raise BadRequestError(f"node {node.node_id} is a symlink; only files have content")

    def _commit(
        self,
        conn: sqlite3.Connection,
        user_id: int,
        node_id: int,
        base_version: int,
        size: int,
        blocks: BlockList,
        mtime_ns: int | None,
        device: str,
    ) -> Node:
        node = self._live(conn, user_id, node_id)
        self._require_file(node)
        self._check_blocks(conn, user_id, blocks)
        if base_version != node.version:
            raise VersionConflictError(
                f"version {base_version} is not current; version {node.version} was committed "
                f"by {node.committed_by!r}",
                current_version=node.version,
                committed_by=node.committed_by,
                committed_at_ns=node.committed_at_ns,
            )
        now = time.time_ns()
        mtime = now if mtime_ns is None else mtime_ns
        return self._new_version(conn, user_id, node, size, blocks, mtime, device, now)

    async def commit(
        self,
        user_id: int,
        node_id: int,
        base_version: int,
        size: int,
        blocks: BlockList,
        mtime_ns: int | None,
        device: str,
    ) -> Node:
        return await self._write(
            self._commit, user_id, node_id, base_version, size, blocks, mtime_ns, device
        )

    def _setattr(
        self,
        conn: sqlite3.Connection,
        user_id: int,
        node_id: int,
        mode: int | None,
        mtime_ns: int | None,
        device: str,
        atime_ns: int | None = None,
    ) -> Node:
        node = self._live(conn, user_id, node_id)
        now = time.time_ns()
        perm = node.mode if mode is None else mode & MODE_MASK
        mtime = node.mtime_ns if mtime_ns is None else mtime_ns
        atime = node.atime_ns if atime_ns is None else atime_ns
        row = conn.execute(
            "UPDATE nodes SET mode = ?, mtime_ns = ?, atime_ns = ?, ctime_ns = ? WHERE node_id = ? "
            f"RETURNING {NODE_COLS}",
            (perm, mtime, atime, now, node_id),
        ).fetchone()
        if node.kind == "file":
            conn.execute(
                "UPDATE versions SET mtime_ns = ? WHERE node_id = ? AND version = ?",
                (mtime, node_id, node.version),
            )
        updated = _node(row)
        self._log(conn, user_id, "setattr", updated, device, now)
        return updated

    async def setattr(
        self,
        user_id: int,
        node_id: int,
        mode: int | None,
        mtime_ns: int | None,
        device: str,
        atime_ns: int | None = None,
    ) -> Node:
        return await self._write(self._setattr, user_id, node_id, mode, mtime_ns, device, atime_ns)

    def _move(
        self,
        conn: sqlite3.Connection,
        user_id: int,
        node_id: int,
        parent: int,
        name: str,
        replace: bool,
        device: str,
    ) -> tuple[Node, int | None]:
        node = self._live(conn, user_id, node_id)
        if node.parent is None:
            raise InvalidMoveError("the root directory cannot be moved")
        dest = self._live(conn, user_id, parent)
        if dest.kind != "dir":
            raise NotDirError(f"target parent {parent} is not a directory")
        if node.kind == "dir" and any(a == node_id for a, _ in self._ancestors(conn, parent)):
            raise InvalidMoveError(f"directory {node_id} cannot move into its own subtree")
        target = self._child(conn, parent, name)
        if target is not None and target.node_id == node_id:
            return node, None
        now = time.time_ns()
        replaced: int | None = None
        version = node.version
        is_dir = 1 if node.kind == "dir" else 0
        # subdirs deltas of the parents; both get the operation's time as mtime.
        deltas: Counter[int] = Counter({parent: is_dir})
        deltas[node.parent] -= is_dir
        if target is not None:
            if not replace:
                raise ExistsError(
                    f"{name!r} already exists in directory {parent}", node=target.to_json()
                )
            if target.kind == "dir":
                if node.kind != "dir":
                    raise IsDirError(
                        f"cannot replace directory {target.node_id} with a non-directory"
                    )
                if self._has_children(conn, target.node_id):
                    raise NotEmptyError(f"directory {target.node_id} is not empty")
                conn.execute("DELETE FROM nodes WHERE node_id = ?", (target.node_id,))
                deltas[parent] -= 1
            elif node.kind == "dir":
                raise NotDirError(f"cannot replace non-directory {target.node_id} with a directory")
            elif node.kind == "file" and target.kind == "file":
                version = self._take_over(conn, node, target, now)
                self._add_logical(conn, user_id, -target.size)
            else:
                # A symlink replaced by a file or the other way round: the replaced node goes to
                # the trash, so nothing is lost.
                self._trash(conn, target, now)
                if target.kind == "file":
                    self._add_logical(conn, user_id, -target.size)
            replaced = target.node_id
            self._log(conn, user_id, "delete", target, device, now)
        row = conn.execute(
            "UPDATE nodes SET parent = ?, name = ?, ctime_ns = ?, version = ? WHERE node_id = ? "
            f"RETURNING {NODE_COLS}",
            (parent, name, now, version, node_id),
        ).fetchone()
        moved = _node(row)
        for dir_id, delta in deltas.items():
            self._dir_changed(conn, dir_id, now, delta)
        self._log(
            conn, user_id, "move", moved, device, now, old_parent=node.parent, old_name=node.name
        )
        return moved, replaced

    def _take_over(self, conn: sqlite3.Connection, node: Node, target: Node, now: int) -> int:
        """`node` replaces file `target`: it inherits target's history; returns its new version."""
        self._drop_versions(conn, "node_id = ? AND version != ?", (node.node_id, node.version))
        new_version = target.version + 1
        conn.execute(
            "UPDATE versions SET version = ? WHERE node_id = ? AND version = ?",
            (new_version, node.node_id, node.version),
        )
        conn.execute(
            "UPDATE versions SET superseded_at_ns = ? WHERE node_id = ? AND version = ?",
            (now, target.node_id, target.version),
        )
        conn.execute(
            "UPDATE versions SET node_id = ? WHERE node_id = ?", (node.node_id, target.node_id)
        )
        conn.execute("DELETE FROM nodes WHERE node_id = ?", (target.node_id,))
        return new_version

    async def move(
        self, user_id: int, node_id: int, parent: int, name: str, replace: bool, device: str
    ) -> tuple[Node, int | None]:
        return await self._write(self._move, user_id, node_id, parent, name, replace, device)

    def _delete(self, conn: sqlite3.Connection, user_id: int, node_id: int, device: str) -> bool:
        node = self._live(conn, user_id, node_id)
        if node.parent is None:
            raise InvalidMoveError("the root directory cannot be deleted")
        now = time.time_ns()
        if node.kind == "dir":
            if self._has_children(conn, node_id):
                raise NotEmptyError(f"directory {node_id} is not empty")
            conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            self._dir_changed(conn, node.parent, now, -1)
            self._log(conn, user_id, "delete", node, device, now)
            return False
        self._trash(conn, node, now)
        if node.kind == "file":
            self._add_logical(conn, user_id, -node.size)
        self._dir_changed(conn, node.parent, now)
        self._log(conn, user_id, "delete", node, device, now)
        return True

    async def delete(self, user_id: int, node_id: int, device: str) -> bool:
        return await self._write(self._delete, user_id, node_id, device)

    def _batch(
        self, conn: sqlite3.Connection, user_id: int, ops: list[BatchOp], device: str
    ) -> list[BatchResult]:
        """Every op in its own savepoint inside the caller's transaction (one write, one COMMIT).

        The per-op bodies are the single methods' own (`_create`, `_commit`, ...), so a batch op
        and its single route cannot drift apart.
        """
        labels: dict[str, int | None] = {}  # label -> node id, or None if its create failed

        def ref(value: NodeRef) -> int:
            if isinstance(value, int):
                return value
            node_id = labels[value]  # the route checked that it is defined before this op
            if node_id is None:
                raise DependencyFailedError(
                    f"the create labelled {value!r} failed, so this op was not applied",
                    label=value,
                )
            return node_id

        results: list[BatchResult] = []
        for op in ops:
            conn.execute("SAVEPOINT batch_op")
            try:
                result = self._batch_op(conn, user_id, op, ref, device)
            except ServerError as exc:
                conn.execute("ROLLBACK TO batch_op")
                conn.execute("RELEASE batch_op")
                results.append(BatchResult(op.op, error=exc))
                if isinstance(op, CreateOp) and op.label is not None:
                    labels[op.label] = None
                continue
            conn.execute("RELEASE batch_op")
            results.append(result)
            if isinstance(op, CreateOp) and op.label is not None:
                assert result.node is not None
                labels[op.label] = result.node.node_id
        return results

    def _batch_op(
        self,
        conn: sqlite3.Connection,
        user_id: int,
        op: BatchOp,
        ref: Callable[[NodeRef], int],
        device: str,
    ) -> BatchResult:
        if isinstance(op, CreateOp):
            node = self._create(
                conn,
                user_id,
                ref(op.parent),
                op.name,
                op.kind,
                op.mode,
                op.mtime_ns,
                op.target,
                op.size,
                op.blocks,
                device,
                op.atime_ns,
            )
            return BatchResult(op.op, node=node)
        if isinstance(op, CommitOp):
            node = self._commit(
                conn,
                user_id,
                ref(op.node),
                op.base_version,
                op.size,
                op.blocks,
                op.mtime_ns,
                device,
            )
            return BatchResult(op.op, node=node)
        if isinstance(op, SetattrOp):
            node = self._setattr(
                conn, user_id, ref(op.node), op.mode, op.mtime_ns, device, op.atime_ns
            )
            return BatchResult(op.op, node=node)
        if isinstance(op, MoveOp):
            node_id = ref(op.node)
            moved, replaced = self._move(
                conn, user_id, node_id, ref(op.parent), op.name, op.replace, device
            )
            return BatchResult(op.op, node=moved, replaced=replaced)
        assert isinstance(op, DeleteOp)
        return BatchResult(op.op, trashed=self._delete(conn, user_id, ref(op.node), device))

    async def apply_batch(self, user_id: int, ops: list[BatchOp], device: str) -> list[BatchResult]:
        return await self._write(self._batch, user_id, ops, device)

    # ---- history and trash ---------------------------------------------------------------
    async def list_versions(self, user_id: int, node_id: int) -> list[VersionInfo]:
        def run(conn: sqlite3.Connection) -> list[VersionInfo]:
            node = self._live(conn, user_id, node_id)
            if node.kind == "dir":
                raise IsDirError(f"node {node_id} is a directory; it has no versions")
            rows = conn.execute(
                "SELECT version, size, mtime_ns, committed_at_ns, device FROM versions "
                "WHERE node_id = ? ORDER BY version DESC",
                (node_id,),
            )
            return [VersionInfo(*r) for r in rows]

        return await self._read(run)

    @staticmethod
    def _version(conn: sqlite3.Connection, node_id: int, version: int) -> VersionInfo:
        row = conn.execute(
            "SELECT version, size, mtime_ns, committed_at_ns, device, blocks FROM versions "
            "WHERE node_id = ? AND version = ?",
            (node_id, version),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"node {node_id} has no version {version}")
        return VersionInfo(row[0], row[1], row[2], row[3], row[4], blocks=_load_blocks(row[5]))

    async def get_version(self, user_id: int, node_id: int, version: int) -> VersionInfo:
        def run(conn: sqlite3.Connection) -> VersionInfo:
            self._live(conn, user_id, node_id)
            return self._version(conn, node_id, version)

        return await self._read(run)

    async def restore_version(self, user_id: int, node_id: int, version: int, device: str) -> Node:
        def run(conn: sqlite3.Connection) -> Node:
            node = self._live(conn, user_id, node_id)
            self._require_file(node)
            old = self._version(conn, node_id, version)
            assert old.blocks is not None
            self._check_blocks(conn, user_id, old.blocks)
            now = time.time_ns()
            return self._new_version(conn, user_id, node, old.size, old.blocks, now, device, now)

        return await self._write(run)

    async def list_trash(self, user_id: int) -> list[Node]:
        def run(conn: sqlite3.Connection) -> list[Node]:
            rows = conn.execute(
                f"SELECT {NODE_COLS} FROM nodes WHERE user_id = ? AND trashed_at_ns IS NOT NULL "
                "ORDER BY trashed_at_ns DESC, node_id DESC",
                (user_id,),
            )
            return [_node(r) for r in rows]

        return await self._read(run)

    async def restore_trash(
        self, user_id: int, node_id: int, parent: int | None, name: str | None, device: str
    ) -> Node:
        def run(conn: sqlite3.Connection) -> Node:
            row = conn.execute(
                f"SELECT {NODE_COLS} FROM nodes "
                "WHERE node_id = ? AND user_id = ? AND trashed_at_ns IS NOT NULL",
                (node_id, user_id),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"node {node_id} is not in the trash")
            node = _node(row)
            dest_id = node.original_parent if parent is None else parent
            dest_name = node.name if name is None else name
            if dest_id is None:
                raise NotFoundError("the original parent is unknown; give 'parent'")
            try:
                dest = self._live(conn, user_id, dest_id)
            except NotFoundError:
                raise NotFoundError(
                    f"parent directory {dest_id} no longer exists; give another 'parent'"
                ) from None
            if dest.kind != "dir":
                raise NotDirError(f"parent {dest_id} is not a directory")
            existing = self._child(conn, dest_id, dest_name)
            if existing is not None:
                raise ExistsError(
                    f"{dest_name!r} already exists in directory {dest_id}", node=existing.to_json()
                )
            if node.kind == "file":
                self._check_quota(conn, user_id, node.size)
                self._add_logical(conn, user_id, node.size)
            now = time.time_ns()
            row = conn.execute(
                "UPDATE nodes SET parent = ?, name = ?, ctime_ns = ?, trashed_at_ns = NULL, "
                f"original_parent = NULL, original_path = NULL WHERE node_id = ? "
                f"RETURNING {NODE_COLS}",
                (dest_id, dest_name, now, node_id),
            ).fetchone()
            restored = _node(row)
            self._dir_changed(conn, dest_id, now, 1 if node.kind == "dir" else 0)
            self._log(conn, user_id, "restore", restored, device, now)
            return restored

        return await self._write(run)

    async def purge(self, retention_ns: int) -> tuple[int, int]:
        # In batches of PURGE_BATCH rows, each its own write, so a large purge never holds the
        # writer (and with it every user's commit) for long. Each batch is consistent on its own.
        cutoff = time.time_ns() - retention_ns

        def old_versions(conn: sqlite3.Connection) -> int:
            return self._drop_versions(
                conn,
                "rowid IN (SELECT rowid FROM versions WHERE superseded_at_ns IS NOT NULL "
                "AND superseded_at_ns < ? LIMIT ?)",
                (cutoff, PURGE_BATCH),
            )

        def old_trash(conn: sqlite3.Connection) -> tuple[int, int]:
            trashed = [
                r[0]
                for r in conn.execute(
                    "SELECT node_id FROM nodes WHERE trashed_at_ns IS NOT NULL "
                    "AND trashed_at_ns < ? LIMIT ?",
                    (cutoff, max(1, PURGE_BATCH // 10)),
                )
            ]
            versions = 0
            for node_id in trashed:
                versions += self._drop_versions(conn, "node_id = ?", (node_id,))
                conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            return versions, len(trashed)

        versions = nodes = 0
        while n := await self._write(old_versions):
            versions += n
        while True:
            v, t = await self._write(old_trash)
            versions, nodes = versions + v, nodes + t
            if not t:
                return versions, nodes

    # ---- change log ----------------------------------------------------------------------
    async def changes(self, user_id: int, cursor: int | None, limit: int) -> ChangePage:
        def run(conn: sqlite3.Connection) -> ChangePage:
            last_seq, floor = conn.execute(
                "SELECT last_seq, log_floor FROM users WHERE user_id = ?", (user_id,)
            ).fetchone()
            if cursor is None:
                return ChangePage([], last_seq, False)
            if cursor < floor or cursor > last_seq:
                raise CursorExpiredError(
                    f"cursor {cursor} is outside the change log ({floor + 1}..{last_seq}); "
                    "rescan and continue from 'latest'",
                    oldest=floor + 1,
                    latest=last_seq,
                )
            rows = conn.execute(
                f"SELECT {CHANGE_COLS} FROM changes WHERE user_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (user_id, cursor, limit + 1),
            ).fetchall()
            changes = [Change(*r) for r in rows[:limit]]
            return ChangePage(changes, changes[-1].seq if changes else cursor, len(rows) > limit)

        return await self._read(run)

    async def compact_log(self, keep_last: int | None, older_than_ns: int | None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            dropped = 0
            users = conn.execute("SELECT user_id, last_seq, log_floor FROM users").fetchall()
            for user_id, last_seq, floor in users:
                new_floor = floor
                if keep_last is not None:
                    new_floor = max(new_floor, last_seq - keep_last)
                if older_than_ns is not None:
                    cutoff = time.time_ns() - older_than_ns
                    row = conn.execute(
                        "SELECT MAX(seq) FROM changes WHERE user_id = ? AND time_ns < ?",
                        (user_id, cutoff),
                    ).fetchone()
                    if row[0] is not None:
                        new_floor = max(new_floor, row[0])
                if new_floor > floor:
                    dropped += conn.execute(
                        "DELETE FROM changes WHERE user_id = ? AND seq <= ?", (user_id, new_floor)
                    ).rowcount
                    conn.execute(
                        "UPDATE users SET log_floor = ? WHERE user_id = ?", (new_floor, user_id)
                    )
            return dropped

        return await self._write(run)

    # ---- maintenance ---------------------------------------------------------------------
    async def collect_garbage(
        self, uploaded_before_ns: int, limit: int = 1000
    ) -> list[tuple[str, int]]:
        def run(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            rows = conn.execute(
                "SELECT block_id, size FROM blocks WHERE refcount = 0 AND uploaded_at_ns < ? "
                "LIMIT ?",
                (uploaded_before_ns, limit),
            ).fetchall()
            conn.executemany("DELETE FROM availability WHERE block_id = ?", [(r[0],) for r in rows])
            conn.executemany("DELETE FROM blocks WHERE block_id = ?", [(r[0],) for r in rows])
            return [(r[0], r[1]) for r in rows]

        return await self._write(run)

    async def all_blocks(self) -> list[tuple[str, int, int]]:
        def run(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
            return [
                (r[0], r[1], r[2])
                for r in conn.execute("SELECT block_id, size, refcount FROM blocks")
            ]

        return await self._read(run)

    async def check(self, repair: bool, lost_blocks: set[str]) -> FsckReport:
        run = functools.partial(self._check, repair=repair, lost_blocks=lost_blocks)
        return await (self._write(run) if repair else self._read(run))

    def _check(self, conn: sqlite3.Connection, repair: bool, lost_blocks: set[str]) -> FsckReport:
        report = FsckReport()
        block_rows = {
            r[0]: (r[1], r[2]) for r in conn.execute("SELECT block_id, size, refcount FROM blocks")
        }
        nodes = {
            r[0]: r
            for r in conn.execute(
                "SELECT node_id, user_id, parent, kind, size, version, trashed_at_ns, subdirs "
                "FROM nodes"
            )
        }
        users = {
            r[0]: r
            for r in conn.execute("SELECT user_id, name, root, logical_bytes, last_seq FROM users")
        }
        expected_refs: Counter[str] = Counter()
        needed_availability: set[tuple[int, str]] = set()
        current_seen: set[int] = set()
        for node_id, version, size, text in conn.execute(
            "SELECT node_id, version, size, blocks FROM versions"
        ):
            where = f"node {node_id} version {version}"
            node = nodes.get(node_id)
            if node is None:
                report.errors.append(f"{where}: belongs to no node")
                continue
            try:
                blocks = _load_blocks(text)
            except (ValueError, TypeError):
                report.errors.append(f"{where}: block list is not valid JSON")
                continue
            total = 0
            for block_id, length in blocks:
                total += length
                expected_refs[block_id] += 1
                needed_availability.add((node[1], block_id))
                row = block_rows.get(block_id)
                if row is None:
                    report.errors.append(f"{where}: references unknown block {block_id}")
                elif row[0] != length:
                    report.errors.append(
                        f"{where}: block {block_id} listed as {length} bytes, stored {row[0]}"
                    )
            if total != size:
                report.errors.append(f"{where}: block lengths add up to {total}, size is {size}")
            if node[5] == version:
                current_seen.add(node_id)
                if node[4] != size:
                    report.errors.append(f"{where}: node size {node[4]} != version size {size}")
            elif version > node[5]:
                report.errors.append(f"{where}: newer than the node's version {node[5]}")
        # Reference counts.
        for block_id, (_, refcount) in block_rows.items():
            want = expected_refs.get(block_id, 0)
            if refcount != want:
                msg = f"block {block_id}: refcount {refcount}, expected {want}"
                if repair:
                    conn.execute(
                        "UPDATE blocks SET refcount = ? WHERE block_id = ?", (want, block_id)
                    )
                    report.repaired.append(msg)
                else:
                    report.errors.append(msg)
        # Nodes: tree shape and one current version per file.
        logical: Counter[int] = Counter()
        child_dirs: Counter[int] = Counter()
        for node_id, user_id, parent, kind, size, _version, trashed, _subdirs in nodes.values():
            if user_id not in users:
                report.errors.append(f"node {node_id}: belongs to no user")
                continue
            if kind == "file":
                if node_id not in current_seen:
                    report.errors.append(f"node {node_id}: current version row missing")
                if trashed is None:
                    logical[user_id] += size
            if trashed is not None:
                continue
            if parent is None:
                if users[user_id][2] != node_id:
                    report.errors.append(f"node {node_id}: live node without a parent")
                continue
            up = nodes.get(parent)
            if up is None or up[6] is not None or up[3] != "dir" or up[1] != user_id:
                report.errors.append(f"node {node_id}: parent {parent} is not a live directory")
            if kind == "dir":
                child_dirs[parent] += 1
        # Directory link counts: `subdirs` is maintained by every write; recount it here.
        for node_id, _user, _parent, kind, _size, _version, trashed, subdirs in nodes.values():
            if kind != "dir" or trashed is not None or subdirs == child_dirs[node_id]:
                continue
            msg = f"directory {node_id}: subdirs {subdirs}, expected {child_dirs[node_id]}"
            if repair:
                conn.execute(
                    "UPDATE nodes SET subdirs = ? WHERE node_id = ?", (child_dirs[node_id], node_id)
                )
                report.repaired.append(msg)
            else:
                report.errors.append(msg)
        for user_id, name, root, logical_bytes, last_seq in users.values():
            root_row = nodes.get(root)
            if root_row is None or root_row[3] != "dir":
                report.errors.append(f"user {name!r}: root {root} is missing")
            if logical_bytes != logical[user_id]:
                msg = f"user {name!r}: logical_bytes {logical_bytes}, expected {logical[user_id]}"
                if repair:
                    conn.execute(
                        "UPDATE users SET logical_bytes = ? WHERE user_id = ?",
                        (logical[user_id], user_id),
                    )
                    report.repaired.append(msg)
                else:
                    report.errors.append(msg)
            max_seq = conn.execute(
                "SELECT MAX(seq) FROM changes WHERE user_id = ?", (user_id,)
            ).fetchone()[0]
            if max_seq is not None and max_seq > last_seq:
                report.errors.append(f"user {name!r}: change {max_seq} beyond last_seq {last_seq}")
        # Availability: every block a user's versions reference must stay available to them.
        have = set(conn.execute("SELECT user_id, block_id FROM availability").fetchall())
        for user_id, block_id in sorted(needed_availability - have):
            if block_id not in block_rows or block_id in lost_blocks:
                continue  # reported above or as a lost block
            msg = f"user {user_id}: referenced block {block_id} not marked available"
            if repair:
                conn.execute("INSERT INTO availability VALUES (?, ?)", (user_id, block_id))
                report.repaired.append(msg)
            else:
                report.errors.append(msg)
        if repair and lost_blocks:
            unreferenced = [b for b in sorted(lost_blocks) if expected_refs.get(b, 0) == 0]
            for block_id in unreferenced:
                conn.execute("DELETE FROM blocks WHERE block_id = ?", (block_id,))
                report.repaired.append(f"dropped the row of unreferenced lost block {block_id}")
            for part in _chunks(sorted(lost_blocks)):
                marks = ",".join("?" * len(part))
                n = conn.execute(
                    f"DELETE FROM availability WHERE block_id IN ({marks})", part
                ).rowcount
                if n:
                    report.repaired.append(
                        f"dropped {n} availability row(s) of {len(part)} lost block(s); "
                        "clients will upload them again"
                    )
        return report
