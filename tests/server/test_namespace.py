"""Namespace semantics through the aiohttp test client: names, create, move, delete, setattr."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient
from cloudfs_server.engines.sqlite import SqliteMetadataStore
from cloudfs_server.http.app import META

from tests.server.conftest import BOTH_ENGINES, AppUser

pytestmark = [pytest.mark.asyncio, BOTH_ENGINES]


@pytest.mark.parametrize(
    ("name", "code", "rule"),
    [
        ("", "invalid_name", "empty"),
        ("a/b", "invalid_name", "'/'"),
        ("a\x00b", "invalid_name", "NUL"),
        (".", "invalid_name", "'.' or '..'"),
        ("..", "invalid_name", "'.' or '..'"),
        ("x" * 256, "name_too_long", "255 bytes"),
        ("é" * 128, "name_too_long", "255 bytes"),  # 256 UTF-8 bytes, 128 characters
        # A lone surrogate is not valid UTF-8: the JSON decoder refuses the body before the
        # name rules run, so the code is the generic one (the client maps both to EINVAL).
        ("\udcff", "bad_request", "UTF-8"),
        (7, "bad_request", "string"),
    ],
)
async def test_each_name_rule_is_enforced_and_named(
    ann: AppUser, name: object, code: str, rule: str
) -> None:
    status, body = await ann.call(
        "POST", f"/v1/nodes/{ann.root}/children", {"name": name, "type": "dir"}
    )
    assert status == 400, body
    assert body["error"] == code and rule in body["message"]
    assert await ann.children(ann.root) == []


async def test_longest_valid_names_are_accepted(ann: AppUser) -> None:
    await ann.mkdir(ann.root, "x" * 255)
    await ann.mkdir(ann.root, "é" * 127 + "x")  # 255 bytes
    await ann.mkdir(ann.root, "...")
    assert len(await ann.children(ann.root)) == 3


async def test_exists_answer_names_the_existing_node(ann: AppUser) -> None:
    first = await ann.mkdir(ann.root, "d")
    status, body = await ann.call(
        "POST", f"/v1/nodes/{ann.root}/children", {"name": "d", "type": "file"}
    )
    assert status == 409 and body["error"] == "exists" and body["node"]["id"] == first["id"]


async def test_listing_sorts_by_utf8_bytes_and_pages(ann: AppUser) -> None:
    names = ["b", "a", "Z", "é", "z", "aa", "\u00e0", "0"]
    for name in names:
        await ann.mkdir(ann.root, name)
    expected = sorted(names, key=lambda n: n.encode())
    seen: list[str] = []
    after = ""
    while True:
        status, page = await ann.call("GET", f"/v1/nodes/{ann.root}/children?limit=3&after={after}")
        assert status == 200
        seen += [e["name"] for e in page["entries"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == expected
    status, body = await ann.call("GET", f"/v1/nodes/{ann.root}/children?limit=0")
    assert status == 400 and "limit" in body["message"]


async def test_symlink_and_file_shapes(ann: AppUser) -> None:
    status, link = await ann.call(
        "POST", f"/v1/nodes/{ann.root}/children", {"name": "l", "type": "symlink", "target": "ä/b"}
    )
    assert status == 201 and link["target"] == "ä/b" and link["size"] == 4
    assert link["mode"] == 0o777 and link["version"] == 1
    status, body = await ann.call(
        "POST", f"/v1/nodes/{ann.root}/children", {"name": "m", "type": "symlink"}
    )
    assert status == 400 and "target" in body["message"]
    f = await ann.create_file(ann.root, "f", b"0123456789")
    status, node = await ann.call("GET", f"/v1/nodes/{f['id']}?blocks=1")
    assert node["blocks"] == [[b, n] for b, n in node["blocks"]] and len(node["blocks"]) == 3
    assert sum(n for _, n in node["blocks"]) == 10
    status, node = await ann.call("GET", f"/v1/nodes/{f['id']}")
    assert "blocks" not in node


async def test_move_rules(ann: AppUser) -> None:
    a = await ann.mkdir(ann.root, "a")
    b = await ann.mkdir(a["id"], "b")
    f = await ann.create_file(ann.root, "f", b"x")
    g = await ann.create_file(ann.root, "g", b"y")
    empty = await ann.mkdir(ann.root, "empty")

    async def move(node: int, parent: int, name: str, replace: bool = False) -> tuple[int, dict]:
        return await ann.call(
            "POST", f"/v1/nodes/{node}/move", {"parent": parent, "name": name, "replace": replace}
        )

    status, body = await move(a["id"], b["id"], "a")
    assert (status, body["error"]) == (409, "invalid_move")
    status, body = await move(a["id"], a["id"], "self")
    assert (status, body["error"]) == (409, "invalid_move")
    status, body = await move(ann.root, a["id"], "root")
    assert (status, body["error"]) == (409, "invalid_move")
    status, body = await move(f["id"], ann.root, "g")
    assert (status, body["error"]) == (409, "exists") and body["node"]["id"] == g["id"]
    status, body = await move(f["id"], ann.root, "a", replace=True)
    assert (status, body["error"]) == (409, "is_a_directory")
    status, body = await move(a["id"], ann.root, "f", replace=True)
    assert (status, body["error"]) == (409, "not_a_directory")
    status, body = await move(f["id"], g["id"], "x")
    assert (status, body["error"]) == (409, "not_a_directory")
    other = await ann.mkdir(ann.root, "other")
    await ann.mkdir(other["id"], "child")
    status, body = await move(empty["id"], ann.root, "other", replace=True)
    assert (status, body["error"]) == (409, "not_empty")
    # Moving onto itself is a no-op.
    status, body = await move(f["id"], ann.root, "f")
    assert status == 200 and body == {
        "node": f | {"ctime_ns": body["node"]["ctime_ns"]},
        "replaced": None,
    }
    # Dir over empty dir replaces it.
    target = await ann.mkdir(ann.root, "target")
    status, body = await move(empty["id"], ann.root, "target", replace=True)
    assert status == 200 and body["replaced"] == target["id"]
    status, _ = await ann.call("GET", f"/v1/nodes/{target['id']}")
    assert status == 404
    # A plain rename into a subdirectory keeps the id and logs a move.
    status, body = await move(f["id"], b["id"], "renamed")
    assert status == 200 and body["node"]["id"] == f["id"] and body["node"]["parent"] == b["id"]
    status, changes = await ann.call("GET", "/v1/changes?cursor=0")
    last = changes["changes"][-1]
    assert last["op"] == "move" and last["old_parent"] == ann.root and last["old_name"] == "f"
    assert last["parent"] == b["id"] and last["name"] == "renamed"


async def test_editor_style_replace_keeps_history_under_surviving_name(ann: AppUser) -> None:
    doc = await ann.create_file(ann.root, "doc.txt", b"v1")
    status, doc = await ann.commit(doc["id"], 1, b"v2")
    assert status == 200
    tmp = await ann.create_file(ann.root, ".doc.txt.swp", b"v3 from editor")
    status, body = await ann.call(
        "POST",
        f"/v1/nodes/{tmp['id']}/move",
        {"parent": ann.root, "name": "doc.txt", "replace": True},
    )
    assert status == 200, body
    assert body["replaced"] == doc["id"]
    node = body["node"]
    assert node["id"] == tmp["id"] and node["name"] == "doc.txt" and node["version"] == 3
    status, _ = await ann.call("GET", f"/v1/nodes/{doc['id']}")
    assert status == 404
    status, hist = await ann.call("GET", f"/v1/nodes/{tmp['id']}/versions")
    assert [v["version"] for v in hist["versions"]] == [3, 2, 1]
    assert [v["size"] for v in hist["versions"]] == [14, 2, 2]
    status, v1 = await ann.call("GET", f"/v1/nodes/{tmp['id']}/versions/1")
    assert status == 200 and v1["size"] == 2
    assert await ann.read(tmp["id"]) == b"v3 from editor"
    assert await ann.children(ann.root) == ["doc.txt"]
    status, trash = await ann.call("GET", "/v1/trash")
    assert trash["entries"] == []  # the replaced file lives on as history, not as trash
    status, changes = await ann.call("GET", "/v1/changes?cursor=3")
    assert [(c["op"], c["node"]) for c in changes["changes"]] == [
        ("delete", doc["id"]),
        ("move", tmp["id"]),
    ]


async def test_delete_trash_restore(ann: AppUser) -> None:
    d = await ann.mkdir(ann.root, "d")
    f = await ann.create_file(d["id"], "f", b"content")
    status, body = await ann.call("DELETE", f"/v1/nodes/{d['id']}")
    assert (status, body["error"]) == (409, "not_empty")
    status, body = await ann.call("DELETE", f"/v1/nodes/{ann.root}")
    assert (status, body["error"]) == (409, "invalid_move")
    assert await ann.call("DELETE", f"/v1/nodes/{f['id']}") == (200, {"trashed": True})
    status, _ = await ann.call("GET", f"/v1/nodes/{f['id']}")
    assert status == 404
    status, trash = await ann.call("GET", "/v1/trash")
    (entry,) = trash["entries"]
    assert entry["id"] == f["id"] and entry["original_parent"] == d["id"]
    assert entry["original_path"] == "/d/f" and entry["trashed_at_ns"] > 0
    # Name taken → exists; then restore under another name.
    await ann.create_file(d["id"], "f", b"new")
    status, body = await ann.call("POST", f"/v1/trash/{f['id']}/restore")
    assert (status, body["error"]) == (409, "exists")
    status, node = await ann.call("POST", f"/v1/trash/{f['id']}/restore", {"name": "f.old"})
    assert status == 200 and node["name"] == "f.old" and node["parent"] == d["id"]
    assert await ann.read(f["id"]) == b"content"
    # Parent gone → not_found.
    assert (await ann.call("DELETE", f"/v1/nodes/{f['id']}"))[0] == 200
    status, listing = await ann.call("GET", f"/v1/nodes/{d['id']}/children")
    for entry in listing["entries"]:
        await ann.call("DELETE", f"/v1/nodes/{entry['id']}")
    assert await ann.call("DELETE", f"/v1/nodes/{d['id']}") == (200, {"trashed": False})
    status, body = await ann.call("POST", f"/v1/trash/{f['id']}/restore")
    assert (status, body["error"]) == (404, "not_found") and "parent" in body["message"]
    status, node = await ann.call("POST", f"/v1/trash/{f['id']}/restore", {"parent": ann.root})
    assert status == 200 and node["parent"] == ann.root
    status, changes = await ann.call("GET", "/v1/changes?cursor=0")
    assert changes["changes"][-1]["op"] == "restore"


async def test_history_and_version_restore(ann: AppUser) -> None:
    f = await ann.create_file(ann.root, "f", b"one")
    for base, text in ((1, b"two"), (2, b"three")):
        status, _ = await ann.commit(f["id"], base, text)
        assert status == 200
    status, hist = await ann.call("GET", f"/v1/nodes/{f['id']}/versions")
    assert [v["version"] for v in hist["versions"]] == [3, 2, 1]
    assert all(v["device"] == "test" for v in hist["versions"])
    status, node = await ann.call("POST", f"/v1/nodes/{f['id']}/versions/1/restore")
    assert status == 200 and node["version"] == 4 and node["size"] == 3
    assert await ann.read(f["id"]) == b"one"
    status, body = await ann.call("GET", f"/v1/nodes/{f['id']}/versions/9")
    assert (status, body["error"]) == (404, "not_found")
    d = await ann.mkdir(ann.root, "d")
    status, body = await ann.call("GET", f"/v1/nodes/{d['id']}/versions")
    assert (status, body["error"]) == (409, "is_a_directory")


async def test_setattr(ann: AppUser) -> None:
    f = await ann.create_file(ann.root, "f", b"abc")
    status, node = await ann.call(
        "PATCH", f"/v1/nodes/{f['id']}", {"mode": 0o100600, "mtime_ns": 123}
    )
    assert status == 200 and node["mode"] == 0o600 and node["mtime_ns"] == 123
    assert node["version"] == 1
    status, body = await ann.call("PATCH", f"/v1/nodes/{f['id']}", {"size": 0})
    assert (status, body["error"]) == (400, "bad_request") and "commit" in body["message"]
    status, body = await ann.call("PATCH", f"/v1/nodes/{f['id']}", {"mode": "rw"})
    assert (status, body["error"]) == (400, "bad_request") and "mode" in body["message"]


async def test_other_users_nodes_answer_like_missing_ones(ann: AppUser, ben: AppUser) -> None:
    d = await ann.mkdir(ann.root, "private")
    f = await ann.create_file(d["id"], "secret", b"s3cr3t")
    missing = 10**9
    for node_id in (d["id"], f["id"]):
        for method, path, body in [
            ("GET", f"/v1/nodes/{node_id}", None),
            ("GET", f"/v1/nodes/{node_id}/children", None),
            ("GET", f"/v1/nodes/{node_id}/lookup?name=secret", None),
            ("POST", f"/v1/nodes/{node_id}/children", {"name": "x", "type": "dir"}),
            ("PATCH", f"/v1/nodes/{node_id}", {"mode": 0o777}),
            ("POST", f"/v1/nodes/{node_id}/move", {"parent": ben.root, "name": "stolen"}),
            ("DELETE", f"/v1/nodes/{node_id}", None),
            ("GET", f"/v1/nodes/{node_id}/versions", None),
            ("GET", f"/v1/nodes/{node_id}/versions/1", None),
            ("POST", f"/v1/nodes/{node_id}/versions/1/restore", None),
            ("POST", f"/v1/trash/{node_id}/restore", None),
        ]:
            theirs = await ben.call(method, path, body)
            absent = await ben.call(method, path.replace(str(node_id), str(missing), 1), body)
            assert theirs[0] == absent[0] == 404, (method, path, theirs)
            assert theirs[1]["error"] == absent[1]["error"] == "not_found"
    # Moving one's own node into another user's directory: the target is not found either.
    mine = await ben.mkdir(ben.root, "mine")
    status, body = await ben.call(
        "POST", f"/v1/nodes/{mine['id']}/move", {"parent": d["id"], "name": "x"}
    )
    assert (status, body["error"]) == (404, "not_found")
    assert await ann.children(d["id"]) == ["secret"]


async def test_group_commit_isolates_failing_writes(ann: AppUser, client: TestClient) -> None:
    store = client.app[META]
    grouped = type(store) is SqliteMetadataStore  # PostgreSQL: one transaction per write
    assert (await ann.call("GET", "/v1/me"))[0] == 200  # the token's once-a-minute use write
    if grouped:
        groups_before, writes_before = store.groups_committed, store.writes_committed
    names = [f"d{i % 25}" for i in range(50)]  # every name twice: one create wins, one exists
    results = await asyncio.gather(
        *(
            ann.call("POST", f"/v1/nodes/{ann.root}/children", {"name": n, "type": "dir"})
            for n in names
        )
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] * 25 + [409] * 25
    assert sorted(await ann.children(ann.root)) == sorted(set(names))
    _, changes = await ann.call("GET", "/v1/changes?cursor=0")
    assert [c["seq"] for c in changes["changes"]] == list(range(1, 26))
    if grouped:
        assert store.writes_committed - writes_before == 50
        assert store.groups_committed - groups_before < 50  # some writes shared a transaction


async def test_large_block_lists_round_trip(ann: AppUser) -> None:
    a, b = await ann.put_block(b"a"), await ann.put_block(b"b")
    blocks = [[a if i % 3 else b, 1] for i in range(30_000)]  # blocks may repeat
    status, node = await ann.call(
        "POST",
        f"/v1/nodes/{ann.root}/children",
        {"name": "big", "type": "file", "size": len(blocks), "blocks": blocks},
    )
    assert status == 201, node
    status, got = await ann.call("GET", f"/v1/nodes/{node['id']}?blocks=1")
    assert status == 200 and got["blocks"] == blocks
    status, got = await ann.call(
        "PUT",
        f"/v1/nodes/{node['id']}/content",
        {"base_version": 1, "size": len(blocks) - 1, "blocks": blocks[1:]},
    )
    assert status == 200 and got["version"] == 2
    status, v1 = await ann.call("GET", f"/v1/nodes/{node['id']}/versions/1")
    assert status == 200 and v1["blocks"] == blocks
    status, body = await ann.call(
        "PUT",
        f"/v1/nodes/{node['id']}/content",
        {"base_version": 2, "size": 5, "blocks": [*blocks[:4], ["A" * 64, 1]] * 1000},
    )
    assert (status, body["error"]) == (400, "bad_block_id")
