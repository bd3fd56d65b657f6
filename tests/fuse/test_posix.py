"""POSIX behaviour of the mount that ordinary programs rely on (issue 3, "The filesystem").

Most tests share one server + mount per module and work in their own fresh folder; tests that
remount take the function-scoped `mount` fixture from conftest.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fuse.blackbox import (
    MiB,
    ServerView,
    det_bytes,
    fresh_dir,
    read_file,
    standalone_mount,
    wait_for,
    write_file,
)
from tests.support import ServerProcess, User

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with standalone_mount(tmp_path_factory.mktemp("posix")) as m:
        yield m


@pytest.fixture
def d(shared: Any, request: pytest.FixtureRequest) -> Path:
    return fresh_dir(shared, request.node.name)


@pytest.fixture
def view(shared: Any) -> ServerView:
    return ServerView(shared.server, shared.user)


def test_create_write_read(d: Path, view: ServerView) -> None:
    data = det_bytes("cwr", 3 * MiB + 12345)
    fd = os.open(d / "f.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        # several writes of odd sizes, as programs do
        pos = 0
        for n in (1, 4095, 65536, 1 * MiB, len(data)):
            pos += os.write(fd, data[pos:n])
        assert pos == len(data)
    finally:
        os.close(fd)
    st = os.stat(d / "f.bin")
    assert stat.S_ISREG(st.st_mode) and st.st_size == len(data), f"stat after close: {st}"
    assert read_file(d / "f.bin") == data, "read-back differs from what was written"
    # random-offset reads
    with open(d / "f.bin", "rb") as f:
        for off, n in ((0, 10), (4090, 20), (MiB - 3, 7), (len(data) - 5, 100)):
            f.seek(off)
            assert f.read(n) == data[off : off + n], f"pread at {off} len {n}"
    assert view.content(f"{d.name}/f.bin") == data, "server content differs after close"


def test_empty_file(d: Path, view: ServerView) -> None:
    open(d / "empty", "wb").close()
    assert os.stat(d / "empty").st_size == 0
    assert read_file(d / "empty") == b""
    node = view.node(f"{d.name}/empty")
    assert node["type"] == "file" and node["size"] == 0, f"server node: {node}"


def test_overwrite_middle_and_write_past_eof(d: Path, view: ServerView) -> None:
    base = det_bytes("mid", 2 * MiB)
    write_file(d / "f", base)
    with open(d / "f", "r+b") as f:
        f.seek(MiB - 10)
        f.write(b"X" * 20)
        f.seek(3 * MiB)  # a hole between 2 MiB and 3 MiB
        f.write(b"tail")
    expected = base[: MiB - 10] + b"X" * 20 + base[MiB + 10 :] + b"\0" * MiB + b"tail"
    assert os.stat(d / "f").st_size == len(expected)
    assert read_file(d / "f") == expected, "overwrite / hole content wrong on the mount"
    assert view.content(f"{d.name}/f") == expected, "overwrite / hole content wrong on the server"


def test_o_append(d: Path) -> None:
    write_file(d / "log", b"first\n")
    fd = os.open(d / "log", os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)  # O_APPEND ignores the position
        os.write(fd, b"second\n")
        fd2 = os.open(d / "log", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd2, b"third\n")
            os.write(fd, b"fourth\n")
        finally:
            os.close(fd2)
    finally:
        os.close(fd)
    assert read_file(d / "log") == b"first\nsecond\nthird\nfourth\n"
    with open(d / "log", "ab") as f:
        f.write(b"fifth\n")
    assert read_file(d / "log") == b"first\nsecond\nthird\nfourth\nfifth\n"


def test_o_trunc(d: Path, view: ServerView) -> None:
    write_file(d / "f", det_bytes("trunc", 500_000))
    fd = os.open(d / "f", os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0, "O_TRUNC must empty the file at open"
        os.write(fd, b"short")
    finally:
        os.close(fd)
    assert read_file(d / "f") == b"short"
    assert view.content(f"{d.name}/f") == b"short"
    # O_TRUNC with nothing written leaves an empty file
    os.close(os.open(d / "f", os.O_WRONLY | os.O_TRUNC))
    assert read_file(d / "f") == b""
    assert view.node(f"{d.name}/f")["size"] == 0


def test_truncate_down_and_up(d: Path, view: ServerView) -> None:
    data = det_bytes("tr", 3 * MiB + 7)
    write_file(d / "f", data)
    os.truncate(d / "f", MiB + 1)
    assert os.stat(d / "f").st_size == MiB + 1
    assert read_file(d / "f") == data[: MiB + 1]
    os.truncate(d / "f", 2 * MiB)  # up: zeros
    assert read_file(d / "f") == data[: MiB + 1] + b"\0" * (MiB - 1)
    # ftruncate on an open descriptor with writes around it
    with open(d / "f", "r+b") as f:
        f.truncate(10)
        f.seek(20)
        f.write(b"after")
    expected = data[:10] + b"\0" * 10 + b"after"
    assert read_file(d / "f") == expected
    assert view.content(f"{d.name}/f") == expected
    os.truncate(d / "f", 0)
    assert os.stat(d / "f").st_size == 0 and read_file(d / "f") == b""
    wait_for(lambda: view.node(f"{d.name}/f")["size"] == 0, 5, "server size 0 after truncate(0)")


def test_chmod(d: Path, view: ServerView) -> None:
    write_file(d / "f", b"x")
    os.mkdir(d / "sub")
    for mode in (0o600, 0o755, 0o700, 0o640):
        os.chmod(d / "f", mode)
        got = stat.S_IMODE(os.stat(d / "f").st_mode)
        assert got == mode, f"chmod {oct(mode)}: stat says {oct(got)}"
    os.chmod(d / "sub", 0o700)
    assert stat.S_IMODE(os.stat(d / "sub").st_mode) == 0o700
    assert stat.S_ISDIR(os.stat(d / "sub").st_mode)
    assert view.node(f"{d.name}/f")["mode"] == 0o640, "server mode after chmod"
    assert view.node(f"{d.name}/sub")["mode"] == 0o700
    # create honours the mode argument (umask 022 of the test process applies)
    old = os.umask(0o022)
    try:
        os.close(os.open(d / "g", os.O_CREAT | os.O_WRONLY, 0o751))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d / "g").st_mode) == 0o751 & ~0o022


def test_utime_ns_precision(d: Path, view: ServerView) -> None:
    write_file(d / "f", b"x")
    os.mkdir(d / "sub")
    mtime_ns = 1_600_000_000_123_456_789
    atime_ns = 1_500_000_000_987_654_321
    os.utime(d / "f", ns=(atime_ns, mtime_ns))
    os.utime(d / "sub", ns=(atime_ns, mtime_ns + 1))
    assert os.stat(d / "f").st_mtime_ns == mtime_ns, "mtime must keep nanoseconds"
    assert os.stat(d / "sub").st_mtime_ns == mtime_ns + 1
    assert view.node(f"{d.name}/f")["mtime_ns"] == mtime_ns, "server mtime_ns after utime"
    assert view.node(f"{d.name}/sub")["mtime_ns"] == mtime_ns + 1
    # writing moves mtime forward to about now
    with open(d / "f", "ab") as f:
        f.write(b"y")
    assert os.stat(d / "f").st_mtime_ns > mtime_ns, "a write must update mtime"


def test_symlink_readlink(d: Path, view: ServerView) -> None:
    write_file(d / "target.txt", b"through the link")
    os.symlink("target.txt", d / "rel")
    os.symlink("/nonexistent/elsewhere", d / "dangling")
    os.mkdir(d / "sub")
    os.symlink("../target.txt", d / "sub" / "up")
    assert os.readlink(d / "rel") == "target.txt"
    assert os.readlink(d / "dangling") == "/nonexistent/elsewhere"
    st = os.lstat(d / "rel")
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("target.txt"), f"lstat: {st}"
    assert read_file(d / "rel") == b"through the link"
    assert read_file(d / "sub" / "up") == b"through the link"
    assert os.path.lexists(d / "dangling") and not os.path.exists(d / "dangling")
    node = view.node(f"{d.name}/dangling")
    assert node["type"] == "symlink" and node["target"] == "/nonexistent/elsewhere", node
    os.rename(d / "rel", d / "rel2")
    assert os.readlink(d / "rel2") == "target.txt"
    os.unlink(d / "rel2")
    assert os.path.exists(d / "target.txt"), "unlinking a symlink must not touch its target"


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel, name))] = None
        for name in filenames:
            out[os.path.normpath(os.path.join(rel, name))] = read_file(Path(dirpath) / name)
    return out


def test_mkdir_and_rename_dirs_with_contents(d: Path, view: ServerView) -> None:
    os.makedirs(d / "a" / "b" / "c")
    files = {
        "a/top.txt": det_bytes(1, 100),
        "a/b/mid.bin": det_bytes(2, 300_000),
        "a/b/c/deep.txt": det_bytes(3, 10),
    }
    for rel, data in files.items():
        write_file(d / rel, data)
    before = _tree(d / "a")
    ino = os.stat(d / "a").st_ino
    os.mkdir(d / "x")
    os.rename(d / "a", d / "x" / "moved")
    assert not (d / "a").exists()
    assert _tree(d / "x" / "moved") == before, "tree changed by the move"
    assert os.stat(d / "x" / "moved").st_ino == ino
    assert view.content(f"{d.name}/x/moved/b/c/deep.txt") == files["a/b/c/deep.txt"]
    assert view.node_at(f"{d.name}/a") is None, "server still has the old name"
    # rename within the same folder, and replace an empty folder
    os.mkdir(d / "empty")
    os.rename(d / "x" / "moved", d / "empty")
    assert _tree(d / "empty") == before
    # write into the moved folder works
    write_file(d / "empty" / "b" / "new.txt", b"new")
    assert view.content(f"{d.name}/empty/b/new.txt") == b"new"


def test_rename_file_over_file(d: Path, view: ServerView) -> None:
    write_file(d / "old", b"old content")
    write_file(d / "new", b"new content")
    ino_new = os.stat(d / "new").st_ino
    os.rename(d / "new", d / "old")
    assert read_file(d / "old") == b"new content"
    assert not (d / "new").exists()
    assert os.stat(d / "old").st_ino == ino_new, "the moved file keeps its identity"
    assert view.names(d.name) == ["old"]
    assert view.content(f"{d.name}/old") == b"new content"


async def _fill_in_store(data_dir: Path, token: str, parent_id: int, names: list[str]) -> None:
    """Create empty files through the server's own metadata store (the code the create route
    calls), from this process, with fsync off: 100,000 entries in seconds instead of minutes
    of HTTP round trips. The running server sees them like any other writer's rows (WAL)."""
    from cloudfs_server.engines.sqlite import SqliteMetadataStore

    store = SqliteMetadataStore(data_dir / "meta.sqlite3", synchronous="OFF")
    await store.open()
    try:
        user = await store.authenticate(token)
        assert user is not None, "the test user's token should authenticate"
        for start in range(0, len(names), 2000):
            await asyncio.gather(*(
                store.create_node(user.user_id, parent_id, name, "file", None, None, None, 0,
                                  [], "test")
                for name in names[start:start + 2000]
            ))  # fmt: skip
    finally:
        await store.close()


