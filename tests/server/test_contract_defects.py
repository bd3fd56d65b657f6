"""Regressions of issue 11: neutral block validators, deep JSON nesting, `Range: bytes=-0`, and
HTTP parser errors answered as JSON (raw sockets against a real server process)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from cloudfs_server.http import contract
from cloudfs_server.http.app import META, ServerConfig, create_app

from tests.server.conftest import BOTH_ENGINES, AppUser
from tests.server.helpers import bid
from tests.support import ServerProcess, User

BLOCK = b"shared bytes"


@pytest.mark.asyncio
async def test_block_answers_carry_no_trace_of_who_stored_it_when(
    ann: AppUser, client: TestClient
) -> None:
    block_id = await ann.put_block(BLOCK)
    async with client.get(f"/v1/blocks/{block_id}", headers=ann.headers()) as resp:
        assert resp.status == 200 and await resp.read() == BLOCK
        assert resp.headers.get("ETag") == f'"{block_id}"'
        assert "Last-Modified" not in resp.headers
    # The file's mtime must not be observable through conditional requests either.
    for header in ("If-Modified-Since", "If-Unmodified-Since"):
        for when in ("Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 01 Jan 2100 00:00:00 GMT"):
            headers = ann.headers({header: when})
            async with client.get(f"/v1/blocks/{block_id}", headers=headers) as resp:
                assert resp.status == 200, (header, when, resp.status)
    headers = ann.headers({"If-None-Match": f'"{block_id}"'})
    async with client.get(f"/v1/blocks/{block_id}", headers=headers) as resp:
        assert resp.status == 304 and resp.headers["ETag"] == f'"{block_id}"'
    headers = ann.headers({"Range": "bytes=0-5", "If-Range": f'"{block_id}"'})
    async with client.get(f"/v1/blocks/{block_id}", headers=headers) as resp:
        assert resp.status == 206 and await resp.read() == BLOCK[:6]
    headers = ann.headers({"Range": "bytes=0-5", "If-Range": "Fri, 01 Jan 2100 00:00:00 GMT"})
    async with client.get(f"/v1/blocks/{block_id}", headers=headers) as resp:
        assert resp.status == 200 and await resp.read() == BLOCK


@pytest.mark.asyncio
@pytest.mark.parametrize("header", ["bytes=-0", "bytes=-00"])
async def test_empty_suffix_range_is_416(ann: AppUser, header: str) -> None:
    block_id = await ann.put_block(BLOCK)
    status, body = await ann.call("GET", f"/v1/blocks/{block_id}", headers={"Range": header})
    assert (status, body["error"], body["size"]) == (416, "range_not_satisfiable", len(BLOCK))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "payload", [b"[" * 100_000, b'{"a":' * 50_000, b'{"name": ' + b"[" * 100_000]
)
async def test_deeply_nested_json_is_400_on_every_json_route(
    ann: AppUser, client: TestClient, payload: bytes
) -> None:
    routes = [r for r in client.app[contract.ROUTE_TABLE] if r.body is not None]
    assert len(routes) >= 12
    for route in routes:
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", "1", route.path).replace(
            "/v1/nodes/1", f"/v1/nodes/{ann.root}"
        )
        status, body = await ann.call(
            route.method, path, data=payload, headers={"Content-Type": "application/json"}
        )
        assert (status, body["error"]) == (400, "bad_request"), (route.name, body)


def _raw(server: ServerProcess, request: bytes) -> tuple[int, str, bytes]:
    """Send raw bytes; return (status, Content-Type, body) of the answer."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), body


@pytest.mark.parametrize(
    "request_bytes",
    [
        "GET /v1/nodes/é HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"POST /v1/blocks/missing HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /v1/blocks/missing HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}",
        b"POST /v1/blocks/missing HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["non-ascii-path", "header-over-8k", "bad-length", "two-lengths", "te-and-cl"],
)
def test_http_parser_errors_answer_json_and_log_one_line(
    server: ServerProcess, alice: User, request_bytes: bytes
) -> None:
    before = server.log_path.read_text().count("\n")
    status, ctype, body = _raw(server, request_bytes)
    assert 400 <= status < 500 and ctype.startswith("application/json"), (status, ctype, body)
    answer = json.loads(body)
    assert answer["error"] in ("bad_request", "too_large") and answer["message"], answer
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new = server.log_path.read_text().splitlines()[before:]
        if any("bad HTTP request" in line for line in new):
            break
        time.sleep(0.05)
    new = server.log_path.read_text().splitlines()[before:]
    assert [line for line in new if "bad HTTP request" in line], new
    assert "Traceback" not in "\n".join(new), new
    # The server is still fine.
    assert server.request("GET", "/v1/me", alice)[0] == 200


# -- found by schemathesis (tests/server/test_schemathesis.py) ----------------------------------


