"""`cloudfs versions / restore / trash / undelete` against a real server process, run as the
installed `cloudfs` binary; content is made and checked over HTTP (tests/fuse: the mount side)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudfs.chunking import block_id_of
from tests.support import ServerProcess, User

CLOUDFS = str(Path(sys.executable).parent / "cloudfs")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No token from the environment, and a login config of this test only."""
    out = {k: v for k, v in os.environ.items() if k != "CLOUDFS_TOKEN"}
    out["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    out["XDG_RUNTIME_DIR"] = str(tmp_path / "run")  # no running mounts of other tests
    return out


def cloudfs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLOUDFS, *args], capture_output=True, text=True, timeout=60, env=env)


class Drive:
    """Makes and inspects one user's files over HTTP, as a given device."""

    def __init__(self, server: ServerProcess, user: User) -> None:
        self.server = server
        self.user = user
        self.root = int(self.call("GET", "/v1/me")["root"])

    def call(self, method: str, path: str, body: object = None, device: str = "test") -> dict:
        status, answer = self.server.request(
            method, path, body=body, headers=self.user.headers(device)
        )
        assert status in (200, 201), (method, path, status, answer)
        assert isinstance(answer, dict)
        return answer

    def blocks(self, data: bytes) -> list[list[object]]:
        block_id = block_id_of(data)
        status, _ = self.server.request(
            "PUT", f"/v1/blocks/{block_id}", data=data, headers=self.user.headers()
        )
        assert status in (200, 201)
        return [[block_id, len(data)]]

    def mkdir(self, parent: int, name: str) -> int:
        body = {"name": name, "type": "dir"}
        return int(self.call("POST", f"/v1/nodes/{parent}/children", body)["id"])

    def create(self, parent: int, name: str, data: bytes, device: str = "test") -> int:
        body = {"name": name, "type": "file", "size": len(data), "blocks": self.blocks(data)}
        return int(self.call("POST", f"/v1/nodes/{parent}/children", body, device)["id"])

    def commit(self, node_id: int, data: bytes, device: str) -> int:
        base = int(self.call("GET", f"/v1/nodes/{node_id}")["version"])
        body = {"base_version": base, "size": len(data), "blocks": self.blocks(data)}
        return int(self.call("PUT", f"/v1/nodes/{node_id}/content", body, device)["version"])

    def content(self, node_id: int) -> bytes:
        node = self.call("GET", f"/v1/nodes/{node_id}?blocks=1")
        out = b""
        for block_id, _ in node["blocks"]:
            status, raw = self.server.request(
                "GET", f"/v1/blocks/{block_id}", headers=self.user.headers()
            )
            assert status == 200 and isinstance(raw, bytes)
            out += raw
        return out

    def lookup(self, parent: int, name: str) -> dict | None:
        status, answer = self.server.request(
            "GET", f"/v1/nodes/{parent}/lookup?name={name}", headers=self.user.headers()
        )
        if status == 404:
            return None
        assert status == 200 and isinstance(answer, dict)
        return answer

    def trash(self) -> list[dict]:
        return list(self.call("GET", "/v1/trash")["entries"])


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (and nothing on stdout)."""
    assert out.returncode != 0, f"expected a failure, got 0 with {out.stdout!r}"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudfs: error: "), out.stderr
    assert out.stdout == ""
    return lines[0][len("cloudfs: error: ") :]


def test_versions_table_and_restore(
    server: ServerProcess, alice: User, env: dict[str, str]
) -> None:
    drive = Drive(server, alice)
    docs = drive.mkdir(drive.root, "docs")
    texts = [b"first\n", b"the second text\n", b"3" * 3000]
    node = drive.create(docs, "a.txt", texts[0], device="laptop")
    drive.commit(node, texts[1], device="phone")
    drive.commit(node, texts[2], device="desk")
    auth = ("--server", server.url, f"--token={alice.token}")

    out = cloudfs(env, "versions", "/docs/a.txt", *auth)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "SIZE", "TIME", "DEVICE"]
    rows = [line.split() for line in lines[1:]]
    # newest first: version, size (human), date, time (local), device
    assert [(r[0], " ".join(r[1:3]), r[5:]) for r in rows] == [
        ("3", "2.9 KiB", ["desk", "(current)"]),
        ("2", "16 B", ["phone"]),
        ("1", "6 B", ["laptop"]),
    ]
    today = time.strftime("%Y-%m-%d")
    assert all(r[3] == today for r in rows), rows

    as_json = cloudfs(env, "versions", "/docs/a.txt", *auth, "--json")
    assert as_json.returncode == 0, as_json.stderr
    listed = json.loads(as_json.stdout)
    assert listed["id"] == node
    assert listed["versions"] == drive.call("GET", f"/v1/nodes/{node}/versions")["versions"]

    out = cloudfs(env, "restore", "/docs/a.txt", "--version", "1", *auth)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "/docs/a.txt: restored version 1 as the new version 4 (6 B)"
    assert drive.content(node) == texts[0]
    versions = drive.call("GET", f"/v1/nodes/{node}/versions")["versions"]
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    assert versions[0]["device"].endswith("(cli)")

    # restoring the current version changes nothing
    out = cloudfs(env, "restore", "/docs/a.txt", "--version", "4", *auth)
    assert out.returncode == 0, out.stderr
    assert "already the current version" in out.stdout
    assert drive.call("GET", f"/v1/nodes/{node}")["version"] == 4


def test_history_errors_are_one_line(
    server: ServerProcess, alice: User, env: dict[str, str], tmp_path: Path
) -> None:
    drive = Drive(server, alice)
    docs = drive.mkdir(drive.root, "docs")
    node = drive.create(docs, "a.txt", b"one")
    drive.commit(node, b"two", device="phone")
    auth = ("--server", server.url, f"--token={alice.token}")

    msg = one_error_line(cloudfs(env, "restore", "/docs/a.txt", "--version", "9", *auth))
    assert msg == "/docs/a.txt has no version 9 (it has 2, 1)"
    assert drive.call("GET", f"/v1/nodes/{node}")["version"] == 2
    msg = one_error_line(cloudfs(env, "restore", "/docs/a.txt", "--version", "0", *auth))
    assert "positive" in msg
    msg = one_error_line(cloudfs(env, "versions", "/docs/nope.txt", *auth))
    assert msg == "/docs/nope.txt: no such file on the server (not yet committed?)"
    msg = one_error_line(cloudfs(env, "versions", "/docs", *auth))
    assert msg == "/docs is a directory; only files have versions"
    msg = one_error_line(cloudfs(env, "versions", "docs/a.txt", *auth))
    assert "drive path starts with /" in msg
    # a local path outside any mount, without --server
    local = tmp_path / "local.txt"
    local.write_text("x")
    msg = one_error_line(cloudfs(env, "versions", str(local), f"--token={alice.token}"))
    assert "is not inside a running cloudfs mount" in msg

    bad = ("--server", server.url, "--token=cfs_wrong")
    for args in (("versions", "/docs/a.txt"), ("trash",), ("undelete", "5")):
        msg = one_error_line(cloudfs(env, *args, *bad))
        assert msg == f"{server.url} rejected the token (401 unauthorized)", args

    msg = one_error_line(cloudfs(env, "trash", f"--token={alice.token}"))
    assert msg.startswith("no server:"), msg

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    msg = one_error_line(cloudfs(env, "versions", "/docs/a.txt", "--server", dead, "--token=t"))
    assert msg.startswith(f"server {dead} is unreachable"), msg
    assert time.monotonic() - started < 15


def test_trash_and_undelete(server: ServerProcess, alice: User, env: dict[str, str]) -> None:
    drive = Drive(server, alice)
    docs = drive.mkdir(drive.root, "docs")
    old = drive.mkdir(drive.root, "old")
    auth = ("--server", server.url, f"--token={alice.token}")

    out = cloudfs(env, "trash", *auth)
    assert (out.returncode, out.stdout.strip()) == (0, "the trash is empty"), out.stderr

    b = drive.create(docs, "b.txt", b"bravo" * 100)
    c = drive.create(old, "c.txt", b"charlie")
    drive.call("DELETE", f"/v1/nodes/{b}")
    drive.call("DELETE", f"/v1/nodes/{c}")
    drive.call("DELETE", f"/v1/nodes/{old}")  # c's folder is gone too

    out = cloudfs(env, "trash", *auth)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "ORIGINAL", "PATH", "SIZE", "TRASHED"]
    rows = {int(line.split()[0]): line.split()[1:4] for line in lines[1:]}
    assert rows == {b: ["/docs/b.txt", "500", "B"], c: ["/old/c.txt", "7", "B"]}
    listed = json.loads(cloudfs(env, "trash", *auth, "--json").stdout)
    assert sorted(e["id"] for e in listed) == sorted([b, c])

    # the original name is taken again: a clear error that suggests --to, nothing changes
    newer = drive.create(docs, "b.txt", b"a new b")
    msg = one_error_line(cloudfs(env, "undelete", str(b), *auth))
    assert (
        msg
        == f"/docs/b.txt exists again; restore it elsewhere with `cloudfs undelete {b} --to PATH`"
    )
    assert drive.content(newer) == b"a new b"
    assert {e["id"] for e in drive.trash()} == {b, c}

    out = cloudfs(env, "undelete", str(b), "--to", "/docs/b-old.txt", *auth)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"restored /docs/b.txt (id {b}) to /docs/b-old.txt"
    restored = drive.lookup(docs, "b-old.txt")
    assert restored is not None and restored["id"] == b
    assert drive.content(b) == b"bravo" * 100

    # the original folder is gone: say so; --to an existing folder keeps the name
    msg = one_error_line(cloudfs(env, "undelete", str(c), *auth))
    assert msg.startswith("the folder of /old/c.txt no longer exists"), msg
    msg = one_error_line(cloudfs(env, "undelete", str(c), "--to", "/nowhere/c.txt", *auth))
    assert msg == "--to /nowhere/c.txt: its folder does not exist"
    msg = one_error_line(cloudfs(env, "undelete", str(c), "--to", "/docs/b.txt", *auth))
    assert msg == "--to /docs/b.txt already exists; choose another name"
    out = cloudfs(env, "undelete", str(c), "--to", "/docs", *auth)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"restored /old/c.txt (id {c}) to /docs/c.txt"
    assert drive.content(c) == b"charlie"
    assert drive.trash() == []

    msg = one_error_line(cloudfs(env, "undelete", str(c), *auth))
    assert msg == f"no file with id {c} in the trash (`cloudfs trash` lists them)"


def test_token_from_environment_and_login(
    server: ServerProcess, alice: User, bob: User, env: dict[str, str]
) -> None:
    drive = Drive(server, alice)
    node = drive.create(drive.root, "a.txt", b"alice's")
    drive.call("DELETE", f"/v1/nodes/{node}")

    out = cloudfs(dict(env, CLOUDFS_TOKEN=alice.token), "trash", "--server", server.url)
    assert out.returncode == 0, out.stderr
    assert "/a.txt" in out.stdout

    login = cloudfs(env, "login", server.url, f"--token={bob.token}")
    assert login.returncode == 0, login.stderr
    out = cloudfs(env, "trash")  # bob's, from the login config: he must not see alice's file
    assert (out.returncode, out.stdout.strip()) == (0, "the trash is empty"), out.stderr
    msg = one_error_line(cloudfs(env, "undelete", str(node)))
    assert msg == f"no file with id {node} in the trash (`cloudfs trash` lists them)"
    assert {e["id"] for e in drive.trash()} == {node}
