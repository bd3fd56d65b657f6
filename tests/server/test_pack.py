"""POST /v1/blocks/pack in-process: records stored as PUT stores them, verification, limits,
and the privacy rule (the answer and its timing do not tell whether another user has a block)."""

from __future__ import annotations

import os
import statistics
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cloudfs_server.config import ServerConfig
from cloudfs_server.http.app import create_app
from cloudfs_server.http.batch import PACK_TYPE
from cloudfs_server.http.state import BLOCKS, META

from tests.server.conftest import AppUser
from tests.server.helpers import bid

pytestmark = pytest.mark.asyncio


def record(data: bytes, block_id: str | None = None, length: int | None = None) -> bytes:
    digest = bytes.fromhex(block_id or bid(data))
    return digest + struct.pack(">I", len(data) if length is None else length) + data


async def pack(user: AppUser, body: bytes, **headers: str) -> tuple[int, Any]:
    return await user.call(
        "POST", "/v1/blocks/pack", data=body, headers={"Content-Type": PACK_TYPE, **headers}
    )


def tmp_files(data_dir: Path) -> list[Path]:
    return list((data_dir / "tmp").iterdir())


async def test_pack_stores_every_record_like_put_and_is_idempotent(
    ann: AppUser, client: TestClient, data_dir: Path
) -> None:
    blobs = [b"one", b"two", os.urandom(5000), b"one"]
    status, body = await pack(ann, b"".join(record(b) for b in blobs))
    assert status == 200, body
    assert body["blocks"] == [
        {"block_id": bid(b"one"), "size": 3, "stored": True},
        {"block_id": bid(b"two"), "size": 3, "stored": True},
        {"block_id": bid(blobs[2]), "size": 5000, "stored": True},
        {"block_id": bid(b"one"), "size": 3, "stored": False},  # the record before stored it
    ]
    for blob in blobs:
        assert await ann.call("GET", f"/v1/blocks/{bid(blob)}") == (200, blob)
    status, body = await pack(ann, record(b"two") + record(b"three"))
    assert [b["stored"] for b in body["blocks"]] == [False, True]
    status, body = await ann.call("PUT", f"/v1/blocks/{bid(b'three')}", data=b"three")
    assert status == 200 and body["stored"] is False  # PUT and pack share one availability
    assert await pack(ann, b"") == (200, {"blocks": []})
    assert tmp_files(data_dir) == []
    report = await client.app[META].check(False, set())
    assert report.errors == []


async def test_hash_mismatch_names_the_record_and_stores_nothing_of_it(
    ann: AppUser, data_dir: Path
) -> None:
    good, claimed = b"good", bid(b"claimed")
    status, body = await pack(ann, record(good) + record(b"forged", block_id=claimed))
    assert status == 400 and body["error"] == "hash_mismatch", body
    assert body["block_id"] == claimed and body["actual"] == bid(b"forged")
    assert body["message"].startswith("record 1: ")
    status, _ = await ann.call("HEAD", f"/v1/blocks/{claimed}")
    assert status == 404
    assert tmp_files(data_dir) == []
    # Uploads are idempotent: the client simply sends the good records again.
    status, body = await pack(ann, record(good))
    assert status == 200 and body["blocks"][0]["block_id"] == bid(good)


async def test_truncated_records_are_bad_requests(ann: AppUser, data_dir: Path) -> None:
    whole = record(b"abcdef")
    for cut, words in [(10, "header needs 36 bytes, 10 are left"), (38, "6 bytes announced")]:
        status, body = await pack(ann, record(b"first") + whole[:cut])
        assert status == 400 and body["error"] == "bad_request", body
        assert body["message"].startswith("record 1") and words in body["message"], body
    status, body = await pack(ann, record(b"abc", length=1000))
    assert status == 400 and "truncated" in body["message"]
    assert tmp_files(data_dir) == []
    status, _ = await ann.call("HEAD", f"/v1/blocks/{bid(b'first')}")
    assert status == 404  # a malformed pack is refused before anything is stored


