"""The local LMDB store of one mount (layer 1, synchronous): block cache with a byte budget and LRU
eviction of clean blocks, node metadata, the durable commit queue, recent conflicts and small state.

Key layout (docs/client.md, "Cache key layout"):
    blocks     raw 32-byte BLAKE3 digest + u32be segment -> 65,520 bytes of the block
    binfo      raw digest                  -> u64 size, u8 state (0 clean 1 dirty), u64 tick
    nodes      u64be node id                        -> node JSON (metadata cache)
    entries    u64be parent id + UTF-8 name         -> u64be child id
    queue      u64be node id                        -> pending commit JSON (survives restarts)
    conflicts  u64be time_ns                        -> conflict JSON
    state      ASCII key                            -> JSON value (counters, change cursor)
    listed     u64be directory id                   -> b"" (every child is in `entries`; kept
                                                       complete by the change feed, docs/sync.md)

Invariants: `used_bytes` is the sum of sizes of stored blocks; dirty blocks (not yet on the server)
are never evicted; every write is one transaction that never spans an await (there are none here).
"""

from __future__ import annotations

import json
import logging
import struct
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lmdb

from cloudfs import errors
from cloudfs.chunking import block_id_of

log = logging.getLogger(__name__)

CLEAN = 0
DIRTY = 1
_INFO = struct.Struct(">QBQ")
_SEG = struct.Struct(">I")
# Blocks are stored in segments whose LMDB overflow pages fill exactly 16 pages (64 KiB minus
# the 16-byte page header): freed segments are reused by any new block, so the data file stays
# close to the budget instead of fragmenting around variable-size blocks.
SEGMENT_BYTES = 16 * 4096 - 16
LAYOUT_VERSION = 2
OVERHEAD_DIVISOR = 4  # a quarter of the budget is left for LMDB's free pages and metadata
_U64 = struct.Struct(">Q")


def _key(block_id: str) -> bytes:
    return bytes.fromhex(block_id)


def _u64(n: int) -> bytes:
    return _U64.pack(n)


