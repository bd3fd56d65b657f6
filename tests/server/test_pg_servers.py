"""Several real `cloudfs-server` processes on one PostgreSQL database, and PostgreSQL going away
while a server serves (issue 10)."""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.pg import PgCluster
from tests.server.helpers import bid
from tests.support import MotoServer, ServerProcess, User, server_cmd


def assert_clean(*servers: ServerProcess) -> None:
    """No server logged an error, and the shared stores pass fsck."""
    for srv in servers:
        log = srv.log_path.read_text()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    check = subprocess.run(
        server_cmd("fsck", *servers[0].admin_args()), capture_output=True, text=True
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


def raw_status(srv: ServerProcess, path: str, user: User) -> tuple[int, str | None]:
    """The status and Retry-After header of one GET."""
    req = urllib.request.Request(srv.url + path, headers=user.headers())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers.get("Retry-After")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Retry-After")


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
def test_device_list_and_sessions_are_shared_by_every_server(
    two_servers: list[ServerProcess],
) -> None:
    a, b = two_servers
    alice = a.add_user("alice")
    start = threading.Barrier(8)

    def join(i: int) -> dict[str, Any]:
        srv = (a, b)[i % 2]
        start.wait()
        status, answer = srv.request("POST", "/v1/devices", alice, {"device_name": f"d{i}"})
        assert status == 201 and isinstance(answer, dict), answer
        return answer

    with ThreadPoolExecutor(8) as pool:
        joined = list(pool.map(join, range(8)))
    assert sorted(d["device_id"] for d in joined) == list(range(1, 9))  # no id handed out twice
    for srv in (a, b):
        status, listed = srv.request("GET", "/v1/devices", alice)
        assert status == 200 and isinstance(listed, dict)
        assert sorted(d["device_name"] for d in listed["devices"]) == [f"d{i}" for i in range(8)]
    # A session opened on one server is valid on the other; leaving through B frees it on A.
    first = joined[0]  # joined through A
    path = f"/v1/devices/{first['device_id']}"
    status, beat = b.request("POST", path + "/heartbeat", alice, {"session": first["session"]})
    assert status == 200, beat
    status, _ = b.request("POST", path + "/heartbeat", alice, {"session": "not-the-session"})
    assert status == 404
    status, _ = b.request("POST", path + "/leave", alice, {"session": first["session"]})
    assert status == 200
    status, _ = a.request("POST", path + "/heartbeat", alice, {"session": first["session"]})
    assert status == 404
    status, again = a.request("POST", "/v1/devices", alice, {"device_name": "later"})
    assert status == 201 and isinstance(again, dict) and again["device_id"] == first["device_id"]


@pytest.mark.slow
def test_database_down_answers_503_and_recovers_without_losing_commits(tmp_path: Path) -> None:
    """PostgreSQL stopped for ~20 s under a committing client: 503 + Retry-After meanwhile (never
    500), service within 10 s of its return, every acknowledged commit kept, fsck clean."""
    cluster = PgCluster()  # its own cluster: stopping the session's would disturb other tests
    srv: ServerProcess | None = None
    try:
        cluster.init().start()
        dsn = cluster.new_database("outage")
        srv = ServerProcess(tmp_path / "data", meta_url=dsn).start()
        alice = srv.add_user("alice")
        node = put_file(srv, alice, root_of(srv, alice), "f", b"v1")
        acked: dict[int, bytes] = {}  # version -> content of every commit answered 200
        statuses: list[tuple[float, int, Any]] = []
        stop = threading.Event()

        def writer() -> None:
            base, n = 1, 0
            while not stop.is_set():
                n += 1
                data = f"content {n}".encode()
                status, body = srv.request("PUT", f"/v1/blocks/{bid(data)}", alice, data=data)
                if status in (200, 201):
                    status, body = srv.request(
                        "PUT",
                        f"/v1/nodes/{node['id']}/content",
                        alice,
                        {
                            "base_version": base,
                            "size": len(data),
                            "blocks": [[bid(data), len(data)]],
                        },
                    )
                statuses.append((time.monotonic(), status, body))
                if status == 200:
                    base = body["version"]
                    acked[base] = data
                elif status in (409, 503):
                    # The outcome of a commit cut off by the outage is unknown: re-read the base.
                    got_status, got = srv.request("GET", f"/v1/nodes/{node['id']}", alice)
                    if got_status == 200:
                        base = got["version"]
                    time.sleep(0.05)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            time.sleep(2.0)
            cluster.stop()
            down_at = time.monotonic()
            time.sleep(10.0)
            retry_after = raw_status(srv, "/v1/me", alice)
            time.sleep(10.0)
            # The database accepts connections before `pg_ctl start` returns: the outage ends
            # somewhere between these two instants, so only answers before `restart_at` must
            # be 503s (the server reconnects within milliseconds).
            restart_at = time.monotonic()
            cluster.start()
            up_at = time.monotonic()
            deadline = up_at + 15
            while time.monotonic() < deadline:
                if any(t > up_at and s == 200 for t, s, _ in statuses):
                    break
                time.sleep(0.1)
            time.sleep(1.0)
        finally:
            stop.set()
            thread.join(30)
        assert not [s for _, s, _ in statuses if s >= 500 and s != 503], statuses
        during = [(s, b) for t, s, b in statuses if down_at + 1 < t < restart_at]
        assert during and all(s == 503 for s, _ in during), during[:5]
        assert all(b["error"] == "store_unavailable" for _, b in during)
        recovered = min(t for t, s, _ in statuses if t > up_at and s == 200)
        assert recovered - up_at < 10.0, f"recovered {recovered - up_at:.1f} s after the restart"
        assert retry_after[0] == 503 and int(retry_after[1] or "0") >= 1, retry_after
        assert len(acked) >= 2
        status, versions = srv.request("GET", f"/v1/nodes/{node['id']}/versions", alice)
        assert status == 200 and isinstance(versions, dict)
        listed = {v["version"] for v in versions["versions"]}
        assert set(acked) <= listed, sorted(set(acked) - listed)
        for version, data in acked.items():
            status, got = srv.request("GET", f"/v1/nodes/{node['id']}/versions/{version}", alice)
            assert status == 200 and got["blocks"] == [[bid(data), len(data)]]
        assert_clean(srv)
    finally:
        if srv is not None:
            srv.stop()
        cluster.destroy()


@pytest.mark.slow
def test_migrate_copies_an_embedded_deployment_into_postgres(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    embedded = ServerProcess(data).start()
    try:
        alice = embedded.add_user("alice")
        root = root_of(embedded, alice)
        status, d = embedded.request(
            "POST", f"/v1/nodes/{root}/children", alice, {"name": "docs", "type": "dir"}
        )
        assert status == 201 and isinstance(d, dict)
        f = put_file(embedded, alice, d["id"], "a.txt", b"one")
        status, _ = embedded.request("PUT", f"/v1/blocks/{bid(b'two')}", alice, data=b"two")
        status, _ = embedded.request(
            "PUT",
            f"/v1/nodes/{f['id']}/content",
            alice,
            {"base_version": 1, "size": 3, "blocks": [[bid(b"two"), 3]]},
        )
        assert status == 200
        gone = put_file(embedded, alice, root, "gone", b"bye")
        assert embedded.request("DELETE", f"/v1/nodes/{gone['id']}", alice)[0] in (200, 204)
        status, before = embedded.request("GET", "/v1/changes?cursor=0", alice)
        assert status == 200 and isinstance(before, dict)
    finally:
        embedded.stop()
    dsn = pg_cluster.new_database("migrate")
    out = subprocess.run(
        server_cmd("migrate", "--data", str(data), "--meta", dsn), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "copied 1 users row(s)" in out.stdout and "fsck clean" in out.stdout, out.stdout
    again = subprocess.run(
        server_cmd("migrate", "--data", str(data), "--meta", dsn), capture_output=True, text=True
    )
    assert again.returncode == 1 and "already holds users" in again.stderr, again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr

    shared = ServerProcess(data, meta_url=dsn).start()
    try:
        assert root_of(shared, alice) == root  # the same token still works
        status, docs = shared.request("GET", f"/v1/nodes/{d['id']}", alice)
        assert status == 200 and isinstance(docs, dict)
        assert docs["atime_ns"] == d["atime_ns"]  # copied, not reset
        status, top = shared.request("GET", f"/v1/nodes/{root}", alice)
        assert status == 200 and isinstance(top, dict) and top["subdirs"] == 1
        status, got = shared.request("GET", f"/v1/nodes/{f['id']}?blocks=1", alice)
        assert status == 200 and isinstance(got, dict)
        assert got["version"] == 2 and got["blocks"] == [[bid(b"two"), 3]]
        status, block = shared.request("GET", f"/v1/blocks/{bid(b'one')}", alice)
        assert status == 200 and block == b"one"  # v1's block, still in DIR
        status, trash = shared.request("GET", "/v1/trash", alice)
        assert status == 200 and isinstance(trash, dict)
        assert [e["id"] for e in trash["entries"]] == [gone["id"]]
        status, after = shared.request("GET", "/v1/changes?cursor=0", alice)
        assert status == 200 and isinstance(after, dict)
        assert after["changes"] == before["changes"]
        new = put_file(shared, alice, root, "new", b"new")  # ids and seqs continue
        assert new["id"] > gone["id"]
        status, page = shared.request("GET", f"/v1/changes?cursor={before['cursor']}", alice)
        assert status == 200 and isinstance(page, dict)
        assert [c["seq"] for c in page["changes"]] == [before["cursor"] + 1]
        assert_clean(shared)
    finally:
        shared.stop()


def test_commands_name_a_bad_or_unreachable_database_in_one_line(tmp_path: Path) -> None:
    bad = subprocess.run(
        server_cmd("list-users", "--data", str(tmp_path), "--meta", "mysql://x"),
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "--meta must be a postgresql:// URL" in bad.stderr
    away = subprocess.run(
        server_cmd(
            "list-users",
            "--data",
            str(tmp_path),
            "--meta",
            f"postgresql://cloudfs@/x?host={tmp_path}&port=1",
        ),
        capture_output=True,
        text=True,
    )
    assert away.returncode == 1, away.stderr
    assert away.stderr.strip().count("\n") == 0 and "is unavailable" in away.stderr, away.stderr


def test_servers_on_one_database_and_one_bucket_share_metadata_and_blocks(
    pg_cluster: PgCluster, bucket_url: str, moto: MotoServer, tmp_path: Path
) -> None:
    """The scale-out deployment: `--meta URL --blocks s3://…` on two servers with their own data
    directories; a file written through A is read through B, gc and fsck take both options."""
    dsn = pg_cluster.new_database("scaleout")
    blocks = ("--blocks", bucket_url)
    a = ServerProcess(tmp_path / "a", meta_url=dsn, store_args=blocks)
    b = ServerProcess(tmp_path / "b", meta_url=dsn, store_args=blocks)
    try:
        a.start()
        b.start()
        alice = a.add_user("alice")
        root = root_of(b, alice)
        data = b"through A, read through B"
        f = put_file(a, alice, root, "f", data)
        status, block = b.request("GET", f"/v1/blocks/{bid(data)}", alice)
        assert status == 200 and block == data
        status, got = b.request("GET", f"/v1/nodes/{f['id']}?blocks=1", alice)
        assert status == 200 and isinstance(got, dict) and got["blocks"] == [[bid(data), len(data)]]
        orphan = b"uploaded through B, never committed"
        status, _ = b.request("PUT", f"/v1/blocks/{bid(orphan)}", alice, data=orphan)
        assert status in (200, 201)
        bucket = bucket_url.split("?")[0].removeprefix("s3://")
        assert bucket_objects(moto.url, bucket) == {bid(data), bid(orphan)}
        assert not list((tmp_path / "a").glob("blocks/*/*/*"))  # the blocks are in the bucket
        gc = subprocess.run(
            server_cmd("gc", *a.admin_args(), "--grace-seconds", "0"),
            capture_output=True,
            text=True,
        )
        assert gc.returncode == 0 and "removed 1 unreferenced block" in gc.stdout, gc
        assert bucket_objects(moto.url, bucket) == {bid(data)}
        status, block = a.request("GET", f"/v1/blocks/{bid(data)}", alice)
        assert status == 200 and block == data
        assert_clean(a, b)
    finally:
        a.stop()
        b.stop()


def bucket_objects(endpoint: str, bucket: str) -> set[str]:
    import boto3  # test-only dependency, like moto

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    resp = s3.list_objects_v2(Bucket=bucket, Prefix="blocks/")
    return {obj["Key"].rsplit("/", 1)[-1] for obj in resp.get("Contents", [])}
