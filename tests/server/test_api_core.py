"""Core routes against a real `cloudfs-server` process: auth, blocks, nodes, commits, listing."""

from __future__ import annotations

from tests.server.helpers import Api, bid
from tests.support import ServerProcess, User


def test_healthz_needs_no_token_and_v1_does(server: ServerProcess, alice: User) -> None:
    assert server.request("GET", "/healthz") == (200, {"ok": True})
    status, body = server.request("GET", "/v1/me")
    assert status == 401 and body["error"] == "unauthorized"
    status, body = server.request("GET", "/v1/me", headers={"Authorization": "Bearer nope"})
    assert status == 401 and body["error"] == "unauthorized"
    status, body = server.request("GET", "/v1/me", alice)
    assert status == 200
    assert body["user"] == "alice" and body["quota_bytes"] is None and body["root"] >= 1


def test_block_upload_is_verified_idempotent_and_ranged(server: ServerProcess, alice: User) -> None:
    api = Api(server, alice)
    data = b"hello world" * 1000
    block_id = bid(data)
    assert api.call("PUT", f"/v1/blocks/{block_id}", data=data) == (
        201,
        {"block_id": block_id, "size": len(data), "stored": True},
    )
    assert api.call("PUT", f"/v1/blocks/{block_id}", data=data) == (
        200,
        {"block_id": block_id, "size": len(data), "stored": False},
    )
    assert api.call("GET", f"/v1/blocks/{block_id}") == (200, data)
    assert api.call("GET", f"/v1/blocks/{block_id}", headers={"Range": "bytes=6-10"}) == (
        206,
        b"world",
    )
    status, body = api.call("PUT", f"/v1/blocks/{bid(b'other')}", data=b"not other")
    assert status == 400 and body["error"] == "hash_mismatch"
    status, body = api.call("GET", f"/v1/blocks/{bid(b'other')}")
    assert status == 404 and body["error"] == "not_found"
    status, body = api.call("PUT", "/v1/blocks/ABC", data=b"x")
    assert status == 400 and body["error"] == "bad_block_id"
    status, body = api.call(
        "POST", "/v1/blocks/missing", {"block_ids": [bid(b"zz"), block_id, bid(b"yy")]}
    )
    assert status == 200 and body == {"missing": [bid(b"zz"), bid(b"yy")]}


def test_create_commit_list_and_conflict(server: ServerProcess, alice: User) -> None:
    api = Api(server, alice, device="laptop")
    docs = api.mkdir(api.root, "docs")
    f = api.create_file(docs["id"], "a.txt", b"hello")
    assert f["version"] == 1 and f["size"] == 5 and f["committed_by"] == "laptop"
    status, node = api.commit(f["id"], 1, b"hello, world")
    assert status == 200 and node["version"] == 2 and node["size"] == 12
    status, body = api.commit(f["id"], 1, b"stale edit")
    assert status == 409 and body["error"] == "version_conflict"
    assert body["current_version"] == 2 and body["committed_by"] == "laptop"
    assert api.read(f["id"]) == b"hello, world"
    status, listing = api.call("GET", f"/v1/nodes/{docs['id']}/children")
    assert status == 200 and [e["name"] for e in listing["entries"]] == ["a.txt"]
    status, found = api.call("GET", f"/v1/nodes/{docs['id']}/lookup?name=a.txt")
    assert status == 200 and found["id"] == f["id"]
    status, changes = api.call("GET", "/v1/changes?cursor=0")
    assert [c["op"] for c in changes["changes"]] == ["create", "create", "modify"]
    assert changes["cursor"] == 3