class LocalCache:
    """One LMDB environment in `path`. Not thread-safe for writes; call from the event loop
    (or from one worker thread at a time)."""

    def __init__(self, path: Path, limit_bytes: int) -> None:
        self.path = Path(path)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.limit_bytes = limit_bytes
        map_size = max(limit_bytes + limit_bytes // 2 + (512 << 20), 1 << 30)
        self.env = lmdb.open(
            str(self.path),
            map_size=map_size,
            max_dbs=16,
            sync=False,
            metasync=False,
            writemap=False,
            readahead=True,
            max_readers=256,
            lock=True,
            mode=0o600,  # data.mdb holds the drive's content: private to its user
        )
        self.blocks = self.env.open_db(b"blocks")
        self.binfo = self.env.open_db(b"binfo")
        self.nodes = self.env.open_db(b"nodes")
        self.entries = self.env.open_db(b"entries")
        self.queue = self.env.open_db(b"queue")
        self.conflicts = self.env.open_db(b"conflicts")
        self.state = self.env.open_db(b"state")
        self.listed = self.env.open_db(b"listed")
        self._lru: OrderedDict[str, int] = OrderedDict()  # clean blocks, oldest first
        self._verified: set[str] = set()  # blocks rehashed since this process opened the cache
        self.used_bytes = 0
        self.dirty_bytes = 0
        # bytes of the budget used outside LMDB (staging files), set by the filesystem
        self.reserved_bytes = 0
        self._tick = 0
        self._check_layout()
        self._load()

    # ---- lifecycle -------------------------------------------------------------------------
    def _check_layout(self) -> None:
        """A cache written with another key layout: forget its clean blocks (refetchable)."""
        if self.get_state("layout") == LAYOUT_VERSION:
            return
        with self.env.begin(write=True) as txn:
            if txn.stat(self.binfo)["entries"]:
                log.warning("cache layout changed; dropping cached blocks")
                txn.drop(self.blocks, delete=False)
                txn.drop(self.binfo, delete=False)
        self.set_state("layout", LAYOUT_VERSION)

    def _load(self) -> None:
        clean: list[tuple[int, str, int]] = []
        with self.env.begin(db=self.binfo) as txn:
            for key, val in txn.cursor():
                size, state, tick = _INFO.unpack(val)
                self.used_bytes += size
                self._tick = max(self._tick, tick)
                if state == DIRTY:
                    self.dirty_bytes += size
                else:
                    clean.append((tick, bytes(key).hex(), size))
        clean.sort()
        for _, block_id, size in clean:
            self._lru[block_id] = size

    def close(self) -> None:
        self.persist_lru()
        self.env.sync(True)
        self.env.close()

    def sync(self) -> None:
        """Make everything committed so far durable (fsync). Called before acknowledging a
        queued commit to the kernel."""
        self.env.sync(True)

    def persist_lru(self) -> None:
        """Write the in-memory access order back as ticks, so LRU survives a remount."""
        with self.env.begin(write=True, db=self.binfo) as txn:
            for block_id, size in self._lru.items():
                self._tick += 1
                txn.put(_key(block_id), _INFO.pack(size, CLEAN, self._tick))

    # ---- blocks ------------------------------------------------------------------------------
    def has_block(self, block_id: str) -> bool:
        with self.env.begin(db=self.binfo) as txn:
            return txn.get(_key(block_id)) is not None

    def _block_size(self, txn: lmdb.Transaction, key: bytes) -> int | None:
        val = txn.get(key, db=self.binfo)
        return None if val is None else _INFO.unpack(val)[0]

    def get_block(
        self, block_id: str, start: int = 0, end: int | None = None
    ) -> bytes | bytearray | None:
        """Bytes `[start:end)` of a cached block, or None if absent. Only the segments covering
        the range are read; the first access in this process rehashes the whole block, and a
        block that fails is dropped (the caller refetches)."""
        key = _key(block_id)
        corrupt = False
        with self.env.begin(db=self.blocks, buffers=True) as txn:
            size = self._block_size(txn, key)
            if size is None:
                return None
            stop = size if end is None else min(end, size)
            if block_id not in self._verified:
                whole = self._read_segments(txn, key, 0, size)
                if whole is None or block_id_of(whole) != block_id:
                    corrupt = True
                    data = None
                else:
                    self._verified.add(block_id)
                    data = whole[start:stop] if (start or stop != size) else whole
            else:
                data = self._read_segments(txn, key, start, stop)
                corrupt = data is None
        if corrupt:
            log.warning("cached block %s failed verification; dropping it", block_id)
            self.drop_blocks([block_id], force=True)
            return None
        if block_id in self._lru:
            self._lru.move_to_end(block_id)
        return data

    def _read_segments(
        self, txn: lmdb.Transaction, key: bytes, start: int, stop: int
    ) -> bytes | bytearray | None:
        """Bytes `[start, stop)` of a stored block, copied once out of LMDB's pages."""
        if stop <= start:
            return b""
        first, last = start // SEGMENT_BYTES, (stop - 1) // SEGMENT_BYTES
        if first == last:
            buf = txn.get(key + _SEG.pack(first), db=self.blocks)
            if buf is None:
                return None
            base = first * SEGMENT_BYTES
            return bytes(buf[start - base : stop - base])
        out = bytearray(stop - start)
        pos = 0
        for seg in range(first, last + 1):
            buf = txn.get(key + _SEG.pack(seg), db=self.blocks)
            if buf is None:
                return None
            base = seg * SEGMENT_BYTES
            piece = buf[max(start - base, 0) : min(stop - base, len(buf))]
            out[pos : pos + len(piece)] = piece
            pos += len(piece)
        return out if pos == len(out) else None

    def _put_segments(
        self, txn: lmdb.Transaction, key: bytes, data: bytes | bytearray | memoryview
    ) -> None:
        view = memoryview(data)
        for seg, pos in enumerate(range(0, max(len(view), 1), SEGMENT_BYTES)):
            txn.put(key + _SEG.pack(seg), view[pos : pos + SEGMENT_BYTES], db=self.blocks)

    def _delete_segments(self, txn: lmdb.Transaction, key: bytes, size: int) -> None:
        for seg in range(max(1, -(-size // SEGMENT_BYTES))):
            txn.delete(key + _SEG.pack(seg), db=self.blocks)

    def put_clean(self, block_id: str, data: bytes | bytearray | memoryview) -> bool:
        """Cache a block the server has. Evicts LRU clean blocks to stay within the budget;
        returns False (and stores nothing) if dirty data leaves no room."""
        size = len(data)
        if block_id in self._lru or size > self.block_budget_bytes:
            return block_id in self._lru
        if not self._make_room(size):
            return False
        key = _key(block_id)
        with self.env.begin(write=True) as txn:
            if txn.get(key, db=self.binfo) is not None:
                return True
            self._tick += 1
            self._put_segments(txn, key, data)
            txn.put(key, _INFO.pack(size, CLEAN, self._tick), db=self.binfo)
        self.used_bytes += size
        self._lru[block_id] = size
        self._verified.add(block_id)
        return True

    def put_dirty(self, items: Iterable[tuple[str, bytes | bytearray | memoryview]]) -> int:
        """Store blocks that are not yet on the server, pinned until `mark_clean`. One transaction.
        A block already cached clean stays clean. Returns the bytes newly stored.

        Raises:
            QuotaExceededError: dirty data alone would exceed the cache budget.
        """
        new: dict[str, bytes | bytearray | memoryview] = {}
        with self.env.begin(db=self.binfo) as txn:
            for block_id, data in items:
                if block_id not in new and txn.get(_key(block_id)) is None:
                    new[block_id] = data
        need = sum(len(d) for d in new.values())
        if not need:
            return 0
        if not self._make_room(need):
            raise errors.QuotaExceededError(
                f"local cache full: {self.dirty_bytes} bytes not yet uploaded, "
                f"limit {self.limit_bytes}"
            )
        with self.env.begin(write=True) as txn:
            for block_id, data in new.items():
                key = _key(block_id)
                self._tick += 1
                self._put_segments(txn, key, data)
                txn.put(key, _INFO.pack(len(data), DIRTY, self._tick), db=self.binfo)
        self.used_bytes += need
        self.dirty_bytes += need
        self._verified.update(new)
        return need

    def mark_clean(self, block_ids: Iterable[str]) -> None:
        """The server has these blocks now: make them evictable (one transaction)."""
        changed: list[tuple[str, int]] = []
        with self.env.begin(write=True, db=self.binfo) as txn:
            for block_id in set(block_ids):
                key = _key(block_id)
                val = txn.get(key)
                if val is None:
                    continue
                size, state, tick = _INFO.unpack(val)
                if state == DIRTY:
                    txn.put(key, _INFO.pack(size, CLEAN, tick))
                    changed.append((block_id, size))
        for block_id, size in changed:
            self.dirty_bytes -= size
            self._lru[block_id] = size

    def block_size(self, block_id: str) -> int | None:
        with self.env.begin(db=self.binfo) as txn:
            val = txn.get(_key(block_id))
        return None if val is None else _INFO.unpack(val)[0]

    def is_dirty(self, block_id: str) -> bool:
        with self.env.begin(db=self.binfo) as txn:
            val = txn.get(_key(block_id))
        return val is not None and _INFO.unpack(val)[1] == DIRTY

    def dirty_block_ids(self) -> list[str]:
        out = []
        with self.env.begin(db=self.binfo) as txn:
            for key, val in txn.cursor():
                if _INFO.unpack(val)[1] == DIRTY:
                    out.append(bytes(key).hex())
        return out

    def drop_blocks(self, block_ids: Iterable[str], force: bool = False) -> None:
        """Remove blocks (clean ones; dirty ones only with `force`, e.g. when corrupt or
        no longer referenced by anything pending)."""
        with self.env.begin(write=True) as txn:
            for block_id in block_ids:
                key = _key(block_id)
                val = txn.get(key, db=self.binfo)
                if val is None:
                    continue
                size, state, _ = _INFO.unpack(val)
                if state == DIRTY and not force:
                    continue
                txn.delete(key, db=self.binfo)
                self._delete_segments(txn, key, size)
                self.used_bytes -= size
                if state == DIRTY:
                    self.dirty_bytes -= size
                self._lru.pop(block_id, None)
                self._verified.discard(block_id)

    def evict_all_clean(self) -> int:
        """Drop every clean block (tests, `cloudfs` maintenance). Returns the count."""
        ids = list(self._lru)
        self.drop_blocks(ids)
        return len(ids)

    @property
    def block_budget_bytes(self) -> int:
        """What block data may occupy: the limit, minus staging, minus room for LMDB's own
        overhead (free pages it keeps for snapshots, page headers, metadata)."""
        return self.limit_bytes - self.limit_bytes // OVERHEAD_DIVISOR - self.reserved_bytes

    def _make_room(self, size: int) -> bool:
        budget = self.block_budget_bytes
        if self.used_bytes + size <= budget:
            return True
        victims: list[str] = []
        freed = 0
        for block_id, bsize in self._lru.items():
            if self.used_bytes - freed + size <= budget:
                break
            victims.append(block_id)
            freed += bsize
        if self.used_bytes - freed + size > budget:
            if victims:
                self.drop_blocks(victims)
            return False
        self.drop_blocks(victims)
        return True

    def verify(self) -> list[str]:
        """Ids of cached blocks that do not rehash to their key (empty when healthy)."""
        bad = []
        with self.env.begin(buffers=True) as txn:
            for raw_key, val in txn.cursor(db=self.binfo):
                key = bytes(raw_key)
                size = _INFO.unpack(val)[0]
                data = self._read_segments(txn, key, 0, size)
                if data is None or block_id_of(data) != key.hex():
                    bad.append(key.hex())
        return bad

    def statistics(self) -> dict[str, int]:
        return {
            "used_bytes": self.used_bytes,
            "dirty_bytes": self.dirty_bytes,
            "limit_bytes": self.limit_bytes,
            "clean_blocks": len(self._lru),
        }

    # ---- metadata ----------------------------------------------------------------------------
    def put_node(self, node_json: dict[str, Any]) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(_u64(node_json["id"]), json.dumps(node_json).encode(), db=self.nodes)
            if node_json.get("parent") is not None:
                txn.put(
                    _u64(node_json["parent"]) + node_json["name"].encode(),
                    _u64(node_json["id"]),
                    db=self.entries,
                )

    def get_node(self, node_id: int) -> dict[str, Any] | None:
        with self.env.begin(db=self.nodes) as txn:
            raw = txn.get(_u64(node_id))
        return None if raw is None else json.loads(raw)

    def get_entry(self, parent_id: int, name: str) -> int | None:
        with self.env.begin(db=self.entries) as txn:
            raw = txn.get(_u64(parent_id) + name.encode())
        return None if raw is None else _U64.unpack(raw)[0]

    def drop_node(self, node_id: int, keep_entry: bool = False) -> None:
        """Forget a node object and (unless `keep_entry`) the name that points to it."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(_u64(node_id), db=self.nodes)
            if raw is not None:
                obj = json.loads(raw)
                if obj.get("parent") is not None and not keep_entry:
                    ekey = _u64(obj["parent"]) + obj["name"].encode()
                    if txn.get(ekey, db=self.entries) == _u64(node_id):
                        txn.delete(ekey, db=self.entries)
                txn.delete(_u64(node_id), db=self.nodes)

    def drop_entry(self, parent_id: int, name: str) -> None:
        with self.env.begin(write=True, db=self.entries) as txn:
            txn.delete(_u64(parent_id) + name.encode())

    def put_entry(self, parent_id: int, name: str, node_id: int) -> None:
        """Record a name whose node object is not cached (yet); readers fetch the node."""
        with self.env.begin(write=True, db=self.entries) as txn:
            txn.put(_u64(parent_id) + name.encode(), _u64(node_id))

    def list_entries(
        self, parent_id: int, after: str | None = None, limit: int = 1000
    ) -> list[tuple[str, int]]:
        """Cached `(name, child id)` of a directory, sorted by UTF-8 bytes, names > `after`."""
        prefix = _u64(parent_id)
        start = prefix + (after.encode() + b"\0" if after is not None else b"")
        out: list[tuple[str, int]] = []
        with self.env.begin(db=self.entries) as txn:
            cur = txn.cursor()
            if not cur.set_range(start):
                return out
            for key, val in cur:
                if not key.startswith(prefix) or len(out) >= limit:
                    break
                out.append((key[8:].decode(), _U64.unpack(val)[0]))
        return out

    def put_listing(self, parent_id: int, nodes: Iterable[dict[str, Any]]) -> None:
        """Store a complete listing of a directory (node objects) and mark it listed, in one
        transaction. Entries already cached are kept (the change feed removes stale ones)."""
        with self.env.begin(write=True) as txn:
            for obj in nodes:
                txn.put(_u64(obj["id"]), json.dumps(obj).encode(), db=self.nodes)
                txn.put(_u64(parent_id) + obj["name"].encode(), _u64(obj["id"]), db=self.entries)
            txn.put(_u64(parent_id), b"", db=self.listed)

    def is_listed(self, dir_id: int) -> bool:
        with self.env.begin(db=self.listed) as txn:
            return txn.get(_u64(dir_id)) is not None

    def drop_listed(self, dir_id: int) -> None:
        with self.env.begin(write=True, db=self.listed) as txn:
            txn.delete(_u64(dir_id))

    def drop_metadata(self) -> int:
        """Forget every cached node, entry and listing (a rescan). Returns the nodes dropped."""
        with self.env.begin(write=True) as txn:
            count = txn.stat(self.nodes)["entries"]
            for db in (self.nodes, self.entries, self.listed):
                txn.drop(db, delete=False)
        return int(count)

    # ---- commit queue ------------------------------------------------------------------------
    def put_queued(self, node_id: int, entry: dict[str, Any]) -> None:
        with self.env.begin(write=True, db=self.queue) as txn:
            txn.put(_u64(node_id), json.dumps(entry).encode())
        self.sync()

    def get_queued(self, node_id: int) -> dict[str, Any] | None:
        with self.env.begin(db=self.queue) as txn:
            raw = txn.get(_u64(node_id))
        return None if raw is None else json.loads(raw)

    def queued(self) -> list[dict[str, Any]]:
        with self.env.begin(db=self.queue) as txn:
            return [json.loads(v) for _, v in txn.cursor()]

    def drop_queued(self, node_id: int, clean_ids: Iterable[str] = ()) -> None:
        """Remove a queue entry and mark its blocks clean, in one transaction."""
        ids = list(clean_ids)
        with self.env.begin(write=True, db=self.queue) as txn:
            txn.delete(_u64(node_id))
        self.mark_clean(ids)

    # ---- conflicts and state -----------------------------------------------------------------
    def add_conflict(self, time_ns: int, record: dict[str, Any]) -> None:
        with self.env.begin(write=True, db=self.conflicts) as txn:
            txn.put(_u64(time_ns), json.dumps(record).encode())

    def recent_conflicts(self, limit: int = 10) -> list[dict[str, Any]]:
        out = []
        with self.env.begin(db=self.conflicts) as txn:
            cur = txn.cursor()
            if cur.last():
                for _, val in cur.iterprev():
                    out.append(json.loads(val))
                    if len(out) >= limit:
                        break
        return out

    def get_state(self, key: str) -> Any:
        with self.env.begin(db=self.state) as txn:
            raw = txn.get(key.encode())
        return None if raw is None else json.loads(raw)

    def set_state(self, key: str, value: Any) -> None:
        with self.env.begin(write=True, db=self.state) as txn:
            txn.put(key.encode(), json.dumps(value).encode())