def _readdir_check(
    mount_factory: Any, alice: User, server: ServerProcess, count: int, via_store: bool = False
) -> None:
    """`count` entries made over HTTP (or through the server's store, for big counts), then
    listed by a fresh client (pages of the server's listing), with the right d_type; then
    changed through the mount and listed again."""
    view = ServerView(server, alice)
    big = view.post(f"/v1/nodes/{view.root()}/children", {"name": "big", "type": "dir"})
    names = [f"file-{i:06d}-{'é' if i % 7 == 0 else 'x'}{'y' * (i % 40)}" for i in range(count)]
    if via_store:
        asyncio.run(_fill_in_store(server.data_dir, alice.token, big["id"], names))
    else:
        view.bulk_create(big["id"], names)
    view.post(f"/v1/nodes/{big['id']}/children", {"name": "zz-subdir", "type": "dir"})
    view.post(
        f"/v1/nodes/{big['id']}/children", {"name": "zz-link", "type": "symlink", "target": "x"}
    )
    m = mount_factory(alice)
    path = Path(m.path) / "big"
    t0 = time.monotonic()
    listed = os.listdir(path)
    list_s = time.monotonic() - t0
    want = set(names) | {"zz-subdir", "zz-link"}
    assert len(listed) == len(set(listed)), "readdir returned duplicates"
    assert set(listed) == want, (
        f"missing {sorted(want - set(listed))[:5]}, extra {sorted(set(listed) - want)[:5]}"
    )
    with os.scandir(path) as it:
        kinds = {e.name: (e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False),
                          e.is_symlink()) for e in it}  # fmt: skip
    assert kinds["zz-subdir"] == (False, True, False)
    assert kinds["zz-link"] == (False, False, True)
    wrong = [n for n in names if kinds[n] != (True, False, False)]
    assert not wrong, f"d_type of files wrong for {wrong[:5]}"
    assert os.stat(path / names[count // 2]).st_size == 0
    # changes through the mount show in the next listing
    for name in names[:10]:
        os.unlink(path / name)
    os.close(os.open(path / "new-entry", os.O_CREAT | os.O_WRONLY, 0o644))
    again = set(os.listdir(path))
    assert again == (want - set(names[:10])) | {"new-entry"}, "listing after unlink/create"
    print(f"listed {len(listed)} entries in {list_s:.2f}s")


def test_readdir_thousands(mount_factory: Any, alice: User, server: ServerProcess) -> None:
    _readdir_check(mount_factory, alice, server, 3000)


@pytest.mark.slow
def test_readdir_100k(mount_factory: Any, alice: User, server: ServerProcess) -> None:
    _readdir_check(mount_factory, alice, server, 100_000, via_store=True)


def test_unlinked_file_readable_through_open_descriptor(d: Path, view: ServerView) -> None:
    data = det_bytes("unlinked", 2 * MiB + 1)
    write_file(d / "f", data)
    fd = os.open(d / "f", os.O_RDONLY)
    wfd = os.open(d / "f", os.O_RDWR)
    try:
        os.unlink(d / "f")
        assert not (d / "f").exists()
        assert os.listdir(d) == []
        assert os.fstat(fd).st_size == len(data)
        assert os.pread(fd, len(data) + 10, 0) == data, "read after unlink"
        # still writable and readable through the other descriptor
        os.pwrite(wfd, b"LATE", 0)
        assert os.pread(fd, 4, 0) == b"LATE"
        # the name is free again and a new file there is a different one
        write_file(d / "f", b"another")
        assert read_file(d / "f") == b"another"
        assert os.pread(fd, 8, 0) == b"LATE" + data[4:8]
    finally:
        os.close(wfd)
        os.close(fd)
    assert read_file(d / "f") == b"another", "closing the unlinked file must not touch the new one"
    assert view.content(f"{d.name}/f") == b"another"


def test_read_your_writes_across_descriptors(d: Path) -> None:
    data = det_bytes("ryw", 1 * MiB + 333)
    fd1 = os.open(d / "f", os.O_CREAT | os.O_RDWR, 0o644)
    fd2 = os.open(d / "f", os.O_RDONLY)
    try:
        os.write(fd1, data)
        assert os.fstat(fd2).st_size == len(data), "size seen through the second descriptor"
        assert os.stat(d / "f").st_size == len(data), "size seen by path before close"
        assert os.pread(fd2, len(data), 0) == data, "second descriptor must see unclosed writes"
        fd3 = os.open(d / "f", os.O_RDWR)
        try:
            os.pwrite(fd3, b"ZZZ", 100)
            assert os.pread(fd1, 3, 100) == b"ZZZ"
        finally:
            os.close(fd3)
        # a reader opened by another process sees it too
        with open(d / "f", "rb") as f:
            assert f.read(103)[100:] == b"ZZZ"
    finally:
        os.close(fd1)
        os.close(fd2)
    assert read_file(d / "f") == data[:100] + b"ZZZ" + data[103:]


def test_fsync_file_and_dir(d: Path, view: ServerView) -> None:
    fd = os.open(d / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"synced")
        os.fsync(fd)
        # fsync returned: the server has it while the file is still open
        assert view.content(f"{d.name}/f") == b"synced", "content not on the server after fsync"
        os.write(fd, b" more")
        os.fdatasync(fd)
        assert view.content(f"{d.name}/f") == b"synced more"
    finally:
        os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def test_statfs(d: Path, view: ServerView) -> None:
    sv = os.statvfs(d)
    assert sv.f_bsize > 0 and sv.f_frsize > 0, sv
    assert sv.f_namemax == 255, f"f_namemax: expected 255 (the protocol's name limit), got {sv}"
    assert sv.f_blocks >= sv.f_bfree >= sv.f_bavail >= 0, sv

    def used_bytes() -> int:
        s = os.statvfs(d)
        return (s.f_blocks - s.f_bfree) * s.f_frsize

    before = used_bytes()
    write_file(d / "big", det_bytes("statfs", 8 * MiB))
    logical = view.get("/v1/usage")["logical_bytes"]
    assert logical >= 8 * MiB, f"server usage after an 8 MiB file: {logical}"
    # statfs comes from the server's usage (may be cached briefly by the client)
    wait_for(
        lambda: used_bytes() - before >= 7 * MiB,
        10,
        f"statfs used to grow by ~8 MiB (from {before})",
    )
    assert abs(used_bytes() - logical) <= 1 * MiB + sv.f_frsize, (
        f"statfs used {used_bytes()} vs server logical_bytes {logical}"
    )


def test_st_ino_stable_across_rename_and_remount(mount: Any) -> None:
    root = Path(mount.path)
    os.makedirs(root / "dir" / "sub")
    write_file(root / "dir" / "sub" / "f", b"identity")
    os.symlink("sub/f", root / "dir" / "link")
    inos = {p: os.lstat(root / p).st_ino for p in ("dir", "dir/sub", "dir/sub/f", "dir/link")}
    assert len(set(inos.values())) == 4, f"distinct nodes need distinct st_ino: {inos}"
    os.rename(root / "dir" / "sub" / "f", root / "dir" / "g")
    assert os.stat(root / "dir" / "g").st_ino == inos["dir/sub/f"], "st_ino changed by rename"
    os.rename(root / "dir", root / "dir2")
    assert os.stat(root / "dir2").st_ino == inos["dir"]
    mount.remount()
    after = {
        "dir": os.lstat(root / "dir2").st_ino,
        "dir/sub": os.lstat(root / "dir2" / "sub").st_ino,
        "dir/sub/f": os.lstat(root / "dir2" / "g").st_ino,
        "dir/link": os.lstat(root / "dir2" / "link").st_ino,
    }
    assert after == inos, f"st_ino changed across remount: before {inos}, after {after}"
    assert read_file(root / "dir2" / "g") == b"identity"


def test_content_and_attrs_survive_remount(mount: Any) -> None:
    root = Path(mount.path)
    data = det_bytes("remount", 5 * MiB + 17)
    write_file(root / "f.bin", data)
    os.chmod(root / "f.bin", 0o600)
    os.utime(root / "f.bin", ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001))
    os.symlink("f.bin", root / "link")
    mount.remount()
    st = os.stat(root / "f.bin")
    assert st.st_size == len(data)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_mtime_ns == 1_700_000_000_000_000_001
    assert os.readlink(root / "link") == "f.bin"
    assert read_file(root / "f.bin") == data


def test_statfs_and_enospc_with_quota(mount_factory: Any, server: ServerProcess) -> None:
    quota = 20 * MiB
    carol = server.add_user("carol", "--quota", str(quota))
    m = mount_factory(carol, device="quota-box")
    root = Path(m.path)
    sv = os.statvfs(root)
    assert sv.f_blocks * sv.f_frsize == quota, f"statfs size should be the quota {quota}: {sv}"
    assert sv.f_bavail * sv.f_frsize == quota, f"nothing used yet: {sv}"
    keep = det_bytes("quota-keep", 8 * MiB)
    write_file(root / "keep.bin", keep)
    wait_for(
        lambda: (quota - os.statvfs(root).f_bavail * sv.f_frsize) >= 8 * MiB,
        10,
        "statfs free space to drop by 8 MiB",
    )
    # 16 MiB more would exceed the quota: the error must reach the program (write or close)
    with pytest.raises(OSError) as info, open(root / "too-big.bin", "wb") as f:
        f.write(det_bytes("quota-big", 16 * MiB))
    assert info.value.errno in (errno.ENOSPC, errno.EDQUOT), (
        f"over quota: expected ENOSPC (or EDQUOT), got {errno.errorcode.get(info.value.errno)}"
    )
    view = ServerView(server, carol)
    usage = view.get("/v1/usage")
    assert usage["logical_bytes"] <= quota, f"server went over quota: {usage}"
    assert view.content("keep.bin") == keep, "a refused commit must not touch other files"
    assert read_file(root / "keep.bin") == keep


def test_random_writes_to_a_multi_chunk_file_match_a_model(d: Path, view: ServerView) -> None:
    """Chunk boundaries (~1 MiB content-defined chunks) only exist in bigger files: random
    pwrites, extensions and truncates on an 8 MiB file, checked against a bytearray model."""
    rnd = random.Random(99)
    model = bytearray(det_bytes("model", 8 * MiB))
    write_file(d / "f", bytes(model))
    for round_ in range(4):
        fd = os.open(d / "f", os.O_RDWR)
        try:
            for _ in range(40):
                off = rnd.randrange(0, len(model) + 100_000)
                patch = rnd.randbytes(rnd.randrange(1, 64 * 1024))
                os.pwrite(fd, patch, off)
                if off > len(model):
                    model.extend(b"\0" * (off - len(model)))
                model[off : off + len(patch)] = patch
            if round_ == 2:
                cut = rnd.randrange(3 * MiB, 6 * MiB)
                os.ftruncate(fd, cut)
                del model[cut:]
            assert os.pread(fd, len(model) + 1, 0) == bytes(model), f"round {round_} before close"
        finally:
            os.close(fd)
        assert read_file(d / "f") == bytes(model), f"round {round_} after close"
        assert view.content(f"{d.name}/f") == bytes(model), f"round {round_}: server content"
    # insert 1 MiB at the front, as an editor re-saving the whole file would
    model[0:0] = det_bytes("insert", MiB)
    write_file(d / "f", bytes(model))
    assert view.content(f"{d.name}/f") == bytes(model), "after an insertion at the front"


def test_parallel_writers_in_one_folder(d: Path, view: ServerView) -> None:
    def writer(k: int) -> None:
        for i in range(25):
            write_file(d / f"w{k}-{i}.bin", det_bytes(f"par-{k}-{i}", 1000 + 3000 * i))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want = {f"w{k}-{i}.bin": det_bytes(f"par-{k}-{i}", 1000 + 3000 * i)
            for k in range(4) for i in range(25)}  # fmt: skip
    assert sorted(os.listdir(d)) == sorted(want)
    assert sorted(view.names(d.name)) == sorted(want), "server listing after parallel creates"
    for name, data in want.items():
        assert read_file(d / name) == data, f"{name} differs"
    for name in ("w0-24.bin", "w3-0.bin"):
        assert view.content(f"{d.name}/{name}") == want[name]


def test_write_through_descriptor_after_rename_of_file_and_folder(
    d: Path, view: ServerView
) -> None:
    os.mkdir(d / "a")
    write_file(d / "a" / "f", b"before")
    with open(d / "a" / "f", "r+b") as f:
        os.rename(d / "a" / "f", d / "a" / "g")  # the open file moves
        os.rename(d / "a", d / "b")  # and so does its folder
        f.seek(0, os.SEEK_END)
        f.write(b" and after")
    assert not (d / "a").exists()
    assert read_file(d / "b" / "g") == b"before and after"
    assert view.content(f"{d.name}/b/g") == b"before and after", "commit went to the old path?"
    assert view.names(d.name) == ["b"] and view.names(f"{d.name}/b") == ["g"]


def test_chown_is_accepted(d: Path) -> None:
    """docs/client.md: chown is accepted and ignored, so `tar` and `cp -a` as root work."""
    write_file(d / "f", b"x")
    os.chown(d / "f", 1000, 1000)
    os.lchown(d / "f", 0, 0)
    assert read_file(d / "f") == b"x"


UNUSUAL_NAMES = [
    "a b", "a+b", "100%", "q?x=1&y=2", "hash#tag", "semi;colon", "new\nline", "tab\tx",
    "emoji 😀", "back\\slash", "'quote\"", "ünïcödé", "%2F-not-a-slash", "..dots", ".hidden",
    " leading-space", "trailing-space ", "日本語のファイル名",
]  # fmt: skip


def test_unusual_names(mount: Any) -> None:
    root = Path(mount.path)
    view = ServerView(mount.server, mount.user)
    for i, name in enumerate(UNUSUAL_NAMES):
        write_file(root / name, f"content {i}".encode())
    os.mkdir(root / "dir with spaces & #")
    write_file(root / "dir with spaces & #" / "in+side?", b"nested")
    want = sorted([*UNUSUAL_NAMES, "dir with spaces & #"])
    assert sorted(os.listdir(root)) == want
    assert sorted(view.names()) == want, "server names differ from what was created"
    mount.remount()  # a fresh client looks every name up on the server
    for i, name in enumerate(UNUSUAL_NAMES):
        assert read_file(root / name) == f"content {i}".encode(), f"{name!r} after remount"
    assert read_file(root / "dir with spaces & #" / "in+side?") == b"nested"
    os.rename(root / "a+b", root / "a b c+d")
    assert view.content("a b c+d") == b"content 1"


def test_sparse_file(d: Path, view: ServerView) -> None:
    size = 256 * MiB
    stored_before = view.get("/v1/usage")["stored_bytes"]  # the module's mount is shared
    with open(d / "sparse.img", "wb") as f:
        f.truncate(size)
        f.seek(size - 4)
        f.write(b"tail")
        f.seek(100 * MiB)
        f.write(b"middle")
    assert os.stat(d / "sparse.img").st_size == size
    with open(d / "sparse.img", "rb") as f:
        f.seek(100 * MiB - 10)
        assert f.read(20) == b"\0" * 10 + b"middle" + b"\0" * 4
        f.seek(size - 8)
        assert f.read() == b"\0\0\0\0tail"
    node = view.node(f"{d.name}/sparse.img")
    assert node["size"] == size, f"server size {node['size']}"
    grown = view.get("/v1/usage")["stored_bytes"] - stored_before
    assert grown < 32 * MiB, f"256 MiB of mostly zeros grew the server by {grown / MiB:.0f} MiB"
