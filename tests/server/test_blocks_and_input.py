"""Blocks, hash-as-capability, and bad input, through the aiohttp test client."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from tests.server.conftest import AppUser
from tests.server.helpers import bid

pytestmark = pytest.mark.asyncio

MiB = 1 << 20


async def test_block_of_another_user_is_unavailable_by_hash(ann: AppUser, ben: AppUser) -> None:
    secret = b"ben's secret block"
    block_id = await ben.put_block(secret)
    status, body = await ann.call("GET", f"/v1/blocks/{block_id}")
    assert (status, body["error"]) == (404, "not_found")
    status, body = await ann.call("HEAD", f"/v1/blocks/{block_id}")
    assert status == 404
    status, body = await ann.call("POST", "/v1/blocks/missing", {"block_ids": [block_id]})
    assert body == {"missing": [block_id]}
    status, body = await ann.call(
        "POST",
        f"/v1/nodes/{ann.root}/children",
        {"name": "f", "type": "file", "size": len(secret), "blocks": [[block_id, len(secret)]]},
    )
    assert (status, body["error"], body["missing"]) == (409, "missing_blocks", [block_id])
    # Uploading the same bytes makes it hers. The answer is the one for a block nobody had:
    # it must not confirm that someone else holds this content. Storage is still one file.
    status, body = await ann.call("PUT", f"/v1/blocks/{block_id}", data=secret)
    assert status == 201 and body["stored"] is True
    status, body = await ann.call("PUT", f"/v1/blocks/{block_id}", data=secret)
    assert status == 200 and body["stored"] is False
    assert await ann.call("GET", f"/v1/blocks/{block_id}") == (200, secret)
    status, _ = await ann.call("HEAD", f"/v1/blocks/{block_id}")
    assert status == 200


async def test_head_gives_length(ann: AppUser, client: TestClient) -> None:
    block_id = await ann.put_block(b"12345")
    async with client.head(f"/v1/blocks/{block_id}", headers=ann.headers()) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "5"


async def test_commit_of_never_uploaded_block_is_refused(ann: AppUser) -> None:
    f = await ann.create_file(ann.root, "f", b"abc")
    ghost = bid(b"never uploaded")
    status, body = await ann.call(
        "PUT",
        f"/v1/nodes/{f['id']}/content",
        {"base_version": 1, "size": 14, "blocks": [[ghost, 14]]},
    )
    assert (status, body["error"], body["missing"]) == (409, "missing_blocks", [ghost])
    assert await ann.read(f["id"]) == b"abc"


async def test_block_length_must_match_stored_size(ann: AppUser) -> None:
    block_id = await ann.put_block(b"abcdef")
    status, body = await ann.call(
        "POST",
        f"/v1/nodes/{ann.root}/children",
        {"name": "f", "type": "file", "size": 3, "blocks": [[block_id, 3]]},
    )
    assert (status, body["error"]) == (400, "bad_request") and block_id in body["message"]


async def test_block_body_limits(ann: AppUser, data_dir: Path) -> None:
    big = os.urandom(16 * MiB)
    status, body = await ann.call("PUT", f"/v1/blocks/{bid(big)}", data=big)
    assert status == 201 and body["size"] == 16 * MiB
    too_big = big + b"x"
    status, body = await ann.call("PUT", f"/v1/blocks/{bid(too_big)}", data=too_big)
    assert (status, body["error"]) == (413, "too_large")
    assert list((data_dir / "tmp").iterdir()) == []


async def test_chunked_oversize_block_is_refused_and_leaves_nothing(
    ann: AppUser, client: TestClient, data_dir: Path
) -> None:
    async def body():  # no Content-Length: the limit is enforced while streaming
        for _ in range(17):
            yield b"\0" * MiB

    async with client.put(f"/v1/blocks/{bid(b'x')}", data=body(), headers=ann.headers()) as resp:
        assert resp.status == 413 and (await resp.json())["error"] == "too_large"
    assert list((data_dir / "tmp").iterdir()) == []
    block_id = bid(b"x")
    assert not (data_dir / "blocks" / block_id[:2] / block_id[2:4]).exists()


async def test_hash_mismatch_stores_nothing(ann: AppUser, data_dir: Path) -> None:
    block_id = bid(b"the real bytes")
    status, body = await ann.call("PUT", f"/v1/blocks/{block_id}", data=b"other bytes")
    assert (status, body["error"]) == (400, "hash_mismatch")
    assert not (data_dir / "blocks" / block_id[:2] / block_id[2:4] / block_id).exists()
    assert list((data_dir / "tmp").iterdir()) == []
    status, body = await ann.call("POST", "/v1/blocks/missing", {"block_ids": [block_id]})
    assert body == {"missing": [block_id]}


@pytest.mark.parametrize(
    ("method", "path", "payload", "code", "needle"),
    [
        ("POST", "/v1/blocks/missing", b"{not json", "bad_request", "JSON"),
        ("POST", "/v1/blocks/missing", b"[1, 2]", "bad_request", "object"),
        ("POST", "/v1/blocks/missing", b'{"block_ids": "abc"}', "bad_request", "block_ids"),
        ("POST", "/v1/blocks/missing", b'{"block_ids": ["ABC"]}', "bad_block_id", "hex"),
        ("POST", "/v1/blocks/missing", b"{}", "bad_request", "block_ids"),
        ("POST", "/v1/nodes/ROOT/children", b'{"name": "a"}', "bad_request", "type"),
        (
            "POST",
            "/v1/nodes/ROOT/children",
            b'{"name": "a", "type": "fifo"}',
            "bad_request",
            "type",
        ),
        (
            "POST",
            "/v1/nodes/ROOT/children",
            b'{"name": "a", "type": "dir", "mode": "x"}',
            "bad_request",
            "mode",
        ),
        (
            "POST",
            "/v1/nodes/ROOT/children",
            b'{"name": "a", "type": "dir", "mode": true}',
            "bad_request",
            "mode",
        ),
        (
            "POST",
            "/v1/nodes/ROOT/children",
            b'{"name": "a", "type": "file", "size": 3, "blocks": []}',
            "bad_request",
            "size",
        ),
        (
            "POST",
            "/v1/nodes/ROOT/children",
            b'{"name": "a", "type": "file", "size": 1, "blocks": [["zz", 1]]}',
            "bad_block_id",
            "hex",
        ),
        (
            "POST",
            "/v1/nodes/ROOT/children",
            b'{"name": "a", "type": "dir", "bogus": 1}',
            "bad_request",
            "bogus",
        ),
        ("POST", "/v1/nodes/ROOT/move", b'{"parent": "1", "name": "x"}', "bad_request", "parent"),
        (
            "POST",
            "/v1/nodes/ROOT/move",
            b'{"parent": 1, "name": "x", "replace": 1}',
            "bad_request",
            "replace",
        ),
        (
            "PUT",
            "/v1/nodes/ROOT/content",
            b'{"size": 0, "blocks": []}',
            "bad_request",
            "base_version",
        ),
        ("GET", "/v1/changes?cursor=abc", None, "bad_request", "cursor"),
        ("GET", "/v1/changes?wait=61", None, "bad_request", "wait"),
        ("GET", "/v1/changes?limit=-1", None, "bad_request", "limit"),
        ("GET", "/v1/nodes/ROOT/lookup", None, "bad_request", "name"),
        ("GET", "/v1/blocks/" + "g" * 64, None, "bad_block_id", "hex"),
        ("PUT", "/v1/blocks/..%2F..%2Fmeta.sqlite3", b"x", "bad_block_id", "hex"),
    ],
)
async def test_bad_input_gets_400_with_json_naming_the_problem(
    ann: AppUser, method: str, path: str, payload: bytes | None, code: str, needle: str
) -> None:
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    status, body = await ann.call(
        method, path.replace("ROOT", str(ann.root)), data=payload, headers=headers
    )
    assert status == 400, body
    assert body["error"] == code and needle in body["message"], body


async def test_json_body_over_32_mib_is_413(ann: AppUser) -> None:
    payload = b'{"block_ids": ["' + b"a" * (32 * MiB) + b'"]}'
    status, body = await ann.call(
        "POST", "/v1/blocks/missing", data=payload, headers={"Content-Type": "application/json"}
    )
    assert (status, body["error"]) == (413, "too_large")


async def test_too_many_ids_and_long_device(ann: AppUser) -> None:
    status, body = await ann.call("POST", "/v1/blocks/missing", {"block_ids": ["a" * 64] * 10001})
    assert status == 400 and "10000" in body["message"]
    status, body = await ann.call("GET", "/v1/me", headers={"X-Cloudfs-Device": "d" * 256})
    assert status == 200  # the device only matters where it is recorded
    status, body = await ann.call(
        "POST",
        f"/v1/nodes/{ann.root}/children",
        {"name": "x", "type": "dir"},
        headers={"X-Cloudfs-Device": "d" * 256},
    )
    assert status == 400 and "X-Cloudfs-Device" in body["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/blocks/../../meta.sqlite3",
        "/v1/blocks/%2e%2e%2f%2e%2e%2fmeta.sqlite3",
        "/v1/blocks/..%2F..%2Fgc.lock",
        "/v1/nodes/1%2F..%2F..",
        "/v1/blocks/" + "a" * 64 + "%00",
    ],
)
async def test_path_traversal_never_reaches_outside(
    ann: AppUser, client: TestClient, data_dir: Path, path: str
) -> None:
    def tree() -> set[Path]:
        return {p.relative_to(data_dir) for p in data_dir.rglob("*")}

    before = tree()
    outside = data_dir.parent / "outside.txt"
    outside.write_bytes(b"must stay secret")
    for method in ("GET", "PUT", "HEAD"):
        async with client.request(method, path, headers=ann.headers(), data=b"x") as resp:
            raw = await resp.read()
            assert b"must stay secret" not in raw
            assert resp.status in (400, 401, 404, 405), (method, path, resp.status)
    assert outside.read_bytes() == b"must stay secret"
    after = tree()
    assert after - before <= {Path("meta.sqlite3-shm"), Path("meta.sqlite3-wal")}


@pytest.mark.parametrize(
    ("header", "status", "expected"),
    [
        ("bytes=1-3", 206, b"ell"),
        ("bytes=3-", 206, b"lo"),
        ("bytes=-2", 206, b"lo"),
        ("bytes=2-99", 206, b"llo"),
        ("bytes=5-9", 416, None),
        ("bytes=abc", 416, None),
        ("bytes=0-1,3-4", 416, None),
        ("items=0-1", 416, None),
    ],
)
async def test_block_ranges(
    ann: AppUser, client: TestClient, header: str, status: int, expected: bytes | None
) -> None:
    block_id = await ann.put_block(b"hello")
    async with client.get(f"/v1/blocks/{block_id}", headers=ann.headers({"Range": header})) as resp:
        assert resp.status == status
        if expected is not None:
            assert await resp.read() == expected
        else:
            body = await resp.json()
            assert body["error"] == "range_not_satisfiable" and body["size"] == 5
            assert resp.headers["Content-Range"] == "bytes */5"
