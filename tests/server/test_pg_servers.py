"""Several real `cloudfs-server` processes on one PostgreSQL database, and PostgreSQL going away
while a server serves (issue 10)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.pg import PgCluster
from tests.server.helpers import bid
from tests.support import ServerProcess, User, server_cmd


def assert_clean(*servers: ServerProcess) -> None:
    """No server logged an error, and the shared stores pass fsck."""
    for srv in servers:
        log = srv.log_path.read_text()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    check = subprocess.run(
        server_cmd("fsck", *servers[0].store_args()), capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def two_servers(pg_cluster: PgCluster, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers A and B on one database and one block directory (no serve.lock applies)."""
    dsn = pg_cluster.new_database("two")
    servers = [
        ServerProcess(tmp_path / "data", meta_url=dsn),
        ServerProcess(tmp_path / "data", meta_url=dsn),
    ]
    servers[1].log_path = tmp_path / "data-server-b.log"
    try:
        for srv in servers:
            srv.start()
        yield servers
        assert_clean(*servers)
    finally:
        for srv in servers:
            srv.stop()


def put_file(srv: ServerProcess, user: User, parent: int, name: str, data: bytes) -> dict[str, Any]:
    status, _ = srv.request("PUT", f"/v1/blocks/{bid(data)}", user, data=data)
    assert status in (200, 201)
    status, node = srv.request(
        "POST",
        f"/v1/nodes/{parent}/children",
        user,
        {"name": name, "type": "file", "size": len(data), "blocks": [[bid(data), len(data)]]},
    )
    assert status == 201, node
    assert isinstance(node, dict)
    return node


def root_of(srv: ServerProcess, user: User) -> int:
    status, me = srv.request("GET", "/v1/me", user)
    assert status == 200 and isinstance(me, dict), me
    return int(me["root"])


@pytest.mark.slow
def test_commit_race_across_two_servers_has_exactly_one_winner(
    two_servers: list[ServerProcess],
) -> None:
    a, b = two_servers
    alice = a.add_user("alice")
    node = put_file(a, alice, root_of(b, alice), "f", b"base")
    contents = [f"edit {i}".encode() for i in range(12)]
    for data in contents:  # blocks first, so the race is only about the commit
        srv = a if data[-1] % 2 else b
        assert srv.request("PUT", f"/v1/blocks/{bid(data)}", alice, data=data)[0] in (200, 201)
    start = threading.Barrier(len(contents))

    def commit(data: bytes) -> tuple[int, Any]:
        srv = a if data[-1] % 2 else b
        start.wait()
        return srv.request(
            "PUT",
            f"/v1/nodes/{node['id']}/content",
            alice,
            {"base_version": 1, "size": len(data), "blocks": [[bid(data), len(data)]]},
        )

    with ThreadPoolExecutor(len(contents)) as pool:
        results = list(pool.map(commit, contents))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [409] * (len(contents) - 1), results
    assert all(body["error"] == "version_conflict" for s, body in results if s == 409)
    winner = next(contents[i] for i, (s, _) in enumerate(results) if s == 200)
    for srv in (a, b):
        status, got = srv.request("GET", f"/v1/nodes/{node['id']}?blocks=1", alice)
        assert status == 200 and isinstance(got, dict)
        assert got["version"] == 2 and got["blocks"] == [[bid(winner), len(winner)]]


@pytest.mark.slow
def test_change_through_one_server_wakes_a_long_poll_held_by_the_other(
    two_servers: list[ServerProcess],
) -> None:
    a, b = two_servers
    alice = a.add_user("alice")
    root = root_of(a, alice)
    status, page = b.request("GET", "/v1/changes", alice)
    assert status == 200 and isinstance(page, dict)
    answered: list[tuple[float, int, Any]] = []

    def poll() -> None:
        status, body = b.request("GET", f"/v1/changes?cursor={page['cursor']}&wait=20", alice)
        answered.append((time.monotonic(), status, body))

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(1.0)  # the long-poll is held by B by now
    assert not answered, answered
    made = time.monotonic()
    status, _ = a.request(
        "POST", f"/v1/nodes/{root}/children", alice, {"name": "from-a", "type": "dir"}
    )
    assert status == 201
    poller.join(10)
    assert answered, "B's long-poll was not woken"
    when, status, body = answered[0]
    assert status == 200 and [c["name"] for c in body["changes"]] == ["from-a"]
    assert when - made < 1.0, f"B answered {when - made:.2f} s after A's change"


@pytest.mark.slow
def test_devices_joined_on_one_server_are_listed_by_the_other(
    two_servers: list[ServerProcess],
) -> None:
    """The device list lives in the database: every server hands out distinct ids."""
    a, b = two_servers
    alice = a.add_user("alice")
    status, first = a.request("POST", "/v1/devices", alice, {"name": "laptop"})
    assert status in (200, 201), first
    status, second = b.request("POST", "/v1/devices", alice, {"name": "phone"})
    assert status in (200, 201), second
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["device_id"] != second["device_id"]
