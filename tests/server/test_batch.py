"""POST /v1/batch in-process: one transaction, labels, per-op errors equal to the single routes'."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cloudfs_server.http.state import META, NOTIFIER

from tests.server.conftest import BOTH_ENGINES, AppUser
from tests.server.helpers import bid

pytestmark = [pytest.mark.asyncio, BOTH_ENGINES]


async def batch(user: AppUser, *ops: dict[str, Any]) -> list[dict[str, Any]]:
    status, body = await user.call("POST", "/v1/batch", {"ops": list(ops)})
    assert status == 200, body
    assert len(body["results"]) == len(ops)
    return list(body["results"])


async def cursor(user: AppUser) -> int:
    status, body = await user.call("GET", "/v1/changes?cursor=latest")
    assert status == 200, body
    return int(body["cursor"])


async def changes(user: AppUser, since: int) -> list[dict[str, Any]]:
    status, body = await user.call("GET", f"/v1/changes?cursor={since}&limit=10000")
    assert status == 200, body
    return list(body["changes"])


async def consistent(client: TestClient) -> None:
    report = await client.app[META].check(False, set())
    assert report.errors == [], report.errors


async def test_thousand_creates_are_one_request_one_transaction_one_wakeup(
    ann: AppUser, client: TestClient, meta_engine: str
) -> None:
    blocks = [[await ann.put_block(b"tiny"), 4]]
    meta = client.app[META]
    notifier = client.app[NOTIFIER]
    me = (await ann.call("GET", "/v1/me"))[1]
    before_groups = meta.groups_committed  # type: ignore[attr-defined]
    before_gen = notifier.generation(me["user_id"])
    before_seq = await cursor(ann)
    ops = [{"op": "create", "parent": ann.root, "name": "d", "type": "dir", "label": "d"}]
    ops += [
        {
            "op": "create",
            "parent": "d",
            "name": f"f{i:04}",
            "type": "file",
            "size": 4,
            "blocks": blocks,
        }
        for i in range(999)
    ]
    results = await batch(ann, *ops)
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:3]
    assert meta.groups_committed == before_groups + 1  # type: ignore[attr-defined]
    # PostgreSQL also echoes the transaction's one NOTIFY back through this server's LISTEN.
    expected = before_gen + (2 if meta_engine == "postgres" else 1)
    if meta_engine == "postgres":
        for _ in range(250):
            if notifier.generation(me["user_id"]) >= expected:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # time for any further NOTIFY to arrive
    assert notifier.generation(me["user_id"]) == expected
    d = results[0]["node"]["id"]
    assert {r["node"]["parent"] for r in results[1:]} == {d}
    status, listing = await ann.call("GET", f"/v1/nodes/{d}/children?limit=5000")
    assert status == 200 and len(listing["entries"]) == 999
    log = await changes(ann, before_seq)
    assert [c["seq"] for c in log] == list(range(before_seq + 1, before_seq + 1001))
    assert [c["op"] for c in log] == ["create"] * 1000
    assert [c["node"] for c in log] == [r["node"]["id"] for r in results]
    await consistent(client)


async def test_ops_count_limits_and_shape_errors_apply_nothing(
    ann: AppUser, client: TestClient
) -> None:
    good = {"op": "create", "parent": ann.root, "name": "kept-out", "type": "dir"}
    bad_bodies: list[tuple[Any, str]] = [
        ({"ops": "no"}, "'ops' must be a list"),
        ({"ops": []}, "1 to 1000"),
        ({"ops": [good] * 1001}, "1 to 1000"),
        ({"ops": [good], "extra": 1}, "unknown field"),
        ({"ops": [good, 7]}, "ops[1]: must be a JSON object"),
        ({"ops": [good, {"op": "chmod", "node": 1}]}, "ops[1]: 'op'"),
        ({"ops": [good, {"op": "delete"}]}, "ops[1]: missing field 'node'"),
        ({"ops": [good, {"op": "delete", "node": 1, "x": 2}]}, "ops[1]: unknown field"),
        ({"ops": [good, {"op": "delete", "node": True}]}, "ops[1]: 'node' must be"),
        ({"ops": [good, {"op": "delete", "node": 0}]}, "ops[1]: 'node' must be between"),
        ({"ops": [good, {"op": "delete", "node": "later"}]}, "not defined by an earlier op"),
        (
            {
                "ops": [
                    {**good, "label": "x"},
                    {"op": "create", "parent": ann.root, "name": "y", "type": "dir", "label": "x"},
                ]
            },
            "defined twice",
        ),
        (
            {"ops": [{**good, "label": "self", "parent": "self"}]},
            "not defined by an earlier op",
        ),
        ({"ops": [good, {**good, "name": "a/b"}]}, "ops[1]: 'name' must not contain '/'"),
        ({"ops": [good, {**good, "label": 5}]}, "ops[1]: 'label' must be a string"),
        (
            {"ops": [good, {"op": "setattr", "node": ann.root, "mode": "rw"}]},
            "ops[1]: 'mode' must be an integer",
        ),
    ]
    before = await cursor(ann)
    for body, message in bad_bodies:
        status, answer = await ann.call("POST", "/v1/batch", body)
        assert status == 400, (body, answer)
        assert answer["error"] in ("bad_request", "invalid_name"), answer
        assert message in answer["message"], (message, answer)
    status, answer = await ann.call("POST", "/v1/batch", {"ops": [{**good, "name": "a/b"}]})
    assert answer["error"] == "invalid_name" and answer["op"] == 0
    assert await cursor(ann) == before
    assert await ann.children(ann.root) == []
    await consistent(client)


async def test_labels_chain_and_a_failed_create_fails_its_dependents_only(
    ann: AppUser, client: TestClient
) -> None:
    taken = await ann.mkdir(ann.root, "taken")
    block = await ann.put_block(b"abcd")
    results = await batch(
        ann,
        {"op": "create", "parent": ann.root, "name": "new", "type": "dir", "label": "new"},
        {
            "op": "create",
            "parent": "new",
            "name": "f",
            "type": "file",
            "size": 4,
            "blocks": [[block, 4]],
            "label": "f",
        },
        {"op": "commit", "node": "f", "base_version": 1, "size": 0, "blocks": []},
        {"op": "setattr", "node": "f", "mode": 0o600, "atime_ns": 5},
        {"op": "create", "parent": ann.root, "name": "taken", "type": "dir", "label": "dup"},
        {"op": "create", "parent": "dup", "name": "inner", "type": "dir", "label": "inner"},
        {"op": "move", "node": "f", "parent": "inner", "name": "g"},
        {"op": "delete", "node": "inner"},
        {"op": "move", "node": "f", "parent": ann.root, "name": "g"},
    )
    new = results[0]["node"]
    assert results[0]["ok"] and new["parent"] == ann.root and new["type"] == "dir"
    f = results[1]["node"]
    assert f["parent"] == new["id"] and f["version"] == 1
    assert results[2]["ok"] and results[2]["node"]["version"] == 2
    assert results[3]["node"]["mode"] == 0o600 and results[3]["node"]["atime_ns"] == 5
    status, exists = await ann.call(
        "POST", f"/v1/nodes/{ann.root}/children", {"name": "taken", "type": "dir"}
    )
    assert status == 409
    assert results[4] == {"ok": False, "status": 409, **exists}
    assert results[4]["node"]["id"] == taken["id"]
    assert results[5]["ok"] is False and results[5]["status"] == 409
    assert results[5]["error"] == "dependency_failed" and results[5]["label"] == "dup"
    for failed in results[6:8]:
        assert failed["error"] == "dependency_failed" and failed["label"] == "inner"
    assert results[8]["ok"] and results[8]["replaced"] is None
    assert results[8]["node"]["name"] == "g" and results[8]["node"]["parent"] == ann.root
    assert sorted(await ann.children(ann.root)) == ["g", "new", "taken"]
    await consistent(client)


async def test_each_failing_op_answers_exactly_what_its_single_route_answers(
    make_user: Callable[..., Awaitable[AppUser]], client: TestClient
) -> None:
    ann = await make_user("ann", quota=8)
    d = await ann.mkdir(ann.root, "d")
    await ann.mkdir(d["id"], "sub")
    f = await ann.create_file(ann.root, "f", b"1234")
    link = (
        await ann.call(
            "POST",
            f"/v1/nodes/{ann.root}/children",
            {"name": "l", "type": "symlink", "target": "f"},
        )
    )[1]
    await ann.commit(f["id"], 1, b"12345")  # version 2
    unknown = bid(b"never uploaded")
    big = [[await ann.put_block(b"x" * 6), 6]]
    # (single request, the same op in a batch)
    cases: list[tuple[tuple[str, str, Any], dict[str, Any]]] = [
        (
            ("POST", f"/v1/nodes/{ann.root}/children", {"name": "d", "type": "dir"}),
            {"op": "create", "parent": ann.root, "name": "d", "type": "dir"},
        ),
        (
            ("POST", "/v1/nodes/999999/children", {"name": "x", "type": "dir"}),
            {"op": "create", "parent": 999999, "name": "x", "type": "dir"},
        ),
        (
            ("POST", f"/v1/nodes/{f['id']}/children", {"name": "x", "type": "dir"}),
            {"op": "create", "parent": f["id"], "name": "x", "type": "dir"},
        ),
        (
            (
                "POST",
                f"/v1/nodes/{ann.root}/children",
                {"name": "m", "type": "file", "size": 4, "blocks": [[unknown, 4]]},
            ),
            {
                "op": "create",
                "parent": ann.root,
                "name": "m",
                "type": "file",
                "size": 4,
                "blocks": [[unknown, 4]],
            },
        ),
        (
            (
                "POST",
                f"/v1/nodes/{ann.root}/children",
                {"name": "q", "type": "file", "size": 6, "blocks": big},
            ),
            {
                "op": "create",
                "parent": ann.root,
                "name": "q",
                "type": "file",
                "size": 6,
                "blocks": big,
            },
        ),
        (
            ("PUT", f"/v1/nodes/{f['id']}/content", {"base_version": 1, "size": 0, "blocks": []}),
            {"op": "commit", "node": f["id"], "base_version": 1, "size": 0, "blocks": []},
        ),
        (
            ("PUT", f"/v1/nodes/{d['id']}/content", {"base_version": 1, "size": 0, "blocks": []}),
            {"op": "commit", "node": d["id"], "base_version": 1, "size": 0, "blocks": []},
        ),
        (
            (
                "PUT",
                f"/v1/nodes/{link['id']}/content",
                {"base_version": 1, "size": 0, "blocks": []},
            ),
            {"op": "commit", "node": link["id"], "base_version": 1, "size": 0, "blocks": []},
        ),
        (
            (
                "PUT",
                f"/v1/nodes/{f['id']}/content",
                {"base_version": 2, "size": 12, "blocks": big * 2},
            ),
            {"op": "commit", "node": f["id"], "base_version": 2, "size": 12, "blocks": big * 2},
        ),
        (
            ("PATCH", "/v1/nodes/424242", {"mode": 0o600}),
            {"op": "setattr", "node": 424242, "mode": 0o600},
        ),
        (
            ("POST", f"/v1/nodes/{f['id']}/move", {"parent": ann.root, "name": "d"}),
            {"op": "move", "node": f["id"], "parent": ann.root, "name": "d"},
        ),
        (
            ("POST", f"/v1/nodes/{d['id']}/move", {"parent": d["id"], "name": "loop"}),
            {"op": "move", "node": d["id"], "parent": d["id"], "name": "loop"},
        ),
        (
            ("POST", f"/v1/nodes/{ann.root}/move", {"parent": d["id"], "name": "r"}),
            {"op": "move", "node": ann.root, "parent": d["id"], "name": "r"},
        ),
        (
            (
                "POST",
                f"/v1/nodes/{f['id']}/move",
                {"parent": ann.root, "name": "d", "replace": True},
            ),
            {"op": "move", "node": f["id"], "parent": ann.root, "name": "d", "replace": True},
        ),
        (("DELETE", f"/v1/nodes/{d['id']}", None), {"op": "delete", "node": d["id"]}),
        (("DELETE", f"/v1/nodes/{ann.root}", None), {"op": "delete", "node": ann.root}),
    ]
    before = await cursor(ann)
    results = await batch(ann, *(op for _, op in cases))
    assert [r for r in results if r["ok"]] == []
    assert await cursor(ann) == before  # every op failed: nothing logged
    for ((method, path, body), op), result in zip(cases, results, strict=True):
        status, single = await ann.call(method, path, body)
        assert status >= 400, (op, single)
        assert result == {"ok": False, "status": status, **single}, (op, result, single)
    codes = [r["error"] for r in results]
    assert codes == [
        "exists",
        "not_found",
        "not_a_directory",
        "missing_blocks",
        "quota_exceeded",
        "version_conflict",
        "is_a_directory",
        "bad_request",
        "quota_exceeded",
        "not_found",
        "exists",
        "invalid_move",
        "invalid_move",
        "is_a_directory",
        "not_empty",
        "invalid_move",
    ]
    await consistent(client)


async def test_version_conflicts_and_quota_see_earlier_ops_of_the_batch(
    make_user: Callable[..., Awaitable[AppUser]], client: TestClient
) -> None:
    ann = await make_user("ann", quota=10)
    f = await ann.create_file(ann.root, "f", b"ab")
    four = [[await ann.put_block(b"wxyz"), 4]]
    one = [[await ann.put_block(b"q"), 1]]
    results = await batch(
        ann,
        {"op": "commit", "node": f["id"], "base_version": 1, "size": 4, "blocks": four},
        {"op": "commit", "node": f["id"], "base_version": 1, "size": 1, "blocks": one},
        {"op": "commit", "node": f["id"], "base_version": 2, "size": 1, "blocks": one},
        {
            "op": "create",
            "parent": ann.root,
            "name": "g",
            "type": "file",
            "size": 4,
            "blocks": four,
        },
        {
            "op": "create",
            "parent": ann.root,
            "name": "h",
            "type": "file",
            "size": 4,
            "blocks": four,
        },
        {
            "op": "create",
            "parent": ann.root,
            "name": "i",
            "type": "file",
            "size": 4,
            "blocks": four,
        },
        {"op": "create", "parent": ann.root, "name": "j", "type": "file", "size": 1, "blocks": one},
    )
    assert results[0]["ok"] and results[0]["node"]["version"] == 2
    assert results[1]["error"] == "version_conflict" and results[1]["current_version"] == 2
    assert results[1]["status"] == 409 and results[1]["committed_by"] == "test"
    assert results[2]["ok"] and results[2]["node"]["version"] == 3  # f is 1 byte now
    assert results[3]["ok"] and results[4]["ok"]  # 1 + 4 + 4 = 9 of 10 bytes
    assert results[5]["status"] == 507 and results[5]["error"] == "quota_exceeded"
    assert results[5]["used_bytes"] == 9 and results[5]["quota_bytes"] == 10
    assert results[6]["ok"]
    _, usage = await ann.call("GET", "/v1/usage")
    assert usage["logical_bytes"] == 10
    _, versions = await ann.call("GET", f"/v1/nodes/{f['id']}/versions")
    assert [v["version"] for v in versions["versions"]] == [3, 2, 1]
    await consistent(client)


async def test_move_replace_and_delete_in_a_batch_log_what_single_routes_log(
    make_user: Callable[..., Awaitable[AppUser]], client: TestClient
) -> None:
    async def scenario(user: AppUser, use_batch: bool) -> list[tuple[Any, ...]]:
        a = await user.create_file(user.root, "a", b"aaaa")
        b = await user.create_file(user.root, "b", b"bb")
        d = await user.mkdir(user.root, "d")
        e = await user.mkdir(user.root, "e")
        start = await cursor(user)
        ops: list[dict[str, Any]] = [
            {"op": "move", "node": a["id"], "parent": user.root, "name": "b", "replace": True},
            {"op": "move", "node": d["id"], "parent": user.root, "name": "e", "replace": True},
            {"op": "setattr", "node": a["id"], "mtime_ns": 77},
            {"op": "delete", "node": a["id"]},
            {"op": "delete", "node": d["id"]},
        ]
        if use_batch:
            results = await batch(user, *ops)
            assert results[0] == {
                "ok": True,
                "node": results[0]["node"],
                "replaced": b["id"],
            }
            assert results[1]["replaced"] == e["id"]
            assert results[3] == {"ok": True, "trashed": True}
            assert results[4] == {"ok": True, "trashed": False}
        else:
            for op in ops:
                kind = op.pop("op")
                node = op.pop("node")
                if kind == "move":
                    status, _ = await user.call("POST", f"/v1/nodes/{node}/move", op)
                elif kind == "setattr":
                    status, _ = await user.call("PATCH", f"/v1/nodes/{node}", op)
                else:
                    status, _ = await user.call("DELETE", f"/v1/nodes/{node}")
                assert status == 200
        names = {a["id"]: "a", b["id"]: "b", d["id"]: "d", e["id"]: "e", user.root: "root"}
        return [
            (
                c["op"],
                names[c["node"]],
                c["type"],
                names.get(c["parent"]),
                c["name"],
                c["version"],
                names.get(c.get("old_parent")),
                c.get("old_name"),
            )
            for c in await changes(user, start)
        ]

    single = await scenario(await make_user("single"), use_batch=False)
    batched = await scenario(await make_user("batched"), use_batch=True)
    assert batched == single
    assert [c[0] for c in single] == [
        "delete",
        "move",
        "delete",
        "move",
        "setattr",
        "delete",
        "delete",
    ]
    await consistent(client)


async def test_another_users_nodes_in_a_batch_are_not_found(
    ann: AppUser, ben: AppUser, client: TestClient
) -> None:
    secret = await ben.create_file(ben.root, "secret", b"ben's")
    results = await batch(
        ann,
        {"op": "delete", "node": secret["id"]},
        {"op": "move", "node": secret["id"], "parent": ann.root, "name": "mine"},
        {"op": "create", "parent": ben.root, "name": "x", "type": "dir"},
        {"op": "setattr", "node": secret["id"], "mode": 0o777},
    )
    assert [r["status"] for r in results] == [404] * 4
    assert all(r["error"] == "not_found" for r in results)
    assert await ben.children(ben.root) == ["secret"]
    await consistent(client)
