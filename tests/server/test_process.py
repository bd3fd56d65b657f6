"""Real `cloudfs-server` processes: races, kill -9, fsck, gc, purge, CLI, graceful shutdown."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.server.helpers import Api, bid
from tests.support import ServerProcess, User, server_cmd


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_cmd(*args), capture_output=True, text=True, timeout=60)


def block_files(data: Path) -> set[str]:
    return {p.name for p in (data / "blocks").rglob("*") if p.is_file()}


def test_twenty_concurrent_commits_on_one_base(server: ServerProcess, alice: User) -> None:
    api = Api(server, alice)
    f = api.create_file(api.root, "race.txt", b"base")
    payloads = [f"edit number {i:02d}".encode() for i in range(20)]
    blocks = [api.upload(p) for p in payloads]  # uploads first: the race is the commit only
    barrier = threading.Barrier(20)

    def commit(i: int) -> tuple[int, dict]:
        barrier.wait()
        return api.call(
            "PUT",
            f"/v1/nodes/{f['id']}/content",
            {"base_version": 1, "size": len(payloads[i]), "blocks": blocks[i]},
            headers={"X-Cloudfs-Device": f"dev{i}"},
        )

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(commit, range(20)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [409] * 19, statuses
    (winner,) = [i for i, (status, _) in enumerate(results) if status == 200]
    for status, body in results:
        if status == 409:
            assert body["error"] == "version_conflict" and body["current_version"] == 2
            assert body["committed_by"] == f"dev{winner}"
    assert api.read(f["id"]) == payloads[winner]
    status, hist = api.call("GET", f"/v1/nodes/{f['id']}/versions")
    assert [v["version"] for v in hist["versions"]] == [2, 1]


@pytest.mark.slow
def test_kill_9_during_burst_loses_no_acknowledged_commit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = ServerProcess(data).start()
    try:
        user = srv.add_user("alice")
        api = Api(srv, user)
        files = [api.create_file(api.root, f"f{i}", b"start")["id"] for i in range(6)]
        acked: dict[int, tuple[int, bytes]] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def worker(node_id: int) -> None:
            version, n = 1, 0
            while not stop.is_set():
                n += 1
                content = os.urandom(3000) + f"{node_id}-{n}".encode()
                try:
                    status, body = api.commit(node_id, version, content, chunk=1024)
                except (OSError, AssertionError):
                    return  # the server died mid-request: that commit was not acknowledged
                if status != 200:
                    return
                version = body["version"]
                with lock:
                    acked[node_id] = (version, content)

        threads = [threading.Thread(target=worker, args=(f,)) for f in files]
        for t in threads:
            t.start()
        time.sleep(1.5)
        srv.kill9()
        stop.set()
        for t in threads:
            t.join(30)
        assert sum(v for v, _ in acked.values()) > len(files), "the burst acknowledged nothing"

        check = cli("fsck", "--data", str(data))
        assert check.returncode == 0, check.stdout + check.stderr
        srv = ServerProcess(data).start()
        api = Api(srv, user)
        for node_id, (version, content) in acked.items():
            status, node = api.call("GET", f"/v1/nodes/{node_id}")
            assert status == 200 and node["version"] >= version
            status, old = api.call("GET", f"/v1/nodes/{node_id}/versions/{version}")
            assert status == 200 and old["size"] == len(content)
            data_out = b"".join(api.call("GET", f"/v1/blocks/{b}")[1] for b, _ in old["blocks"])
            assert data_out == content
    finally:
        srv.stop()


def test_gc_reclaims_unreferenced_blocks_only(server: ServerProcess, alice: User) -> None:
    api = Api(server, alice)
    data = server.data_dir
    f = api.create_file(api.root, "f", b"old-old-", chunk=4)  # blocks "old-" (twice)
    status, _ = api.commit(f["id"], 1, b"new!", chunk=4)
    assert status == 200
    orphan = api.put_block(b"uploaded but never committed")
    assert orphan in block_files(data)
    out = cli("gc", "--data", str(data))  # default grace: a fresh upload is kept
    assert out.returncode == 0 and orphan in block_files(data), out.stdout
    out = cli("gc", "--data", str(data), "--grace-seconds", "0")
    assert out.returncode == 0, out.stderr
    assert "removed 1 unreferenced block" in out.stdout
    assert block_files(data) == {bid(b"old-"), bid(b"new!")}
    status, body = api.call("POST", "/v1/blocks/missing", {"block_ids": [orphan]})
    assert body == {"missing": [orphan]}
    # History keeps "old-" alive until it is purged.
    out = cli("purge", "--data", str(data), "--retention-days", "0")
    assert out.returncode == 0 and "dropped 1 old version" in out.stdout, out.stdout
    out = cli("gc", "--data", str(data), "--grace-seconds", "0")
    assert block_files(data) == {bid(b"new!")}
    assert api.read(f["id"]) == b"new!"
    status, hist = api.call("GET", f"/v1/nodes/{f['id']}/versions")
    assert [v["version"] for v in hist["versions"]] == [2]
    assert cli("fsck", "--data", str(data)).returncode == 0


def test_gc_racing_commits_never_loses_referenced_blocks(
    server: ServerProcess, alice: User
) -> None:
    api = Api(server, alice)
    data = server.data_dir
    f = api.create_file(api.root, "f", b"seed")
    stop = threading.Event()
    outcomes: list[int] = []

    def committer() -> None:
        version, n = 1, 0
        while not stop.is_set():
            n += 1
            content = f"content {n} ".encode() * 3
            blocks = api.upload(content, chunk=8)
            status, body = api.call(
                "PUT",
                f"/v1/nodes/{f['id']}/content",
                {"base_version": version, "size": len(content), "blocks": blocks},
            )
            outcomes.append(status)
            if status == 200:
                version = body["version"]
            else:
                assert (status, body["error"]) == (409, "missing_blocks"), body

    t = threading.Thread(target=committer)
    t.start()
    try:
        for _ in range(4):
            cli("purge", "--data", str(data), "--retention-days", "0")
            out = cli("gc", "--data", str(data), "--grace-seconds", "0")
            assert out.returncode == 0, out.stderr
    finally:
        stop.set()
        t.join(30)
    assert outcomes.count(200) > 0
    check = cli("fsck", "--data", str(data))
    assert check.returncode == 0, check.stdout
    api.read(f["id"])  # every block of the current version is still there


def test_fsck_detects_corruption_and_bad_refcount_and_repairs_what_is_safe(
    server: ServerProcess, alice: User
) -> None:
    api = Api(server, alice)
    data = server.data_dir
    f = api.create_file(api.root, "f", b"aaaabbbb", chunk=4)
    assert cli("fsck", "--data", str(data)).returncode == 0
    # A wrong refcount: detected, then repaired.
    with sqlite3.connect(data / "meta.sqlite3") as db:
        db.execute("UPDATE blocks SET refcount = 7 WHERE block_id = ?", (bid(b"aaaa"),))
    out = cli("fsck", "--data", str(data))
    assert out.returncode == 1 and f"block {bid(b'aaaa')}: refcount 7, expected 1" in out.stdout
    out = cli("fsck", "--data", str(data), "--repair")
    assert out.returncode == 0 and "repaired:" in out.stdout, out.stdout
    assert cli("fsck", "--data", str(data)).returncode == 0
    # A corrupted block file: reported, moved aside, not repairable until re-uploaded.
    victim = bid(b"bbbb")
    path = data / "blocks" / victim[:2] / victim[2:4] / victim
    path.write_bytes(b"bxbb")
    out = cli("fsck", "--data", str(data))
    assert out.returncode == 1 and f"block {victim}: corrupt" in out.stdout, out.stdout
    out = cli("fsck", "--data", str(data), "--repair")
    assert out.returncode == 1 and (data / "corrupt" / victim).exists(), out.stdout
    _, body = api.call("POST", "/v1/blocks/missing", {"block_ids": [victim]})
    assert body == {"missing": [victim]}  # so the client uploads it again
    api.put_block(b"bbbb")
    assert path.read_bytes() == b"bbbb"
    out = cli("fsck", "--data", str(data))
    assert out.returncode == 0, out.stdout
    assert api.read(f["id"]) == b"aaaabbbb"


def test_cli_users_tokens_usage_and_errors(server: ServerProcess, alice: User) -> None:
    data = str(server.data_dir)
    out = cli("add-user", "alice", "--data", data)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "already exists" in out.stderr
    out = cli("add-user", "carol", "--data", data, "--quota", "1000")
    assert out.returncode == 0
    carol = User("carol", out.stdout.strip().splitlines()[-1])
    assert server.request("GET", "/v1/me", carol)[1]["quota_bytes"] == 1000
    out = cli("list-users", "--data", data)
    assert "alice" in out.stdout and "carol" in out.stdout and "1000" in out.stdout
    assert carol.token not in out.stdout
    out = cli("reset-token", "carol", "--data", data)
    new = User("carol", out.stdout.strip().splitlines()[-1])
    assert server.request("GET", "/v1/me", carol)[0] == 401
    assert server.request("GET", "/v1/me", new)[0] == 200
    raw = (server.data_dir / "meta.sqlite3").read_bytes()
    assert new.token.encode() not in raw and alice.token.encode() not in raw
    Api(server, alice).create_file(Api(server, alice).root, "f", b"abcdabcd")
    out = cli("usage", "--data", data)
    assert out.returncode == 0 and "dedup ratio" in out.stdout
    assert any(line.startswith("alice") and " 8 " in line for line in out.stdout.splitlines())
    out = cli("fsck", "--data", str(server.data_dir.parent / "nowhere"))
    assert out.returncode == 1 and "no cloudfs data" in out.stderr
    out = cli("compact-log", "--data", data, "--keep", "0")
    assert out.returncode == 0
    status, body = server.request("GET", "/v1/changes?cursor=0", alice)
    assert status == 410 and body["error"] == "cursor_expired"


def test_sigterm_finishes_in_flight_requests(server: ServerProcess, alice: User) -> None:
    result: list[tuple[int, object]] = []
    poll = threading.Thread(
        target=lambda: result.append(server.request("GET", "/v1/changes?cursor=0&wait=30", alice))
    )
    poll.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    poll.join(20)
    assert server.proc.wait(20) == 0
    assert time.monotonic() - started < 10
    assert result and result[0][0] == 200, result
    log = server.log_path.read_text()
    assert "GET /v1/changes" in log  # one access-log line per request


def test_serve_purges_history_and_trash_past_retention(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", "--retention-days", "0", "--purge-interval", "0.3")
    srv.start()
    try:
        user = srv.add_user("alice")
        api = Api(srv, user)
        f = api.create_file(api.root, "f", b"one")
        assert api.commit(f["id"], 1, b"two")[0] == 200
        g = api.create_file(api.root, "g", b"gone")
        assert api.call("DELETE", f"/v1/nodes/{g['id']}")[0] == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            versions = api.call("GET", f"/v1/nodes/{f['id']}/versions")[1]["versions"]
            trash = api.call("GET", "/v1/trash")[1]["entries"]
            if len(versions) == 1 and not trash:
                break
            time.sleep(0.1)
        assert [v["version"] for v in versions] == [2] and trash == []
        assert api.read(f["id"]) == b"two"
    finally:
        srv.stop()


def test_one_server_per_data_dir(server: ServerProcess) -> None:
    second = ServerProcess(server.data_dir)
    with pytest.raises(RuntimeError, match="exited early"):
        second.start()
    second.stop()
    assert "already serving" in second.log_path.read_text()
    assert server.request("GET", "/healthz") == (200, {"ok": True})


def test_client_vanishing_mid_upload_stores_nothing(server: ServerProcess, alice: User) -> None:
    url = urlsplit(server.url)
    block_id = bid(b"never completed")
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(
            f"PUT /v1/blocks/{block_id} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {alice.token}\r\nContent-Length: 1000000\r\n\r\n".encode()
            + b"x" * 5000
        )
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while "client disconnected" not in server.log_path.read_text():
        assert time.monotonic() < deadline, "the server never noticed the disconnect"
        time.sleep(0.05)
    assert list((server.data_dir / "tmp").iterdir()) == []
    assert block_files(server.data_dir) == set()
    assert server.request("GET", "/healthz") == (200, {"ok": True})
