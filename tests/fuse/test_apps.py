"""Ordinary programs on the mount (issue 3, "Verified by"): editor-style saves under a concurrent
reader, sqlite3, git, tar, mmap and rsync.

Each test takes its own server + mount (`mount` fixture) because most of them remount.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import mmap
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.fuse.blackbox import MiB, ServerView, det_bytes, read_file, write_file

pytestmark = pytest.mark.fuse


# --- editor-style save ------------------------------------------------------------------------


def _version_bytes(i: int) -> bytes:
    """Save `i`: self-describing (header + payload + checksum), 1 KiB to ~2.6 MiB."""
    size = 1024 + (i * 524_287) % (2 * MiB + 600_000)
    body = b"VERSION %06d LEN %d\n" % (i, size) + det_bytes(f"save-{i}", size)
    return body + b"\nSHA256 " + hashlib.sha256(body).hexdigest().encode() + b"\n"


READER = r"""
import hashlib, json, os, re, sys, time
path, stop = sys.argv[1], sys.argv[2]
reads = missing = 0
torn = []
seen = []
while True:
    done = os.path.exists(stop)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        missing += 1
    else:
        reads += 1
        m = re.match(rb"VERSION (\d{6}) LEN (\d+)\n", data)
        ok = False
        if m:
            body_len = m.end() + int(m.group(2))
            body = data[:body_len]
            tail = b"\nSHA256 " + hashlib.sha256(body).hexdigest().encode() + b"\n"
            ok = data[body_len:] == tail
        if ok:
            v = int(m.group(1))
            if not seen or seen[-1] != v:
                seen.append(v)
        elif len(torn) < 5:
            torn.append({"len": len(data), "head": data[:40].hex()})
    if done:
        break
