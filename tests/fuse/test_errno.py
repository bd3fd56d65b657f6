"""The errno a plain script meets on the mount (issue 3): ENOENT, EEXIST, ENOTEMPTY, EISDIR,
ENOTDIR, ENAMETOOLONG, EPERM for hard links, RENAME_NOREPLACE and moving a directory into itself.

One server + mount per module (each test works in its own fresh folder); failed calls must leave
the data they touched intact, which every test checks after the error.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fuse.blackbox import (
    RENAME_NOREPLACE,
    ServerView,
    fresh_dir,
    read_file,
    renameat2,
    standalone_mount,
    write_file,
)

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with standalone_mount(tmp_path_factory.mktemp("errno")) as m:
        yield m


@pytest.fixture
def d(shared: Any, request: pytest.FixtureRequest) -> Path:
    return fresh_dir(shared, request.node.name)


def expect_errno(code: int, fn: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    got = info.value.errno
    assert got == code, (
        f"{getattr(fn, '__name__', fn)}{args}: expected {errno.errorcode[code]}, "
        f"got {errno.errorcode.get(got, got)} ({info.value})"
    )


def test_enoent(d: Path) -> None:
    missing = d / "missing.txt"
    expect_errno(errno.ENOENT, os.stat, missing)
    expect_errno(errno.ENOENT, open, missing, "rb")
    expect_errno(errno.ENOENT, os.unlink, missing)
    expect_errno(errno.ENOENT, os.rmdir, d / "nodir")
    expect_errno(errno.ENOENT, os.rename, missing, d / "other.txt")
    expect_errno(errno.ENOENT, os.listdir, d / "nodir")
    # creating below a missing folder
    expect_errno(errno.ENOENT, open, d / "nodir" / "f.txt", "wb")
    expect_errno(errno.ENOENT, os.mkdir, d / "nodir" / "sub")
    # a name that existed and was removed is gone for good
    write_file(d / "gone.txt", b"x")
    os.unlink(d / "gone.txt")
    expect_errno(errno.ENOENT, os.stat, d / "gone.txt")
    assert os.listdir(d) == [], f"expected an empty folder, got {os.listdir(d)}"


def test_eexist_o_excl_keeps_content(d: Path) -> None:
    f = d / "a.txt"
    write_file(f, b"original")
    expect_errno(errno.EEXIST, os.open, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    expect_errno(errno.EEXIST, open, f, "xb")
    assert read_file(f) == b"original", "a failed O_EXCL open must not touch the file"
    # O_EXCL on a free name works
    fd = os.open(d / "b.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    assert (d / "b.txt").is_file()


def test_eexist_mkdir_and_symlink(d: Path) -> None:
    os.mkdir(d / "sub")
    write_file(d / "sub" / "keep.txt", b"keep")
    write_file(d / "file", b"file")
    expect_errno(errno.EEXIST, os.mkdir, d / "sub")
    expect_errno(errno.EEXIST, os.mkdir, d / "file")
    expect_errno(errno.EEXIST, os.symlink, "target", d / "file")
    expect_errno(errno.EEXIST, os.symlink, "target", d / "sub")
    assert read_file(d / "sub" / "keep.txt") == b"keep"
    assert read_file(d / "file") == b"file"
    assert sorted(os.listdir(d)) == ["file", "sub"]


def test_enotempty(d: Path) -> None:
    os.makedirs(d / "full" / "inner")
    write_file(d / "full" / "f.txt", b"data")
    expect_errno(errno.ENOTEMPTY, os.rmdir, d / "full")
    assert read_file(d / "full" / "f.txt") == b"data"
    os.unlink(d / "full" / "f.txt")
    # still not empty: the subfolder
    expect_errno(errno.ENOTEMPTY, os.rmdir, d / "full")
    os.rmdir(d / "full" / "inner")
    os.rmdir(d / "full")
    assert not (d / "full").exists()


def test_rename_dir_over_nonempty_dir(d: Path) -> None:
    os.mkdir(d / "src")
    os.mkdir(d / "dst")
    write_file(d / "dst" / "x", b"x")
    with pytest.raises(OSError) as info:
        os.rename(d / "src", d / "dst")
    # POSIX allows either; Linux file systems answer ENOTEMPTY
    assert info.value.errno in (errno.ENOTEMPTY, errno.EEXIST), (
        f"expected ENOTEMPTY (or EEXIST), got {errno.errorcode.get(info.value.errno)}"
    )
    assert read_file(d / "dst" / "x") == b"x"
    assert (d / "src").is_dir()


def test_eisdir(d: Path) -> None:
    os.mkdir(d / "dir")
    write_file(d / "dir" / "inside", b"in")
    expect_errno(errno.EISDIR, os.open, d / "dir", os.O_WRONLY)
    expect_errno(errno.EISDIR, os.open, d / "dir", os.O_RDWR)
    expect_errno(errno.EISDIR, open, d / "dir", "wb")
    expect_errno(errno.EISDIR, os.unlink, d / "dir")
    write_file(d / "file", b"f")
    expect_errno(errno.EISDIR, os.rename, d / "file", d / "dir")
    assert read_file(d / "dir" / "inside") == b"in"
    assert read_file(d / "file") == b"f"


def test_enotdir(d: Path) -> None:
    write_file(d / "file", b"plain")
    os.mkdir(d / "dir")
    expect_errno(errno.ENOTDIR, os.stat, d / "file" / "x")
    expect_errno(errno.ENOTDIR, open, d / "file" / "x", "wb")
    expect_errno(errno.ENOTDIR, os.mkdir, d / "file" / "sub")
    expect_errno(errno.ENOTDIR, os.listdir, d / "file")
    expect_errno(errno.ENOTDIR, os.rmdir, d / "file")
    expect_errno(errno.ENOTDIR, os.rename, d / "dir", d / "file")
    assert read_file(d / "file") == b"plain"
    assert (d / "dir").is_dir()


def test_enametoolong(d: Path) -> None:
    ok = "n" * 255
    write_file(d / ok, b"255 bytes is allowed")
    assert read_file(d / ok) == b"255 bytes is allowed"
    long = "n" * 256
    expect_errno(errno.ENAMETOOLONG, open, d / long, "wb")
    expect_errno(errno.ENAMETOOLONG, os.mkdir, d / long)
    expect_errno(errno.ENAMETOOLONG, os.symlink, "t", d / long)
    expect_errno(errno.ENAMETOOLONG, os.rename, d / ok, d / long)
    expect_errno(errno.ENAMETOOLONG, os.stat, d / long)
    # the limit is in UTF-8 bytes, not characters: 128 x 'é' is 256 bytes
    expect_errno(errno.ENAMETOOLONG, open, d / ("é" * 128), "wb")
    write_file(d / ("é" * 127 + "a"), b"255 bytes of UTF-8")
    assert sorted(os.listdir(d)) == sorted([ok, "é" * 127 + "a"])
    assert read_file(d / ok) == b"255 bytes is allowed", "a failed rename must keep the source"


def test_hard_link_is_eperm(d: Path, shared: Any) -> None:
    write_file(d / "a", b"content")
    expect_errno(errno.EPERM, os.link, d / "a", d / "b")
    assert not (d / "b").exists()
    assert read_file(d / "a") == b"content"
    assert os.stat(d / "a").st_nlink == 1
    view = ServerView(shared.server, shared.user)
    assert view.names(d.name) == ["a"], "a refused hard link must not create anything"


def test_rename_noreplace(d: Path) -> None:
    write_file(d / "src", b"source")
    write_file(d / "dst", b"destination")
    expect_errno(errno.EEXIST, renameat2, d / "src", d / "dst", RENAME_NOREPLACE)
    assert read_file(d / "src") == b"source"
    assert read_file(d / "dst") == b"destination"
    # onto a free name it is an ordinary rename
    renameat2(d / "src", d / "free", RENAME_NOREPLACE)
    assert not (d / "src").exists()
    assert read_file(d / "free") == b"source"
    # plain rename replaces
    os.rename(d / "free", d / "dst")
    assert read_file(d / "dst") == b"source"
    assert os.listdir(d) == ["dst"]


def test_rename_dir_into_own_subtree_is_einval(d: Path) -> None:
    os.makedirs(d / "a" / "b" / "c")
    write_file(d / "a" / "b" / "c" / "f", b"deep")
    expect_errno(errno.EINVAL, os.rename, d / "a", d / "a" / "b" / "a")
    expect_errno(errno.EINVAL, os.rename, d / "a", d / "a" / "b" / "c" / "x")
    assert read_file(d / "a" / "b" / "c" / "f") == b"deep"
    assert os.listdir(d) == ["a"]


def test_special_files_are_eperm(d: Path) -> None:
    expect_errno(errno.EPERM, os.mkfifo, d / "fifo")
    assert os.listdir(d) == [], "a refused mkfifo must not leave anything"


def test_rename_exchange_is_refused_and_keeps_both(d: Path) -> None:
    rename_exchange = 2
    write_file(d / "x", b"x")
    write_file(d / "y", b"y")
    with pytest.raises(OSError) as info:
        renameat2(d / "x", d / "y", rename_exchange)
    # docs/client.md: EOPNOTSUPP; the kernel may report an unsupported flag as EINVAL
    assert info.value.errno in (errno.EOPNOTSUPP, errno.EINVAL), (
        f"RENAME_EXCHANGE: expected EOPNOTSUPP, got {errno.errorcode.get(info.value.errno)}"
    )
    assert (read_file(d / "x"), read_file(d / "y")) == (b"x", b"y")


def test_invalid_utf8_name_is_refused_cleanly(d: Path) -> None:
    bad = os.fsencode(d) + b"/bad-\xff\xfe-name"
    with pytest.raises(OSError) as info:
        os.close(os.open(bad, os.O_CREAT | os.O_WRONLY, 0o644))
    assert info.value.errno in (errno.EINVAL, errno.EILSEQ), (
        f"a name that is not UTF-8: expected EINVAL (or EILSEQ), got "
        f"{errno.errorcode.get(info.value.errno)}"
    )
    with pytest.raises(OSError) as info:
        os.stat(bad)
    assert info.value.errno in (errno.ENOENT, errno.EINVAL), "lookup of a name that cannot exist"
    assert os.listdir(d) == []
    write_file(d / "still-works", b"ok")  # the mount is alive and well
    assert read_file(d / "still-works") == b"ok"
