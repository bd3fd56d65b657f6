"""The client's block cache seen from outside (issue 3, "Reads"): reads fetch only the blocks they
need and the cache survives a remount (counted in the server's access log), a 1 GiB file
through a 64 MiB cache, the cache directory stays within its budget, and a corrupted cached block
never comes back as wrong bytes (refetched, or EIO).

The corruption test opens the client's LMDB environment with the `lmdb` module while the client
is stopped and flips bytes in every stored value that holds the file's data (found by content, so
the test does not depend on the cache's key layout).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import psutil
import pytest

from tests.fuse.blackbox import MiB, ServerView, det_bytes, read_file, wait_for, write_file

pytestmark = pytest.mark.fuse

CACHE_SIZE = 64 * MiB
# LMDB keeps freed pages on its free list and has per-page overhead; metadata and the log
# need a little room too. The budget is about data; this is the room allowed around it.
CACHE_SLACK = 32 * MiB


def du_bytes(path: Path) -> int:
    """Disk space really used under `path` (allocated blocks, so sparse files count as used)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class Sampler:
    """Samples cache-dir usage and client RSS in a thread while a big transfer runs."""

    def __init__(self, mount: Any) -> None:
        self.mount = mount
        self.max_du = 0
        self.max_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        try:
            proc = psutil.Process(self.mount.pid)
            return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except (psutil.Error, AssertionError):
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.max_du = max(self.max_du, du_bytes(self.mount.cache_dir))
            self.max_rss = max(self.max_rss, self._rss())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_1gib_through_64mib_cache(mount_factory: Any, alice: Any) -> None:
    m = mount_factory(alice, device="small-cache", cache_size="64M")
    total = 1024 * MiB
    rnd = random.Random(20261121)
    path = Path(m.path) / "big.bin"
    want = hashlib.sha256()
    t0 = time.monotonic()
    with Sampler(m) as during_write, open(path, "wb") as f:
        for _ in range(total // (4 * MiB)):
            chunk = rnd.randbytes(4 * MiB)
            want.update(chunk)
            f.write(chunk)
    write_s = time.monotonic() - t0
    node = ServerView(m.server, alice).node("big.bin")
    assert node["size"] == total, f"server size after close: {node['size']}"
    m.remount()  # empty page cache: every byte now comes through the client
    t0 = time.monotonic()
    got = hashlib.sha256()
    with Sampler(m) as during_read, open(path, "rb") as f:
        while buf := f.read(4 * MiB):
            got.update(buf)
    read_s = time.monotonic() - t0
    assert got.hexdigest() == want.hexdigest(), "1 GiB read back differs from what was written"
    limit = CACHE_SIZE + CACHE_SLACK
    for what, s in (("write", during_write), ("read", during_read)):
        assert s.max_du < limit, (
            f"cache dir reached {s.max_du / MiB:.0f} MiB during the {what} "
            f"(--cache-size 64M, allowed {limit / MiB:.0f} MiB)"
        )
        assert 0 < s.max_rss < 512 * MiB, (
            f"client RSS peaked at {s.max_rss / MiB:.0f} MiB during the {what} of 1 GiB"
        )
    final = du_bytes(m.cache_dir)
    assert final < limit, f"cache dir holds {final / MiB:.0f} MiB after the read"
    print(
        f"1 GiB: write+close {write_s:.1f}s, cold read {read_s:.1f}s, "
        f"max cache dir {max(during_write.max_du, during_read.max_du) / MiB:.0f} MiB"
    )


def _lmdb_envs(cache_dir: Path) -> list[Path]:
    return sorted({p.parent for p in cache_dir.rglob("data.mdb")})


def _corrupt_values_holding(env_dir: Path, needles: list[bytes]) -> int:
    """Flip one byte inside every value (in every named db) that contains one of `needles`."""
    env = lmdb.open(str(env_dir), max_dbs=128, readonly=False, lock=True, map_size=1 << 40)
    corrupted = 0
    try:
        with env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
        dbs: list[Any] = [None]  # None: the main (unnamed) db
        for name in names:
            try:
                dbs.append(env.open_db(name, create=False))
            except lmdb.Error:
                pass  # an ordinary key of the main db, not a named db
        for db in dbs:
            with env.begin(write=True, db=db) as txn:
                for key, value in list(txn.cursor(db=db)):
                    for needle in needles:
                        at = value.find(needle)
                        if at >= 0:
                            bad = bytearray(value)
                            bad[at + 7] ^= 0xFF
                            txn.put(key, bytes(bad), db=db)
                            corrupted += 1
                            break
    finally:
        env.close()
    return corrupted


def test_corrupted_cached_block_is_detected(mount: Any) -> None:
    data = det_bytes("corrupt", 6 * MiB + 12345)
    path = Path(mount.path) / "victim.bin"
    write_file(path, data)
    mount.remount()
    assert read_file(path) == data  # now certainly in the block cache
    mount.stop()
    envs = _lmdb_envs(mount.cache_dir)
    assert envs, f"no LMDB environment (data.mdb) under the cache dir {mount.cache_dir}"
    needles = [data[off : off + 64] for off in range(0, len(data) - 64, 256 * 1024)]
    corrupted = sum(_corrupt_values_holding(e, needles) for e in envs)
    assert corrupted > 0, "found no cached value holding the file's bytes (is the cache empty?)"
    mount.start()
    try:
        got = read_file(path)
    except OSError as exc:
        assert exc.errno == errno.EIO, f"a corrupt block must give EIO or good data, got {exc!r}"
    else:
        assert len(got) == len(data), f"size {len(got)} != {len(data)}"
        bad = next((i for i in range(len(data)) if got[i] != data[i]), None)
        assert bad is None, f"wrong bytes served from a corrupted cache block at offset {bad}"
    # whatever the first read did, the data is intact on the server and reads again correctly
    assert ServerView(mount.server, mount.user).content("victim.bin") == data
    assert read_file(path) == data, "after refetch the file must read correctly"


BLOCK_GET = re.compile(rb'"GET /v1/blocks/([0-9a-f]{64}) HTTP/1\.[01]" 20[06] ')


def block_bytes_served(server: Any, since: int, sizes: dict[str, int]) -> int:
    """Bytes of the file's blocks (`sizes`: block id -> length) the server sent since log offset
    `since`, from its access log (which logs requests, not body sizes, for streamed blocks)."""
    ids = [m.group(1).decode() for m in BLOCK_GET.finditer(server.log_path.read_bytes()[since:])]
    unknown = [b for b in ids if b not in sizes]
    assert not unknown, f"the reader fetched blocks that are not the file's: {unknown[:3]}"
    return sum(sizes[b] for b in ids)


def test_random_read_is_lazy_and_cache_survives_remount(mount_factory: Any, alice: Any) -> None:
    writer = mount_factory(alice, device="writer")
    data = det_bytes("lazy", 64 * MiB)
    write_file(Path(writer.path) / "big.bin", data)
    reader = mount_factory(alice, device="reader")  # its own, empty cache
    server = reader.server
    view = ServerView(server, alice)
    sizes = dict(map(tuple, view.get(f"/v1/nodes/{view.node('big.bin')['id']}?blocks=1")["blocks"]))
    since = server.log_path.stat().st_size
    off = 40 * MiB + 123
    with open(Path(reader.path) / "big.bin", "rb") as f:
        f.seek(off)
        assert f.read(100) == data[off : off + 100], "random read returned wrong bytes"
    fetched = wait_for(lambda: block_bytes_served(server, since, sizes), 5, "the read's block GETs")
    assert fetched <= 12 * MiB, (
        f"a 100-byte read of a 64 MiB file fetched {fetched / MiB:.1f} MiB (lazy reads expected)"
    )
    reader.remount()
    since = server.log_path.stat().st_size
    with open(Path(reader.path) / "big.bin", "rb") as f:
        f.seek(off)
        assert f.read(100) == data[off : off + 100]
    assert block_bytes_served(server, since, sizes) == 0, "the cache did not survive the remount"