def test_a_non_ascii_session_is_a_404_not_a_500(server: ServerProcess, alice: User) -> None:
    status, joined = server.request("POST", "/v1/devices", alice, {"device_name": "d"})
    assert status == 201
    path = f"/v1/devices/{joined['device_id']}/heartbeat"  # type: ignore[index]
    status, body = server.request("POST", path, alice, {"session": "é"})
    assert (status, body["error"]) == (404, "not_found"), body  # type: ignore[index]


@pytest.mark.asyncio
@pytest.mark.parametrize("query", ["blocks=null", "blocks=yes", "blocks=1&blocks=1"])
async def test_a_bad_blocks_flag_is_400(ann: AppUser, query: str) -> None:
    status, body = await ann.call("GET", f"/v1/nodes/{ann.root}?{query}")
    assert (status, body["error"]) == (400, "bad_request") and "blocks" in body["message"]


@pytest.mark.asyncio
async def test_405_names_the_allowed_methods(ann: AppUser) -> None:
    async with ann.client.request("TRACE", "/v1/trash", headers=ann.headers()) as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "GET"
        assert (await resp.json())["error"] == "method_not_allowed"


@pytest.mark.asyncio
async def test_a_layered_store_keeps_the_neutral_validators_and_the_empty_suffix_416(
    aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path
) -> None:
    """No local file (compress layer): the read() path answers with the same validators as
    sendfile, and the document lists the block store's 503 on both block routes."""
    app = create_app(ServerConfig(data_dir=tmp_path, synchronous="NORMAL", compress=True))
    client = await aiohttp_client(app)
    _info, token = await client.app[META].create_user("ann", None)
    auth = {"Authorization": f"Bearer {token}"}
    block_id = bid(BLOCK)
    async with client.put(f"/v1/blocks/{block_id}", data=BLOCK, headers=auth) as resp:
        assert resp.status == 201, await resp.text()
    async with client.get(f"/v1/blocks/{block_id}", headers=auth) as resp:
        assert resp.status == 200 and await resp.read() == BLOCK
        assert resp.headers.get("ETag") == f'"{block_id}"'
        assert "Last-Modified" not in resp.headers
    headers = {**auth, "Range": "bytes=0-5", "If-Range": "Fri, 01 Jan 2100 00:00:00 GMT"}
    async with client.get(f"/v1/blocks/{block_id}", headers=headers) as resp:
        assert resp.status == 200 and await resp.read() == BLOCK
    async with client.get(f"/v1/blocks/{block_id}", headers={**auth, "Range": "bytes=-0"}) as resp:
        assert resp.status == 416 and (await resp.json())["error"] == "range_not_satisfiable"
    async with client.get("/v1/openapi.json", headers=auth) as resp:
        paths = (await resp.json())["paths"]
    block = paths["/v1/blocks/{block_id}"]
    assert "503" in block["get"]["responses"] and "503" in block["put"]["responses"]


# -- found by schemathesis on PostgreSQL, whose text cannot hold NUL (psycopg: DataError, 500) ---


@pytest.mark.asyncio
@BOTH_ENGINES
async def test_a_nul_in_after_is_a_400_on_both_engines(ann: AppUser) -> None:
    await ann.mkdir(ann.root, "x")
    status, body = await ann.call("GET", f"/v1/nodes/{ann.root}/children?after=x%18%00%08")
    assert (status, body["error"]) == (400, "bad_request"), body
    assert "NUL" in body["message"], body


@pytest.mark.asyncio
@BOTH_ENGINES
async def test_a_nul_in_a_device_name_is_a_400_on_both_engines(ann: AppUser) -> None:
    status, body = await ann.call("POST", "/v1/devices", {"device_name": "lap\x00top"})
    assert (status, body["error"]) == (400, "bad_request"), body
    assert "NUL" in body["message"], body
    status, body = await ann.call("GET", "/v1/devices")
    assert (status, body) == (200, {"devices": []})


@pytest.mark.asyncio
@BOTH_ENGINES
async def test_a_nul_in_a_session_is_a_404_on_both_engines(ann: AppUser) -> None:
    status, joined = await ann.call("POST", "/v1/devices", {"device_name": "d"})
    assert status == 201, joined
    device = f"/v1/devices/{joined['device_id']}"
    for path, body in [
        ("/heartbeat", {"session": "a\x00b"}),
        ("/leave", {"session": "a\x00b"}),
        ("/blocks", {"session": "a\x00b", "add": [bid(b"x")]}),
        ("/request", {"session": "a\x00b", "block_id": bid(b"x")}),
    ]:
        status, answer = await ann.call("POST", device + path, body)
        assert (status, answer["error"]) == (404, "not_found"), (path, answer)
    status, beat = await ann.call("POST", device + "/heartbeat", {"session": joined["session"]})
    assert status == 200, beat
