"""Publishing a block (issue 11): a corrupt file of the right size is healed by a re-upload, and
an upload of content another user stored does the same file work as new content."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from cloudfs_server.engines.chain import FormatGuard
from cloudfs_server.engines.dir import DirBlockStore
from cloudfs_server.http.state import BLOCKS

from tests.server.conftest import AppUser

pytestmark = pytest.mark.asyncio


def block_file(client: TestClient, block_id: str) -> Path:
    store = client.app[BLOCKS]
    if isinstance(store, FormatGuard):  # no layers configured: the guard wraps the engine
        store = store.inner
    assert isinstance(store, DirBlockStore)
    return store.path_of(block_id)


def corrupt_same_size(path: Path) -> bytes:
    good = path.read_bytes()
    bad = bytes(b ^ 0xFF for b in good[:16]) + good[16:]
    path.write_bytes(bad)
    assert path.stat().st_size == len(good)
    return bad


@pytest.mark.parametrize("who", ["same user", "another user"])
async def test_reupload_heals_a_corrupt_block_of_the_right_size(
    client: TestClient, ann: AppUser, ben: AppUser, who: str
) -> None:
    data = os.urandom(100_000)
    block_id = await ann.put_block(data)
    path = block_file(client, block_id)
    corrupt_same_size(path)
    uploader = ann if who == "same user" else ben
    status, body = await uploader.call("PUT", f"/v1/blocks/{block_id}", data=data)
    assert status in (200, 201), body
    assert path.read_bytes() == data, "the corrupt file was left in place"
    assert await client.app[BLOCKS].verify(block_id, len(data)) is None
    status, got = await ann.call("GET", f"/v1/blocks/{block_id}")
    assert status == 200 and got == data


async def test_upload_of_content_another_user_stored_replaces_the_file_like_new_content(
    client: TestClient, ann: AppUser, ben: AppUser
) -> None:
    """Equal work on both paths (no timing side channel): the temp file is written, fsynced and
    renamed over the existing file, so the block file is a new inode afterwards."""
    data = os.urandom(50_000)
    block_id = await ann.put_block(data)
    path = block_file(client, block_id)
    before = path.stat().st_ino
    status, body = await ben.call("PUT", f"/v1/blocks/{block_id}", data=data)
    assert status == 201 and body["stored"] is True, body
    assert path.stat().st_ino != before, "ben's upload skipped the rename: faster than new content"
    assert path.read_bytes() == data
    tmp_dir = path.parents[3] / "tmp"
    assert list(tmp_dir.iterdir()) == [], "a staging file was left behind"