print(json.dumps({"reads": reads, "missing": missing, "torn": torn, "seen": seen}))
"""


def test_editor_save_under_concurrent_reader(mount: Any, tmp_path: Path) -> None:
    saves = 50
    root = Path(mount.path)
    doc = root / "doc.txt"
    write_file(doc, _version_bytes(0), fsync=True)
    stop = tmp_path / "stop-reader"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(doc), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        for i in range(1, saves + 1):
            tmp = root / f".doc.txt.tmp{i}"
            with open(tmp, "wb") as f:
                f.write(_version_bytes(i))
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, doc)
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=120)
    result = json.loads(out)
    assert result["missing"] == 0, f"reader saw the file missing {result['missing']} times"
    assert result["torn"] == [], f"reader saw torn/unknown content: {result['torn']}"
    assert result["reads"] >= 10, (
        f"reader made only {result['reads']} reads, the test proves little"
    )
    seen = result["seen"]
    assert seen == sorted(seen), f"reader saw versions go backwards: {seen}"
    assert seen[-1] == saves, f"reader's last read should be the final save, got {seen[-1]}"
    assert read_file(doc) == _version_bytes(saves)
    assert sorted(os.listdir(root)) == ["doc.txt"], "temp files left behind"
    view = ServerView(mount.server, mount.user)
    assert view.content("doc.txt") == _version_bytes(saves), "server holds another version"
    assert view.names() == ["doc.txt"]


# --- sqlite3 ----------------------------------------------------------------------------------


def _db_digest(con: sqlite3.Connection) -> tuple[int, str]:
    h = hashlib.sha256()
    rows = con.execute("SELECT id, k, v FROM t ORDER BY id").fetchall()
    for row in rows:
        h.update(repr(row).encode())
    return len(rows), h.hexdigest()


def _sqlite_workload(db: Path) -> tuple[int, str]:
    rnd = random.Random(42)
    con = sqlite3.connect(db, isolation_level="DEFERRED")
    try:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)")
        con.execute("CREATE INDEX t_v ON t(v)")
        for batch in range(10):
            with con:
                con.executemany(
                    "INSERT INTO t (k, v) VALUES (?, ?)",
                    [(f"k{batch}-{j}", rnd.randbytes(rnd.randrange(10, 3000))) for j in range(300)],
                )
        with con:
            con.execute("UPDATE t SET v = zeroblob(100) WHERE id % 7 = 0")
            con.execute("DELETE FROM t WHERE id % 11 = 0")
        with pytest.raises(sqlite3.IntegrityError), con:
            con.execute("INSERT INTO t (k, v) VALUES ('rolled-back', x'00')")
            con.execute("INSERT INTO t (k, v) VALUES ('k0-0', x'00')")  # UNIQUE violation
        assert con.execute("SELECT count(*) FROM t WHERE k = 'rolled-back'").fetchone() == (0,)
        con.execute("VACUUM")
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return _db_digest(con)
    finally:
        con.close()


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_sqlite_transactions_and_integrity(mount: Any, journal_mode: str) -> None:
    db = Path(mount.path) / "app.db"
    con = sqlite3.connect(db)
    got_mode = con.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0]
    con.close()
    assert got_mode == journal_mode, f"sqlite refused journal_mode={journal_mode}: {got_mode}"
    count, digest = _sqlite_workload(db)
    assert count == 3000 - 3000 // 11, f"unexpected row count {count}"
    # a second connection sees the same data while the first is closed
    con = sqlite3.connect(db)
    try:
        assert _db_digest(con) == (count, digest)
    finally:
        con.close()
    mount.remount()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)], "after remount"
        assert _db_digest(con) == (count, digest), "rows differ after remount"
    finally:
        con.close()


# --- git --------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str, env: dict[str, str]) -> str:
    r = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"git {' '.join(args)} failed ({r.returncode}): {r.stderr}"
    return r.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="git binary not installed")
def test_git_init_add_commit_log(mount: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "T",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "T",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "LC_ALL": "C",
    }
    repo = Path(mount.path) / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main", env=env)
    (repo / "src").mkdir()
    for i in range(30):
        write_file(repo / "src" / f"m{i}.py", det_bytes(f"git{i}", 2000 + i * 97).hex().encode())
    write_file(repo / "README", b"hello\n")
    _git(repo, "add", ".", env=env)
    _git(repo, "commit", "-q", "-m", "first", env=env)
    write_file(repo / "README", b"hello again\n")
    os.unlink(repo / "src" / "m0.py")
    (repo / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(repo / "script.sh", 0o755)
    _git(repo, "add", "-A", env=env)
    _git(repo, "commit", "-q", "-m", "second", env=env)
    log = _git(repo, "log", "--format=%s", env=env).split()
    assert log == ["second", "first"], f"git log: {log}"
    assert _git(repo, "status", "--porcelain", env=env) == "", "working tree not clean"
    _git(repo, "gc", "-q", env=env)
    _git(repo, "fsck", "--full", "--strict", env=env)
    mount.remount()
    assert _git(repo, "log", "--format=%s", env=env).split() == ["second", "first"]
    _git(repo, "fsck", "--full", "--strict", env=env)
    assert _git(repo, "status", "--porcelain", env=env) == "", "tree not clean after remount"
    assert _git(repo, "show", "HEAD~1:README", env=env) == "hello\n"
    mode = _git(repo, "ls-files", "-s", "script.sh", env=env).split()[0]
    assert mode == "100755", f"executable bit lost: {mode}"


# --- tar --------------------------------------------------------------------------------------


def _make_tree(root: Path, files: int, seed: int) -> None:
    rnd = random.Random(seed)
    dirs = [root]
    for i in range(60):
        parent = rnd.choice(dirs)
        d = parent / f"d{i:02d}"
        d.mkdir()
        dirs.append(d)
    for i in range(files):
        size = rnd.choice(
            (0, rnd.randrange(1, 200), rnd.randrange(200, 20_000), rnd.randrange(20_000, 100_000))
        )
        if i % 500 == 0:
            size = rnd.randrange(1 * MiB, 3 * MiB)
        p = rnd.choice(dirs) / f"f{i:04d}{rnd.choice(['.txt', '.bin', '', '.tar.gz'])}"
        p.write_bytes(rnd.randbytes(size))
        os.chmod(p, rnd.choice((0o644, 0o600, 0o755)))
        os.utime(p, ns=(1_650_000_000_000_000_000 + i, 1_650_000_000_000_000_000 + i * 1_000_003))
    for i in range(20):
        os.symlink(f"../target-{i}", rnd.choice(dirs[1:]) / f"link{i}")


def _compare_trees(src: Path, dst: Path) -> None:
    src_entries = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    dst_entries = sorted(str(p.relative_to(dst)) for p in dst.rglob("*"))
    assert src_entries == dst_entries, (
        f"entries differ: missing {sorted(set(src_entries) - set(dst_entries))[:5]}, "
        f"extra {sorted(set(dst_entries) - set(src_entries))[:5]}"
    )
    for rel in src_entries:
        a, b = src / rel, dst / rel
        sa, sb = os.lstat(a), os.lstat(b)
        assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), f"{rel}: kind differs"
        if stat.S_ISLNK(sa.st_mode):
            assert os.readlink(a) == os.readlink(b), f"{rel}: link target differs"
        elif stat.S_ISREG(sa.st_mode):
            assert sa.st_size == sb.st_size, f"{rel}: size {sa.st_size} != {sb.st_size}"
            assert filecmp.cmp(a, b, shallow=False), f"{rel}: content differs"
            assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), f"{rel}: mode differs"
            assert sa.st_mtime_ns // 10**9 == sb.st_mtime_ns // 10**9, f"{rel}: mtime differs"


@pytest.mark.slow
def test_tar_extract_2000_files(mount: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src, 2000, seed=7)
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(src, arcname="tree")
    dst = Path(mount.path) / "x"
    dst.mkdir()
    r = subprocess.run(
        ["tar", "-xf", str(archive), "-C", str(dst)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"tar -x failed: {r.stderr}"
    _compare_trees(src, dst / "tree")
    mount.remount()
    _compare_trees(src, dst / "tree")


# --- mmap -------------------------------------------------------------------------------------


def test_mmap_read(mount: Any) -> None:
    data = det_bytes("mmap-read", 3 * MiB + 5)
    path = Path(mount.path) / "m.bin"
    write_file(path, data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert len(mm) == len(data)
        assert mm[:] == data, "mmap read differs"
        assert mm[4090:4200] == data[4090:4200]
        assert mm.find(data[2 * MiB : 2 * MiB + 64]) == 2 * MiB


def test_mmap_shared_write_msync(mount: Any) -> None:
    view = ServerView(mount.server, mount.user)
    base = det_bytes("mmap-write", 2 * MiB + 100)
    path = Path(mount.path) / "shared.bin"
    write_file(path, base)
    expected = bytearray(base)
    edits = [(0, b"HEAD"), (4094, b"across-page"), (MiB + 7, b"middle"), (len(base) - 1, b"!")]
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED) as mm:
        for off, patch in edits:
            mm[off : off + len(patch)] = patch
            expected[off : off + len(patch)] = patch
        mm.flush()  # msync(MS_SYNC)
    assert read_file(path) == bytes(expected), "content after msync + close"
    assert view.content("shared.bin") == bytes(expected), "server content after msync + close"
    # the descriptor closed before the mapping is msynced and unmapped
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED)
    os.close(fd)
    mm[100:110] = b"0123456789"
    expected[100:110] = b"0123456789"
    mm.flush()
    mm.close()
    assert read_file(path) == bytes(expected), "content after write through a mapping left open"
    mount.remount()
    assert read_file(path) == bytes(expected), "mmap writes lost across remount"
    assert view.content("shared.bin") == bytes(expected), "server content after remount"


def test_mmap_extend_new_file(mount: Any) -> None:
    path = Path(mount.path) / "grown.bin"
    data = det_bytes("grow", 1 * MiB + 4096)
    with open(path, "w+b") as f:
        f.truncate(len(data))
        with mmap.mmap(f.fileno(), len(data)) as mm:
            mm[:] = data
            mm.flush()
    assert read_file(path) == data
    mount.remount()
    assert read_file(path) == data


# --- rsync ------------------------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("rsync") is None, reason="rsync not installed (apt-get install rsync)"
)
def test_rsync_archive(mount: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src, 150, seed=11)
    dst = Path(mount.path) / "backup"

    def rsync(*extra: str) -> list[str]:
        r = subprocess.run(
            ["rsync", "-a", "--itemize-changes", *extra, f"{src}/", f"{dst}/"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, f"rsync failed ({r.returncode}): {r.stderr}"
        return [line for line in r.stdout.splitlines() if line.strip()]

    rsync()
    _compare_trees(src, dst)
    for rel in (p.relative_to(src) for p in src.rglob("*") if p.is_dir()):
        assert os.stat(src / rel).st_mtime_ns // 10**9 == os.stat(dst / rel).st_mtime_ns // 10**9, (
            f"dir {rel}: mtime not kept"
        )
    # a second run finds nothing to transfer: sizes and mtimes were kept
    again = [line for line in rsync() if line.startswith((">f", "c"))]
    assert again == [], f"second rsync transferred again: {again[:5]}"
    # change one file: only it is sent, and the mount gets the new content
    changed = next(p for p in sorted(src.rglob("*.txt")) if p.is_file() and p.stat().st_size > 10)
    changed.write_bytes(changed.read_bytes()[::-1])
    sent = [line.split(" ", 1)[1] for line in rsync() if line.startswith(">f")]
    assert sent == [str(changed.relative_to(src))], f"expected only {changed.name} sent, got {sent}"
    _compare_trees(src, dst)


# --- cp, copy_file_range/sendfile, locks ------------------------------------------------------


def test_cp_a_and_kernel_copies(mount: Any, tmp_path: Path) -> None:
    """`cp -a` (modes, times, symlinks, xattr probing) into the mount, then copies inside the
    mount through sendfile (shutil) and copy_file_range (coreutils cp)."""
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src, 100, seed=5)
    dst = Path(mount.path) / "copy"
    r = subprocess.run(["cp", "-a", f"{src}", f"{dst}"], capture_output=True, text=True)
    assert r.returncode == 0, f"cp -a failed: {r.stderr}"
    _compare_trees(src, dst)
    big = det_bytes("copy", 5 * MiB + 3)
    write_file(dst / "big.bin", big)
    shutil.copyfile(dst / "big.bin", dst / "big-shutil.bin")
    r = subprocess.run(["cp", str(dst / "big.bin"), str(dst / "big-cp.bin")], capture_output=True)
    assert r.returncode == 0, f"cp inside the mount failed: {r.stderr!r}"
    view = ServerView(mount.server, mount.user)
    for name in ("big-shutil.bin", "big-cp.bin"):
        assert read_file(dst / name) == big, f"{name}: copy differs"
        assert view.content(f"copy/{name}") == big, f"{name}: server copy differs"


LOCKER = r"""
import fcntl, sys
with open(sys.argv[1], "r+b") as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("flock-busy")
    else:
        print("flock-got")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
    except OSError:
        print("lockf-busy")
    else:
        print("lockf-got")
