"""The bulk routes and the schema migration on a real `cloudfs-server` process."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import blake3
from cloudfs_server.auth import new_token, token_digest

from tests.server.helpers import Api, bid
from tests.server.test_node_fields import build_v1_database
from tests.support import ServerProcess, User, server_cmd

PACK = "application/x-cloudfs-pack"


def test_a_thousand_small_files_cost_two_requests_and_survive_kill_9(
    server: ServerProcess, alice: User
) -> None:
    api = Api(server, alice)
    blobs = [f"small file {i}\n".encode() * 3 for i in range(1000)]
    body = b"".join(blake3.blake3(b).digest() + struct.pack(">I", len(b)) + b for b in blobs)
    status, packed = api.call("POST", "/v1/blocks/pack", data=body, headers={"Content-Type": PACK})
    assert status == 200 and all(b["stored"] for b in packed["blocks"]), packed
    ops: list[dict[str, object]] = [
        {"op": "create", "parent": api.root, "name": "many", "type": "dir", "label": "d"}
    ]
    ops += [
        {
            "op": "create",
            "parent": "d",
            "name": f"f{i:03}",
            "type": "file",
            "size": len(blob),
            "blocks": [[meta["block_id"], meta["size"]]],
        }
        for i, (blob, meta) in enumerate(zip(blobs[:999], packed["blocks"], strict=False))
    ]
    status, result = api.call("POST", "/v1/batch", {"ops": ops})
    assert status == 200 and all(r["ok"] for r in result["results"]), result["results"][:2]
    many = result["results"][0]["node"]["id"]
    server.kill9()  # the batch was answered, so it is committed and durable
    server.start()
    status, listing = api.call("GET", f"/v1/nodes/{many}/children?limit=5000")
    assert status == 200 and len(listing["entries"]) == 999
    entry = listing["entries"][123]
    assert entry["name"] == "f123" and api.read(entry["id"]) == blobs[123]


def test_serve_migrates_a_version_1_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    token = new_token()
    ids = build_v1_database(data / "meta.sqlite3", token_digest(token))
    block_id = bid(b"hi")  # the one block the v1 files reference
    block_file = data / "blocks" / block_id[:2] / block_id[2:4] / block_id
    block_file.parent.mkdir(parents=True)
    block_file.write_bytes(b"hi")
    srv = ServerProcess(data)
    try:
        srv.start()
        api = Api(srv, User("old", token))
        status, a = api.call("GET", f"/v1/nodes/{ids['a']}")
        assert status == 200 and a["subdirs"] == 2 and a["atime_ns"] == a["mtime_ns"] == 2000
        status, _ = api.call("POST", f"/v1/nodes/{ids['a']}/children", {"name": "n", "type": "dir"})
        assert status == 201
        assert api.read(ids["f"]) == b"hi"
    finally:
        srv.stop()
    check = subprocess.run(
        server_cmd("fsck", "--data", str(data)), capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    log = srv.log_path.read_text()
    assert "migrating" in log and "schema version 2" in log, log[-2000:]
