"""Change log and long-poll, quota and usage, and the OpenAPI document, via the test client."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from cloudfs_server.http import contract
from cloudfs_server.http.app import META, ServerConfig, create_app

from tests.server.conftest import BOTH_ENGINES, AppUser

pytestmark = [pytest.mark.asyncio, BOTH_ENGINES]


async def test_long_poll_answers_promptly_on_a_change(ann: AppUser) -> None:
    status, latest = await ann.call("GET", "/v1/changes?cursor=latest")
    assert status == 200 and latest == {"changes": [], "cursor": 0, "more": False}
    poll = asyncio.create_task(ann.call("GET", "/v1/changes?cursor=0&wait=20"))
    await asyncio.sleep(0.3)
    assert not poll.done()
    started = time.monotonic()
    await ann.mkdir(ann.root, "wake-up")
    status, body = await asyncio.wait_for(poll, 5)
    elapsed = time.monotonic() - started
    assert status == 200 and [c["name"] for c in body["changes"]] == ["wake-up"]
    assert body["cursor"] == 1
    assert elapsed < 0.5, f"long-poll answered {elapsed:.3f} s after the change"


async def test_long_poll_times_out_and_ignores_other_users(ann: AppUser, ben: AppUser) -> None:
    poll = asyncio.create_task(ann.call("GET", "/v1/changes?cursor=0&wait=0.6"))
    started = time.monotonic()
    await asyncio.sleep(0.1)
    await ben.mkdir(ben.root, "not-for-ann")
    status, body = await poll
    elapsed = time.monotonic() - started
    assert status == 200 and body == {"changes": [], "cursor": 0, "more": False}
    assert 0.55 <= elapsed < 3, elapsed


async def test_changes_paging_fields_and_cursor_expired(ann: AppUser, client: TestClient) -> None:
    d = await ann.mkdir(ann.root, "d")
    f = await ann.create_file(d["id"], "f", b"abc")
    await ann.commit(f["id"], 1, b"abcd")
    await ann.call("PATCH", f"/v1/nodes/{f['id']}", {"mode": 0o600})
    await ann.call("POST", f"/v1/nodes/{f['id']}/move", {"parent": ann.root, "name": "g"})
    await ann.call("DELETE", f"/v1/nodes/{f['id']}")
    status, page = await ann.call("GET", "/v1/changes?cursor=0&limit=4")
    assert [c["seq"] for c in page["changes"]] == [1, 2, 3, 4] and page["more"] is True
    assert page["cursor"] == 4
    status, page = await ann.call("GET", "/v1/changes?cursor=4")
    assert [c["op"] for c in page["changes"]] == ["move", "delete"] and page["more"] is False
    move = page["changes"][0]
    assert move == {
        "seq": 5,
        "op": "move",
        "node": f["id"],
        "type": "file",
        "parent": ann.root,
        "name": "g",
        "version": 2,
        "device": "test",
        "time_ns": move["time_ns"],
        "old_parent": d["id"],
        "old_name": "f",
    }
    dropped = await client.app[META].compact_log(keep_last=2, older_than_ns=None)
    assert dropped == 4
    status, body = await ann.call("GET", "/v1/changes?cursor=3")
    assert status == 410 and body["error"] == "cursor_expired"
    assert body["oldest"] == 5 and body["latest"] == 6
    status, page = await ann.call("GET", "/v1/changes?cursor=4")
    assert status == 200 and len(page["changes"]) == 2
    status, body = await ann.call("GET", "/v1/changes?cursor=99")
    assert status == 410


async def test_quota_refuses_growth_with_507(
    make_user: Callable[..., Awaitable[AppUser]],
) -> None:
    quo = await make_user("quo", quota=10)
    f = await quo.create_file(quo.root, "f", b"12345678")
    status, body = await quo.commit(f["id"], 1, b"123456789ab")
    assert status == 507 and body["error"] == "quota_exceeded"
    assert body["quota_bytes"] == 10 and body["used_bytes"] == 8
    status, body = await quo.call(
        "POST",
        f"/v1/nodes/{quo.root}/children",
        {"name": "g", "type": "file", "size": 3, "blocks": await quo.upload(b"xyz")},
    )
    assert status == 507
    status, _ = await quo.commit(f["id"], 1, b"1234567890")  # exactly at the quota
    assert status == 200
    status, _ = await quo.commit(f["id"], 2, b"12")  # shrinking is always allowed
    assert status == 200
    status, me = await quo.call("GET", "/v1/me")
    assert me["quota_bytes"] == 10
    # Trash does not count; restoring it counts again.
    await quo.call("DELETE", f"/v1/nodes/{f['id']}")
    g = await quo.create_file(quo.root, "g", b"123456789")
    status, body = await quo.call("POST", f"/v1/trash/{f['id']}/restore")
    assert (status, body["error"]) == (507, "quota_exceeded")
    status, _ = await quo.call("POST", f"/v1/nodes/{g['id']}/versions/1/restore")
    assert status == 200  # same size: no growth


async def test_usage_counts_logical_stored_and_dedup(ann: AppUser) -> None:
    d = await ann.mkdir(ann.root, "d")
    await ann.create_file(d["id"], "a", b"abcdabcd")  # two identical 4-byte blocks
    await ann.create_file(ann.root, "b", b"abcd")
    _, usage = await ann.call("GET", "/v1/usage")
    assert usage == {
        "logical_bytes": 12,
        "stored_bytes": 4,
        "dedup_ratio": 3.0,
        "quota_bytes": None,
        "files": 2,
        "directories": 1,
    }


async def test_openapi_documents_every_route_and_only_those(
    ann: AppUser, client: TestClient
) -> None:
    status, doc = await ann.call("GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    registered = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path)
        registered.add((route.method, path))
    assert registered == documented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            for name in re.findall(r"\{(\w+)\}", path):
                assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"])
            if method in ("post", "put", "patch") and "requestBody" not in op:
                assert path.endswith("/restore") and "versions" in path, (method, path)
    assert doc == contract.document(client.app[contract.ROUTE_TABLE])


async def test_openapi_lists_store_errors_on_every_token_route_and_metrics_with_its_own_token(
    ann: AppUser,
) -> None:
    # Every route behind the user's token reads the stores: PostgreSQL/S3 away → 503 with
    # Retry-After, a full disk → 507 server_full, next to the route's own 507 codes.
    status, doc = await ann.call("GET", "/v1/openapi.json")
    assert status == 200
    token_routes = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            responses, where = op["responses"], (method, path)
            if where == ("post", "/v1/login"):  # no token, but it reads and writes the stores
                assert op["security"] == [], where
                assert responses["429"]["headers"]["Retry-After"]["required"] is True, where
                assert {"401", "503", "507"} <= set(responses), where
                continue
            if op["security"] != [{"bearer": []}]:
                assert "503" not in responses and "507" not in responses, where
                continue
            token_routes += 1
            for code in ("401", "503", "507"):
                error = responses[code]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/Error"}, where
            assert "store_unavailable" in responses["503"]["description"], where
            assert responses["503"]["headers"]["Retry-After"]["required"] is True, where
            assert "server_full" in responses["507"]["description"], where
    operations = sum(len(ops) for ops in doc["paths"].values())
    assert token_routes == operations - 3  # all but GET /healthz, GET /metrics, POST /v1/login
    commit = doc["paths"]["/v1/nodes/{node_id}/content"]["put"]["responses"]["507"]
    assert commit["description"] == "error: quota_exceeded, server_full"
    metrics = doc["paths"]["/metrics"]["get"]
    assert metrics["security"] == [{"metricsToken": []}]
    assert doc["components"]["securitySchemes"]["metricsToken"] == {
        "type": "http",
        "scheme": "bearer",
    }
    assert set(metrics["responses"]) == {"200", "401", "404"}
    assert metrics["responses"]["200"]["content"] == {"text/plain": {"schema": {"type": "string"}}}


async def test_busy_server_answers_idle_polls_at_once_with_a_back_off(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    tmp_path: Path,
    app_config: Callable[..., ServerConfig],
) -> None:
    app = create_app(app_config(tmp_path, max_long_polls=1))
    client = await aiohttp_client(app)
    info, token = await app[META].create_user("u", None)
    user = AppUser(client, token, info.root)
    held = asyncio.create_task(user.call("GET", "/v1/changes?cursor=0&wait=20"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    status, body = await user.call("GET", "/v1/changes?cursor=0&wait=20")
    assert status == 200 and body["changes"] == [] and 5 <= body["retry_after_s"] <= 10
    assert time.monotonic() - started < 2
    await user.mkdir(info.root, "x")
    status, body = await asyncio.wait_for(held, 5)
    assert [c["name"] for c in body["changes"]] == ["x"] and "retry_after_s" not in body


async def test_one_user_holding_their_long_polls_does_not_delay_another_users_feed(
    aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path
) -> None:
    config = ServerConfig(
        data_dir=tmp_path, synchronous="NORMAL", max_long_polls=10, max_long_polls_per_user=3
    )
    app = create_app(config)
    client = await aiohttp_client(app)
    users = []
    for name in ("ann", "ben"):
        info, token = await app[META].create_user(name, None)
        users.append(AppUser(client, token, info.root))
    ann, ben = users
    # ann opens as many long-polls as the whole server allows: only her share is held.
    held = [asyncio.create_task(ann.call("GET", "/v1/changes?cursor=0&wait=30")) for _ in range(10)]
    await asyncio.sleep(0.5)
    answered = [t for t in held if t.done()]
    assert len(answered) == 7, f"{len(answered)} of ann's 10 polls answered at once, want 7"
    assert all(t.result()[1]["retry_after_s"] > 0 for t in answered)
    # ben's long-poll is held (not told to back off) and sees his change at once.
    ben_poll = asyncio.create_task(ben.call("GET", "/v1/changes?cursor=0&wait=30"))
    await asyncio.sleep(0.2)
    assert not ben_poll.done(), ben_poll.result()
    started = time.monotonic()
    await ben.mkdir(ben.root, "live")
    status, body = await asyncio.wait_for(ben_poll, 5)
    assert status == 200 and [c["name"] for c in body["changes"]] == ["live"], body
    assert "retry_after_s" not in body and time.monotonic() - started < 2
    await ann.mkdir(ann.root, "x")  # releases ann's held polls
    for task in held:
        status, body = await asyncio.wait_for(task, 5)
        assert status == 200, body
