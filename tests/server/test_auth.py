"""Passwords, per-device tokens, POST /v1/login and its rate limit (issue 11), on real server
processes with each metadata engine; the schema migration keeps old tokens working."""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cloudfs_server.auth import token_digest
from cloudfs_server.engines import postgres
from cloudfs_server.http.login import LoginLimiter

from tests.pg import PgCluster
from tests.server.conftest import BOTH_ENGINES
from tests.server.test_node_fields import build_v1_database
from tests.support import ServerProcess, User, server_cmd

PASSWORD = "correct horse battery staple"
TOKEN = "cfs_" + "x" * 43  # a token as a version-1/2 server issued it


def admin(srv: ServerProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        server_cmd(*args, *srv.admin_args()), capture_output=True, text=True, timeout=60
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def one_line(out: subprocess.CompletedProcess[str], code: int) -> str:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def login(
    srv: ServerProcess, user: str, password: str, device: str = "laptop"
) -> tuple[int, Any, float]:
    start = time.perf_counter()
    status, body = srv.request(
        "POST", "/v1/login", body={"user": user, "password": password, "device": device}
    )
    return status, body, time.perf_counter() - start


def me(srv: ServerProcess, token: str) -> int:
    status, _ = srv.request("GET", "/v1/me", User("?", token))
    return status


def tokens(srv: ServerProcess, name: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(admin(srv, "tokens", name, "--json").stdout)
    return {row["device"]: row for row in rows}


def assert_clean_log(srv: ServerProcess) -> None:
    log = srv.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


@pytest.fixture
def make_server(request: pytest.FixtureRequest, meta_engine: str, tmp_path: Path) -> Iterator[Any]:
    """Start servers on this test's engine (extra `serve` options as arguments)."""
    started: list[ServerProcess] = []
    dsn = None
    if meta_engine == "postgres":
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        dsn = cluster.new_database("auth")

    def make(*extra: str, data: Path | None = None, meta_url: str | None = None) -> ServerProcess:
        srv = ServerProcess(data or tmp_path / "data", *extra, meta_url=meta_url or dsn)
        started.append(srv)
        return srv.start()

    try:
        yield make
        for srv in started:
            assert_clean_log(srv)
    finally:
        for srv in started:
            srv.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return path


@BOTH_ENGINES
def test_login_gives_each_device_its_token_and_a_second_login_replaces_it(
    make_server: Any, password_file: Path
) -> None:
    srv = make_server("--login-failures", "100")
    cli = srv.add_user("alice", "--password-file", str(password_file))
    assert me(srv, cli.token) == 200  # add-user's last line is a usable token (admin-cli)
    status, body, _ = login(srv, "alice", PASSWORD, "laptop")
    assert status == 201, body
    assert body["device"] == "laptop" and body["user"] == "alice"
    first = body["token"]
    assert me(srv, first) == 200
    status, body, _ = login(srv, "alice", PASSWORD, "laptop")
    assert status == 201, body
    assert body["token"] != first
    assert me(srv, first) == 401, "the replaced token of the device must stop working"
    assert me(srv, body["token"]) == 200
    assert me(srv, cli.token) == 200, "another device's token is untouched"
    assert set(tokens(srv, "alice")) == {"admin-cli", "laptop"}
    # login needs no bearer token, and a bad body is a 400 (not a 401)
    status, body = srv.request("POST", "/v1/login", body={"user": "alice"})
    assert status == 400 and body["error"] == "bad_request", body


@BOTH_ENGINES
def test_unknown_user_and_wrong_password_get_the_same_401_in_similar_time(
    make_server: Any, password_file: Path
) -> None:
    srv = make_server("--login-failures", "100")
    srv.add_user("alice", "--password-file", str(password_file))
    srv.add_user("nopass")  # a user without a password cannot log in at all
    for _ in range(2):  # warm-up (the dummy hash is made on first use)
        login(srv, "nobody", "x")
        login(srv, "alice", "wrong")
    times: dict[str, list[float]] = {"nobody": [], "alice": [], "nopass": []}
    bodies = set()
    for _ in range(4):
        for name in times:
            status, body, took = login(srv, name, "wrong password")
            assert status == 401, body
            bodies.add(json.dumps(body, sort_keys=True))
            times[name].append(took)
    assert len(bodies) == 1, bodies  # one body whatever the reason
    assert json.loads(bodies.pop()) == {
        "error": "unauthorized",
        "message": "wrong user name or password",
    }
    wrong = statistics.median(times["alice"])
    for name in ("nobody", "nopass"):
        # Without the dummy hash an unknown user answers in ~1 ms, a wrong password in tens.
        assert statistics.median(times[name]) > 0.4 * wrong, (times, name)


def test_failed_logins_are_rate_limited_then_recover(make_server: Any, password_file: Path) -> None:
    srv = make_server("--login-failures", "3", "--login-window", "2s")
    srv.add_user("alice", "--password-file", str(password_file))
    srv.add_user("bob", "--password-file", str(password_file))
    for _ in range(3):
        assert login(srv, "alice", "wrong")[0] == 401
    req_body = {"user": "alice", "password": PASSWORD, "device": "laptop"}
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        srv.url + "/v1/login", data=json.dumps(req_body).encode(), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 429
    retry_after = int(err.value.headers["Retry-After"])
    assert 1 <= retry_after <= 2
    body = json.loads(err.value.read())
    assert body["error"] == "rate_limited" and body["retry_after_s"] == retry_after, body
    # the right password does not help meanwhile, nor another user from the same address
    assert login(srv, "alice", PASSWORD)[0] == 429
    assert login(srv, "bob", PASSWORD)[0] == 429
    time.sleep(retry_after + 0.2)
    status, body, _ = login(srv, "alice", PASSWORD)
    assert status == 201, body
    assert login(srv, "bob", PASSWORD)[0] == 201


def test_the_limiter_counts_user_names_and_addresses_apart() -> None:
    limiter = LoginLimiter(failures_max=2, window_s=10.0)
    limiter.failed(["user:a", "addr:1"], now=0.0)
    limiter.failed(["user:a", "addr:2"], now=1.0)
    assert limiter.retry_after_s(["user:a", "addr:3"], now=2.0) == 8  # the name: from anywhere
    assert limiter.retry_after_s(["user:b", "addr:1"], now=2.0) is None  # one failure there
    limiter.failed(["user:b", "addr:1"], now=3.0)
    assert limiter.retry_after_s(["user:c", "addr:1"], now=4.0) == 6  # the address: any name
    assert limiter.retry_after_s(["user:a", "addr:9"], now=10.5) is None  # the window moved on
    limiter.succeeded("user:b")
    assert limiter.retry_after_s(["user:b", "addr:5"], now=4.0) is None


@BOTH_ENGINES
def test_tokens_list_last_use_and_revoking_one_device_leaves_the_others(
    make_server: Any, password_file: Path
) -> None:
    srv = make_server("--login-failures", "100")
    cli = srv.add_user("alice", "--password-file", str(password_file))
    laptop = login(srv, "alice", PASSWORD, "laptop")[1]["token"]
    phone = login(srv, "alice", PASSWORD, "phone")[1]["token"]
    listed = tokens(srv, "alice")
    assert set(listed) == {"admin-cli", "laptop", "phone"}
    assert all(row["last_used_ns"] is None for row in listed.values()), listed
    assert all(row["created_at_ns"] > 0 for row in listed.values())
    before = time.time_ns()
    assert me(srv, laptop) == 200
    used = tokens(srv, "alice")["laptop"]["last_used_ns"]
    assert used is not None and used >= before
    assert tokens(srv, "alice")["phone"]["last_used_ns"] is None
    for _ in range(10):  # within the minute: no further write
        assert me(srv, laptop) == 200
    assert tokens(srv, "alice")["laptop"]["last_used_ns"] == used
    text = admin(srv, "tokens", "alice").stdout
    assert "laptop" in text and "never" in text, text  # the table: phone was never used

    out = admin(srv, "revoke-token", "alice", "laptop")
    assert "laptop" in out.stdout
    assert me(srv, laptop) == 401, "a revoked device's next request answers 401"
    assert me(srv, phone) == 200 and me(srv, cli.token) == 200
    assert set(tokens(srv, "alice")) == {"admin-cli", "phone"}
    line = one_line(admin(srv, "revoke-token", "alice", "laptop", check=False), 1)
    assert "no token for device 'laptop'" in line, line
    line = one_line(admin(srv, "tokens", "nobody", check=False), 1)
    assert "no user named 'nobody'" in line, line
    # reset-token replaces only the admin-cli token (and brings it back once revoked)
    admin(srv, "revoke-token", "alice", "admin-cli")
    assert me(srv, cli.token) == 401
    new = admin(srv, "reset-token", "alice").stdout.strip().splitlines()[-1]
    assert me(srv, new) == 200 and me(srv, phone) == 200


@BOTH_ENGINES
def test_set_password_and_add_user_without_a_password(
    make_server: Any, password_file: Path, tmp_path: Path
) -> None:
    srv = make_server("--login-failures", "100")
    srv.add_user("bob")  # stdin is not a terminal and no file: no password, as before
    assert login(srv, "bob", "")[0] in (400, 401)
    assert login(srv, "bob", "anything")[0] == 401
    admin(srv, "set-password", "bob", "--password-file", str(password_file))
    assert login(srv, "bob", PASSWORD)[0] == 201
    other = tmp_path / "other"
    other.write_text("second password\n")
    admin(srv, "set-password", "bob", "--password-file", str(other))
    assert login(srv, "bob", PASSWORD)[0] == 401
    assert login(srv, "bob", "second password")[0] == 201
    out = subprocess.run(
        server_cmd("set-password", "bob", *srv.admin_args()),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert "--password-file" in one_line(out, 2)
    line = one_line(
        admin(srv, "set-password", "nobody", "--password-file", str(other), check=False), 1
    )
    assert "no user named 'nobody'" in line


def test_an_old_embedded_deployment_keeps_its_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    build_v1_database(data / "meta.sqlite3", token_digest(TOKEN))
    srv = ServerProcess(data).start()
    try:
        assert me(srv, TOKEN) == 200
        listed = tokens(srv, "old")
        assert list(listed) == ["admin-cli"], listed
        conn = sqlite3.connect(data / "meta.sqlite3")
        try:
            version = conn.execute(
                "SELECT value FROM settings WHERE key = 'schema_version'"
            ).fetchone()
            columns = [row[1] for row in conn.execute("PRAGMA table_info(users)")]
        finally:
            conn.close()
        assert version == ("3",)
        assert "token_sha256" not in columns and "password_hash" in columns
        assert_clean_log(srv)
    finally:
        srv.stop()


def test_an_old_postgresql_deployment_keeps_its_token(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    dsn = pg_cluster.new_database("v2")
    with psycopg.connect(dsn) as conn:  # the schema and a user as a version-2 server left them
        conn.execute(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, "
            "applied_at_ns BIGINT NOT NULL)"
        )
        for version in (1, 2):
            conn.execute(postgres.MIGRATIONS[version - 1].encode())
            conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (version,))
        conn.execute(
            "INSERT INTO users (user_id, name, token_sha256, root, created_at_ns) "
            "VALUES (1, 'old', %s, 1, 0)",
            (token_digest(TOKEN),),
        )
        conn.execute(
            "INSERT INTO nodes (node_id, user_id, parent, name, kind, mode, size, mtime_ns, "
            "ctime_ns, atime_ns, version, committed_by, committed_at_ns) "
            "VALUES (1, 1, NULL, '', 'dir', 493, 0, 1, 1, 1, 1, 'server', 1)"
        )
        conn.execute("SELECT setval(pg_get_serial_sequence('users', 'user_id'), 2, false)")
        conn.execute("SELECT setval(pg_get_serial_sequence('nodes', 'node_id'), 2, false)")
    srv = ServerProcess(tmp_path / "data", meta_url=dsn).start()
    try:
        assert me(srv, TOKEN) == 200
        assert list(tokens(srv, "old")) == ["admin-cli"]
        new = srv.add_user("new")  # ids continue after the old user's
        assert me(srv, new.token) == 200
        assert_clean_log(srv)
    finally:
        srv.stop()


def test_migrate_to_postgresql_copies_device_tokens_and_passwords(
    pg_cluster: PgCluster, tmp_path: Path, password_file: Path
) -> None:
    data = tmp_path / "data"
    embedded = ServerProcess(data, "--login-failures", "100").start()
    try:
        cli = embedded.add_user("alice", "--password-file", str(password_file))
        laptop = login(embedded, "alice", PASSWORD, "laptop")[1]["token"]
        assert_clean_log(embedded)
    finally:
        embedded.stop()
    dsn = pg_cluster.new_database("mig")
    out = subprocess.run(
        server_cmd("migrate", "--data", str(data), "--meta", dsn), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "copied 2 tokens row(s)" in out.stdout, out.stdout
    shared = ServerProcess(data, "--login-failures", "100", meta_url=dsn).start()
    try:
        assert me(shared, cli.token) == 200 and me(shared, laptop) == 200
        assert login(shared, "alice", PASSWORD, "phone")[0] == 201  # the password came along
        assert_clean_log(shared)
    finally:
        shared.stop()
