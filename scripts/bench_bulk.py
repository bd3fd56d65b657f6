"""Measure the bulk routes against their single-request twins on a real `cloudfs-server`:
1,000 blocks of 4 KiB as one POST /v1/blocks/pack vs 1,000 PUTs, and 1,000 file creates as one
POST /v1/batch vs 1,000 POSTs. One keep-alive connection each way, new random data every run.

    .venv/bin/python scripts/bench_bulk.py [--runs 3] [--count 1000] [--block-bytes 4096]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import blake3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import ServerProcess  # noqa: E402  (needs the repo root on sys.path)


class Conn:
    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
        self.auth = {"Authorization": f"Bearer {token}", "X-Cloudfs-Device": "bench"}

    def call(self, method: str, path: str, body: bytes, ctype: str) -> tuple[int, Any]:
        self.conn.request(method, path, body=body, headers={**self.auth, "Content-Type": ctype})
        resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None

    def json(self, method: str, path: str, obj: Any) -> Any:
        status, body = self.call(method, path, json.dumps(obj).encode(), "application/json")
        assert status in (200, 201), (status, body)
        return body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--block-bytes", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess(Path(tmp) / "data").start()
        try:
            user = srv.add_user("bench")
            conn = Conn(srv.url, user.token)
            status, me = conn.call("GET", "/v1/me", b"", "application/json")
            assert status == 200, me
            root = me["root"]
            times: dict[str, list[float]] = {"put": [], "pack": [], "create": [], "batch": []}
            for run in range(args.runs):
                blobs = [os.urandom(args.block_bytes) for _ in range(args.count)]
                ids = [blake3.blake3(b).hexdigest() for b in blobs]
                t0 = time.perf_counter()
                for block_id, blob in zip(ids, blobs, strict=True):
                    status, _ = conn.call(
                        "PUT", f"/v1/blocks/{block_id}", blob, "application/octet-stream"
                    )
                    assert status == 201, status
                times["put"].append(time.perf_counter() - t0)
                blobs = [os.urandom(args.block_bytes) for _ in range(args.count)]
                body = b"".join(
                    blake3.blake3(b).digest() + struct.pack(">I", len(b)) + b for b in blobs
                )
                t0 = time.perf_counter()
                status, answer = conn.call(
                    "POST", "/v1/blocks/pack", body, "application/x-cloudfs-pack"
                )
                times["pack"].append(time.perf_counter() - t0)
                assert status == 200 and all(b["stored"] for b in answer["blocks"]), status
                block = [[answer["blocks"][0]["block_id"], args.block_bytes]]
                one = conn.json(
                    "POST", f"/v1/nodes/{root}/children", {"name": f"s{run}", "type": "dir"}
                )
                t0 = time.perf_counter()
                for i in range(args.count):
                    conn.json(
                        "POST",
                        f"/v1/nodes/{one['id']}/children",
                        {
                            "name": f"f{i}",
                            "type": "file",
                            "size": args.block_bytes,
                            "blocks": block,
                        },
                    )
                times["create"].append(time.perf_counter() - t0)
                ops: list[dict[str, Any]] = [
                    {"op": "create", "parent": root, "name": f"b{run}", "type": "dir", "label": "d"}
                ]
                ops += [
                    {
                        "op": "create",
                        "parent": "d",
                        "name": f"f{i}",
                        "type": "file",
                        "size": args.block_bytes,
                        "blocks": block,
                    }
                    for i in range(args.count - 1)
                ]
                t0 = time.perf_counter()
                result = conn.json("POST", "/v1/batch", {"ops": ops})
                times["batch"].append(time.perf_counter() - t0)
                assert all(r["ok"] for r in result["results"])
        finally:
            srv.stop()
    kib = args.block_bytes // 1024
    for name, label in [
        ("put", f"{args.count} PUT /v1/blocks/{{id}} ({kib} KiB)"),
        ("pack", f"1 POST /v1/blocks/pack of {args.count} blocks ({kib} KiB)"),
        ("create", f"{args.count} POST /v1/nodes/{{id}}/children (files)"),
        ("batch", f"1 POST /v1/batch of {args.count} creates"),
    ]:
        median = statistics.median(times[name])
        print(f"{label}: median {median:.3f} s ({args.count / median:.0f}/s) over {args.runs} runs")


if __name__ == "__main__":
    main()
