"""Metadata throughput: creates/s and commits/s through real `cloudfs-server` processes, on the
embedded engine (1 server) and on PostgreSQL (1 and 3 servers on one database).

Run: .venv/bin/python scripts/meta_bench.py [--seconds 5] [--clients 12] [--users 1]
Starts its own PostgreSQL (fsync on, like the embedded engine's synchronous=FULL) in a temp dir and
stops everything it started, by PID, at the end. Prints one line per configuration.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pg import PgCluster
from tests.support import ServerProcess


class Client:
    """One keep-alive HTTP connection acting as one user."""

    def __init__(self, url: str, token: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "X-Cloudfs-Device": "bench"}

    def call(self, method: str, path: str, body: Any = None, data: bytes | None = None) -> Any:
        headers = dict(self.headers)
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw[:200]!r}")
        return json.loads(raw) if raw else None


def run_clients(
    servers: list[ServerProcess], tokens: list[str], clients: int, seconds: float
) -> dict:
    """Each client thread makes its own directory, then: create files for `seconds`, then commit
    new versions of one file for `seconds`. Returns operations per second."""
    data = b"bench block"
    block = blake3.blake3(data).hexdigest()
    roots = []
    for token in tokens:
        first = Client(servers[0].url, token)
        roots.append(first.call("GET", "/v1/me")["root"])
        first.call("PUT", f"/v1/blocks/{block}", data=data)
    counts = {"create": 0, "commit": 0}
    lock = threading.Lock()
    phase: dict[str, float] = {}

    def starts(key: str) -> threading.Barrier:
        # The last thread to arrive sets the phase's end before anyone is released.
        return threading.Barrier(
            clients, action=lambda: phase.__setitem__(key, time.monotonic() + seconds)
        )

    create_start, commit_start = starts("create_end"), starts("commit_end")

    def worker(i: int) -> None:
        c = Client(servers[i % len(servers)].url, tokens[i % len(tokens)])
        root = roots[i % len(tokens)]
        d = c.call("POST", f"/v1/nodes/{root}/children", {"name": f"c{i}", "type": "dir"})["id"]
        f = c.call(
            "POST",
            f"/v1/nodes/{d}/children",
            {"name": "f", "type": "file", "size": len(data), "blocks": [[block, len(data)]]},
        )
        version = f["version"]
        create_start.wait()
        n = 0
        while time.monotonic() < phase["create_end"]:
            c.call(
                "POST",
                f"/v1/nodes/{d}/children",
                {"name": f"n{n}", "type": "file", "size": len(data), "blocks": [[block, 11]]},
            )
            n += 1
        with lock:
            counts["create"] += n
        commit_start.wait()
        n = 0
        while time.monotonic() < phase["commit_end"]:
            version = c.call(
                "PUT",
                f"/v1/nodes/{f['id']}/content",
                {"base_version": version, "size": len(data), "blocks": [[block, len(data)]]},
            )["version"]
            n += 1
        with lock:
            counts["commit"] += n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {k: v / seconds for k, v in counts.items()}


def measure(name: str, servers: list[ServerProcess], args: argparse.Namespace) -> None:
    try:
        for srv in servers:
            srv.start()
        tokens = [servers[0].add_user(f"bench{i}").token for i in range(args.users)]
        rates = run_clients(servers, tokens, args.clients, args.seconds)
        print(
            f"{name:<28} creates/s {rates['create']:8.0f}   commits/s {rates['commit']:8.0f}",
            flush=True,
        )
    finally:
        for srv in servers:
            srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--users", type=int, default=1, help="accounts the clients spread over")
    parser.add_argument("--no-fsync", action="store_true", help="PostgreSQL with fsync=off")
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudfs-meta-bench-") as tmp:
        base = Path(tmp)
        if not args.skip_embedded:
            measure("embedded (SQLite), 1 server", [ServerProcess(base / "embedded")], args)
        cluster = PgCluster(fsync=not args.no_fsync)
        try:
            cluster.init().start()
            for count in (1, 3):
                dsn = cluster.new_database(f"bench{count}_")
                servers = [ServerProcess(base / f"pg{count}", meta_url=dsn) for _ in range(count)]
                for i, srv in enumerate(servers):
                    srv.log_path = base / f"pg{count}-server-{i}.log"
                measure(f"PostgreSQL, {count} server(s)", servers, args)
        finally:
            cluster.destroy()


if __name__ == "__main__":
    main()