async def test_pack_limits(ann: AppUser, client: TestClient) -> None:
    status, body = await pack(ann, b"".join(record(str(i).encode()) for i in range(1001)))
    assert status == 413 and body["error"] == "too_large" and "1000 records" in body["message"]
    status, body = await pack(ann, b"".join(record(str(i).encode()) for i in range(1000)))
    assert status == 200 and len(body["blocks"]) == 1000
    status, body = await pack(ann, b"\0" * ((16 << 20) + 1))  # refused by its Content-Length
    assert status == 413 and body["error"] == "too_large"
    status, body = await ann.call(
        "POST", "/v1/blocks/pack", data=record(b"x"), headers={"Content-Type": "text/plain"}
    )
    assert status == 400 and PACK_TYPE in body["message"]

    async def endless() -> AsyncIterator[bytes]:  # chunked: refused while streaming
        chunk = b"\0" * (1 << 20)
        for _ in range(17):
            yield chunk

    async with client.post(
        "/v1/blocks/pack", data=endless(), headers=ann.headers({"Content-Type": PACK_TYPE})
    ) as resp:
        assert resp.status == 413 and (await resp.json())["error"] == "too_large"


async def test_another_users_block_looks_new_and_costs_the_same(ann: AppUser, ben: AppUser) -> None:
    size = 1 << 20
    shared = [os.urandom(size) for _ in range(8)]
    status, body = await pack(ben, b"".join(record(b) for b in shared))
    assert status == 200 and all(b["stored"] for b in body["blocks"])
    status, body = await pack(ann, b"".join(record(b) for b in shared))
    assert status == 200 and all(b["stored"] for b in body["blocks"])  # as for a new block
    status, body = await ann.call("POST", "/v1/blocks/missing", {"block_ids": [bid(shared[0])]})
    assert body == {"missing": []}

    # Timing: packs of blocks only another user holds vs packs of blocks nobody holds, taken in
    # alternation so load on the machine hits both; their medians must agree within noise.
    async def timed(blobs: list[bytes]) -> float:
        started = time.perf_counter()
        status, _ = await pack(ann, b"".join(record(b) for b in blobs))
        assert status == 200
        return time.perf_counter() - started

    others, fresh = [], []
    for _ in range(5):
        ben_only = [os.urandom(size) for _ in range(8)]
        assert (await pack(ben, b"".join(record(b) for b in ben_only)))[0] == 200
        others.append(await timed(ben_only))
        fresh.append(await timed([os.urandom(size) for _ in range(8)]))
    ratio = statistics.median(others) / statistics.median(fresh)
    assert 0.5 < ratio < 2.0, (others, fresh)


async def test_pack_on_a_layered_s3_store_stores_like_put(
    aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path, bucket_url: str
) -> None:
    """compress + encrypt over S3 (moto): no local files, staged blocks held by the layers; the
    pack route goes through the same stage/publish/discard as PUT, so both users' answers and
    the stored blocks match what PUT gives."""
    key_file = tmp_path / "key"
    key_file.write_bytes(os.urandom(32))
    config = ServerConfig(
        data_dir=tmp_path / "data",
        synchronous="NORMAL",
        blocks=(bucket_url,),
        compress=True,
        encryption_key_file=key_file,
    )
    client = await aiohttp_client(create_app(config))
    users = []
    for name in ("ann", "ben"):
        info, token = await client.app[META].create_user(name, None)
        users.append(AppUser(client, token, info.root))
    ann, ben = users
    blobs = [b"a" * 3000, os.urandom(4000)]
    body = b"".join(record(b) for b in blobs)
    for user in (ann, ben):  # ben's first pack stores too: another user's copy is not revealed
        status, answer = await pack(user, body)
        assert status == 200, answer
        assert [b["stored"] for b in answer["blocks"]] == [True, True]
        for blob in blobs:
            assert await user.call("GET", f"/v1/blocks/{bid(blob)}") == (200, blob)
    status, answer = await pack(ann, body)
    assert [b["stored"] for b in answer["blocks"]] == [False, False]
    status, answer = await ann.call("PUT", f"/v1/blocks/{bid(blobs[0])}", data=blobs[0])
    assert status == 200 and answer["stored"] is False
    status, answer = await pack(ann, record(b"x" * 10, block_id=bid(b"y" * 10)))
    assert status == 400 and answer["error"] == "hash_mismatch"
    assert sorted(await client.app[BLOCKS].list_ids()) == sorted(bid(b) for b in blobs)
    report = await client.app[META].check(False, set())
    assert report.errors == []


async def test_other_methods_of_the_pack_path_are_405_not_a_block_id(ann: AppUser) -> None:
    # /v1/blocks/{block_id} used to take "pack" (and "missing") as a block id: 400 bad_block_id.
    for method in ("PUT", "GET"):
        for path in ("/v1/blocks/pack", "/v1/blocks/missing"):
            status, body = await ann.call(method, path, data=b"x")
            assert status == 405 and body["error"] == "method_not_allowed", (method, path, body)