"""


def test_locks_between_processes(mount: Any) -> None:
    import fcntl

    path = Path(mount.path) / "lockfile"
    write_file(path, b"0123456789")
    with open(path, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        fcntl.lockf(f, fcntl.LOCK_EX, 10, 0)
        r = subprocess.run([sys.executable, "-c", LOCKER, str(path)], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
        assert r.stdout.split() == ["flock-busy", "lockf-busy"], (
            f"another process must see both locks held: {r.stdout!r} {r.stderr!r}"
        )
    r = subprocess.run([sys.executable, "-c", LOCKER, str(path)], capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    assert r.stdout.split() == ["flock-got", "lockf-got"], f"locks not released: {r.stdout!r}"


SQLITE_WRITER = r"""
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=30)
for i in range(50):
    with con:
        con.execute("INSERT INTO t (who, i) VALUES (?, ?)", (sys.argv[2], i))
con.close()
"""


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_sqlite_two_processes_write_concurrently(mount: Any, journal_mode: str) -> None:
    db = Path(mount.path) / "shared.db"
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA journal_mode={journal_mode}")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, i INTEGER)")
    con.commit()
    con.close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SQLITE_WRITER, str(db), who], stderr=subprocess.PIPE
        )
        for who in ("p1", "p2")
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, f"sqlite writer failed: {err.decode(errors='replace')[-2000:]}"
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        counts = dict(con.execute("SELECT who, count(*) FROM t GROUP BY who").fetchall())
        assert counts == {"p1": 50, "p2": 50}, f"rows lost between two writers: {counts}"
    finally:
        con.close()
