"""The kernel adapter called directly (no kernel): arguments decoded, our errors become the right
`FUSEError`, a bug becomes EIO instead of ending the mount, forget never raises. Real server
process, real LMDB, the real filesystem core underneath."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pyfuse3
import pytest
import trio

from cloudfs.api import ApiClient
from cloudfs.cache import LocalCache
from cloudfs.filesystem import FileSystem, Options
from cloudfs.fuse_ops import CloudfsOperations
from tests.support import ServerProcess, User

pytestmark = pytest.mark.trio

CTX = pyfuse3.RequestContext()  # uid 0, umask 0


@pytest.fixture
async def ops(
    server: ServerProcess, alice: User, tmp_path: Path
) -> AsyncIterator[CloudfsOperations]:
    api = ApiClient(server.url, alice.token, "ops", retry_budget_s=1.0)
    me = await api.me()
    cache = LocalCache(tmp_path / "lmdb", 64 << 20)
    async with trio.open_nursery() as nursery:
        fs = FileSystem(
            api,
            cache,
            int(me["root"]),
            tmp_path / "staging",
            Options(device="ops"),
            nursery=nursery,
        )
        await fs.start()
        yield CloudfsOperations(fs)
        nursery.cancel_scope.cancel()
    await api.aclose()
    cache.close()


async def errno_of(coro) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(pyfuse3.FUSEError) as info:
        await coro
    return info.value.errno


async def test_errors_become_errnos(ops: CloudfsOperations) -> None:
    root = pyfuse3.ROOT_INODE
    assert await errno_of(ops.lookup(root, b"missing", CTX)) == errno.ENOENT
    assert await errno_of(ops.lookup(root, b"x" * 256, CTX)) == errno.ENAMETOOLONG
    d = await ops.mkdir(root, b"d", 0o755, CTX)
    assert await errno_of(ops.mkdir(root, b"d", 0o755, CTX)) == errno.EEXIST
    fi, attr = await ops.create(d.st_ino, b"f", 0o644, os.O_RDWR, CTX)
    assert await ops.write(fi.fh, 0, b"hello") == 5
    await ops.flush(fi.fh)
    await ops.release(fi.fh)
    assert await errno_of(ops.rmdir(root, b"d", CTX)) == errno.ENOTEMPTY
    assert await errno_of(ops.unlink(root, b"d", CTX)) == errno.EISDIR
    assert await errno_of(ops.rmdir(d.st_ino, b"f", CTX)) == errno.ENOTDIR
    assert await errno_of(ops.link(attr.st_ino, root, b"hard", CTX)) == errno.EPERM
    assert await errno_of(ops.rename(root, b"d", d.st_ino, b"inside", 0, CTX)) == errno.EINVAL
    g, _ = await ops.create(root, b"g", 0o644, os.O_RDWR, CTX)
    await ops.release(g.fh)
    assert (
        await errno_of(ops.rename(root, b"g", root, b"d", pyfuse3.RENAME_NOREPLACE, CTX))
        == errno.EEXIST
    )
    fi = await ops.open(attr.st_ino, os.O_RDONLY, CTX)
    assert bytes(await ops.read(fi.fh, 0, 100)) == b"hello"
    await ops.release(fi.fh)


async def test_a_bug_answers_eio_and_forget_never_raises(ops: CloudfsOperations) -> None:
    async def broken(ino: int) -> None:
        raise RuntimeError("a bug")

    ops.fs.getattr = broken  # type: ignore[method-assign, assignment]
    assert await errno_of(ops.getattr(pyfuse3.ROOT_INODE, CTX)) == errno.EIO
    assert ops.internal_errors == 1
    await ops.forget([(999_999, 3), (pyfuse3.ROOT_INODE, 1)])  # unknown inode: ignored
