"""The conventions of both command lines, run as the installed `cloudfs` and `cloudfs-server`
binaries against a real server process: --version, exit codes (0 ok, 1 failed, 2 malformed),
quiet on a closed pipe, a busy port, malformed URLs, --json listings, environment defaults,
shell completion, and one line (never a traceback) for unexpected failures."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudfs.chunking import block_id_of
from tests.support import ServerProcess, User

BIN = Path(sys.executable).parent
CLOSED_PIPE = 141


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No token, server or data dir from the environment; a login config of this test only."""
    out = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CLOUDFS_TOKEN", "CLOUDFS_SERVER", "CLOUDFS_DATA", "CLOUDFS_CONFIG")
    }
    out["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    out["XDG_RUNTIME_DIR"] = str(tmp_path / "run")  # no running mounts of other tests
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    return out


def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60, env=env
    )


def one_line(out: subprocess.CompletedProcess[str], code: int, prefix: str = "cloudfs") -> str:
    """The one stderr line of a command that must exit with `code`, without a traceback."""
    assert out.returncode == code, f"expected exit {code}, got {out.returncode}: {out.stderr!r}"
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prefix}"), f"not one line: {lines!r}"
    return lines[0]


def test_version_of_both_commands(env: dict[str, str]) -> None:
    version = importlib.metadata.version("cloudfs")
    for command in ("cloudfs", "cloudfs-server"):
        out = run(env, command, "--version")
        assert (out.returncode, out.stdout.strip()) == (0, f"{command} {version}"), out.stderr


def test_exit_codes_malformed_is_2_failed_is_1(
    server: ServerProcess, alice: User, env: dict[str, str], tmp_path: Path
) -> None:
    data = str(server.data_dir)
    auth = ("--server", server.url, f"--token={alice.token}")
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        failed = {
            "unreachable server": run(env, "cloudfs", "trash", "--server", dead, "--token=t"),
            "wrong token": run(env, "cloudfs", "trash", "--server", server.url, "--token=nope"),
            "no such trash id": run(env, "cloudfs", "undelete", "999", *auth),
            "no such user": run(env, "cloudfs-server", "reset-token", "zed", "--data", data),
            "user exists": run(env, "cloudfs-server", "add-user", "alice", "--data", data),
            "no data dir": run(env, "cloudfs-server", "fsck", "--data", str(tmp_path / "none")),
            "data is a file": run(env, "cloudfs-server", "serve", "--data", str(a_file)),
        }
    malformed = {
        "unknown command": run(env, "cloudfs", "frobnicate"),
        "URL without http://": run(env, "cloudfs", "trash", "--server", "localhost:1", "--token=t"),
        "bad duration": run(env, "cloudfs", "unmount", str(tmp_path), "--timeout", "soon"),
        "bad size": run(env, "cloudfs", "mount", str(tmp_path), "--cache-size", "12Q"),
        "no server": run(env, "cloudfs", "trash"),
        "no token": run(env, "cloudfs", "trash", "--server", server.url),
        "restore version 0": run(env, "cloudfs", "restore", "/a", "--version", "0", *auth),
        "relative drive path": run(env, "cloudfs", "versions", "a.txt", *auth),
        "server: bad quota": run(env, "cloudfs-server", "set-quota", "alice", "x", "--data", data),
        "server: no quota": run(env, "cloudfs-server", "set-quota", "alice", "--data", data),
        "server: bad grace": run(env, "cloudfs-server", "gc", "--data", data, "--grace", "1y"),
        "server: compact what": run(env, "cloudfs-server", "compact-log", "--data", data),
        "server: bad user name": run(env, "cloudfs-server", "add-user", "a/b", "--data", data),
    }  # fmt: skip
    for what, out in failed.items():
        prefix = "cloudfs-server" if "server" in out.args[0].rsplit("/", 1)[-1] else "cloudfs"
        line = one_line(out, 1, prefix)
        assert ": error: " in line, f"{what}: {line!r}"
    for what, out in malformed.items():
        prefix = "cloudfs-server" if what.startswith("server:") else "cloudfs"
        line = one_line(out, 2, prefix)
        assert ": error: " in line, f"{what}: {line!r}"


def test_malformed_url_is_explained(server: ServerProcess, env: dict[str, str]) -> None:
    host = server.url.removeprefix("http://")
    expected = f"cloudfs: error: '{host}' is not a server URL; write http://{host}"
    for argv in (
        ("cloudfs", "login", host, "--token=t"),
        ("cloudfs", "trash", "--server", host, "--token=t"),
        ("cloudfs", "devices", "--server", host, "--token=t"),
    ):
        assert one_line(run(env, *argv), 2) == expected, argv
    from_env = run(dict(env, CLOUDFS_SERVER=host, CLOUDFS_TOKEN="t"), "cloudfs", "trash")
    assert one_line(from_env, 2) == expected


def closed_pipe_run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose reader is already gone (what `| head` leaves behind)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child starts: its first write fails, every time
    try:
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        os.close(write_end)


def test_closed_pipe_is_quiet(server: ServerProcess, alice: User, env: dict[str, str]) -> None:
    data = str(server.data_dir)
    for argv in (
        ("cloudfs", "trash", "--json", "--server", server.url, f"--token={alice.token}"),
        ("cloudfs", "devices", "--server", server.url, f"--token={alice.token}"),
        ("cloudfs", "completion", "bash"),
        ("cloudfs-server", "list-users", "--json", "--data", data),
        ("cloudfs-server", "usage", "--data", data),
    ):
        out = closed_pipe_run(env, *argv)
        assert (out.returncode, out.stderr) == (CLOSED_PIPE, ""), f"{argv}: {out.stderr}"


def test_serve_on_a_busy_port_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run(
            env, "cloudfs-server", "serve", "--data", str(tmp_path / "d"), "--port", str(port)
        )
    assert one_line(out, 1, "cloudfs-server") == (
        f"cloudfs-server serve: error: port {port} on 127.0.0.1 is already in use"
    )


def test_json_listings_keep_the_table_keys(
    server: ServerProcess, alice: User, env: dict[str, str]
) -> None:
    data = str(server.data_dir)
    assert run(env, "cloudfs-server", "set-quota", "alice", "10G", "--data", data).returncode == 0
    server.add_user("bob", "--quota", "512M")
    out = run(env, "cloudfs-server", "list-users", "--json", "--data", data)
    assert out.returncode == 0, out.stderr
    users = {u["name"]: u for u in json.loads(out.stdout)}
    assert {k: users["alice"][k] for k in ("name", "quota_bytes")} == {
        "name": "alice",
        "quota_bytes": 10 << 30,
    }
    assert users["bob"]["quota_bytes"] == 512 << 20 and set(users["bob"]) >= {"id", "root"}
    status, me = server.request("GET", "/v1/me", alice)
    assert status == 200 and isinstance(me, dict) and me["quota_bytes"] == 10 << 30

    content = b"twice the same bytes"
    block = block_id_of(content)
    assert server.request("PUT", f"/v1/blocks/{block}", alice, data=content)[0] in (200, 201)
    for name in ("a", "b"):
        body = {
            "name": name,
            "type": "file",
            "size": len(content),
            "blocks": [[block, len(content)]],
        }
        status, _ = server.request("POST", f"/v1/nodes/{me['root']}/children", alice, body=body)
        assert status in (200, 201)
    out = run(env, "cloudfs-server", "usage", "--json", "--data", data)
    assert out.returncode == 0, out.stderr
    usage = json.loads(out.stdout)
    per_user = {u["name"]: u for u in usage["users"]}
    keys = {"logical_bytes", "stored_bytes", "physical_bytes", "files", "directories"}
    keys |= {"quota_bytes", "dedup_ratio"}
    assert set(per_user["alice"]) >= keys | {"name"}
    assert (per_user["alice"]["files"], per_user["alice"]["logical_bytes"]) == (2, 2 * len(content))
    assert per_user["alice"]["stored_bytes"] == len(content)
    assert per_user["alice"]["dedup_ratio"] == 2.0
    assert per_user["alice"]["physical_bytes"] == len(content)  # no layers: as stored
    server_keys = {"logical_bytes", "stored_bytes", "physical_bytes", "dedup_ratio", "blocks"}
    assert set(usage["server"]) >= server_keys
    assert usage["server"]["stored_bytes"] == len(content) and usage["server"]["blocks"] == 1
    assert usage["server"]["physical_bytes"] == len(content)


def test_environment_defaults_and_a_config_next_to_the_checkout(
    server: ServerProcess, alice: User, env: dict[str, str], tmp_path: Path
) -> None:
    local = tmp_path / "checkout" / ".cloudfs" / "config.json"
    local.parent.mkdir(parents=True)
    mine = dict(env, CLOUDFS_CONFIG=str(local))
    login = run(mine, "cloudfs", "login", server.url, f"--token={alice.token}")
    assert login.returncode == 0, login.stderr
    assert json.loads(local.read_text())["default_server"] == server.url
    assert not (tmp_path / "config" / "cloudfs").exists(), "the global config must stay untouched"
    out = run(mine, "cloudfs", "trash")
    assert (out.returncode, out.stdout.strip()) == (0, "the trash is empty"), out.stderr
    # no login at all: CLOUDFS_SERVER and CLOUDFS_TOKEN are enough
    bare = dict(env, CLOUDFS_SERVER=server.url, CLOUDFS_TOKEN=alice.token)
    out = run(bare, "cloudfs", "trash")
    assert (out.returncode, out.stdout.strip()) == (0, "the trash is empty"), out.stderr
    out = run(dict(env, CLOUDFS_DATA=str(server.data_dir)), "cloudfs-server", "list-users")
    assert out.returncode == 0 and "alice" in out.stdout, out.stderr


def test_config_trouble_is_one_line(
    server: ServerProcess, alice: User, env: dict[str, str], tmp_path: Path
) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"servers": ')
    a_dir = tmp_path / "a-dir.json"
    a_dir.mkdir()  # unreadable as a file, even for root
    not_a_login = tmp_path / "list.json"
    not_a_login.write_text("[1, 2]")
    for path, words in (
        (bad_json, "is not valid JSON"),
        (a_dir, "cannot read the config file"),
        (not_a_login, "is not a cloudfs login config"),
    ):
        out = run(dict(env, CLOUDFS_CONFIG=str(path)), "cloudfs", "trash")
        line = one_line(out, 1)
        assert words in line and str(path) in line, line


class GarbageServer:
    """A TCP listener answering every request with `answer`: a server gone wrong (the real
    one never does this), to check the client reports it in one line."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by close()
            with conn:
                try:
                    conn.recv(65536)
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture(
    params=[
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\ngarbage",
        b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\nConnection: close\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops",
    ],
    ids=["not-json", "bad-length", "not-http", "html-500"],
)
def garbage(request: pytest.FixtureRequest) -> Iterator[GarbageServer]:
    srv = GarbageServer(request.param)
    try:
        yield srv
    finally:
        srv.close()


def test_a_server_answering_garbage_is_one_line(
    garbage: GarbageServer, env: dict[str, str]
) -> None:
    for argv in (("trash",), ("devices",), ("login", garbage.url)):
        server = () if argv[0] == "login" else ("--server", garbage.url)
        out = run(env, "cloudfs", *argv, *server, "--token=t")
        line = one_line(out, 1)
        assert line.startswith("cloudfs: error: "), line


def test_bash_completion_completes_subcommands(env: dict[str, str]) -> None:
    script = run(env, "cloudfs", "completion", "bash")
    assert script.returncode == 0, script.stderr
    probe = """
source /dev/stdin
complete_line() {
  COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; read -ra COMP_WORDS <<<"$1"
  [[ "$1" == *" " ]] && COMP_WORDS+=("")
  COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
  COMPREPLY=()
  _python_argcomplete "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
  echo "${COMPREPLY[*]}"
}
complete_line "cloudfs tr"
complete_line "cloudfs un"
complete_line "cloudfs mount --log-level "
complete_line "cloudfs-server set-"
"""
    out = subprocess.run(
        ["bash", "-c", probe], input=script.stdout, capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    replies = [sorted(line.split()) for line in out.stdout.splitlines()]
    assert replies == [
        ["trash"], ["undelete", "unmount"], ["debug", "error", "info", "warning"],
        ["set-password", "set-quota"],
    ], out.stdout  # fmt: skip
    zsh = run(env, "cloudfs", "completion", "zsh")
    assert zsh.returncode == 0 and "compdef" in zsh.stdout, zsh.stderr


@pytest.mark.parametrize(
    ("flags", "access_lines", "info_lines"),
    [((), True, True), (("--no-access-log",), False, True),
     (("--log-level", "warning"), False, False)],
)  # fmt: skip
def test_serve_log_level_and_access_log(
    tmp_path: Path, flags: tuple[str, ...], access_lines: bool, info_lines: bool
) -> None:
    server = ServerProcess(tmp_path / "data", *flags).start()
    try:
        alice = server.add_user("alice")
        for _ in range(3):
            assert server.request("GET", "/v1/me", alice)[0] == 200
    finally:
        assert server.stop() == 0
    log = server.log_path.read_text()
    assert ('"GET /v1/me HTTP/1.1" 200' in log) == access_lines, f"{flags}:\n{log}"
    assert (" INFO " in log) == info_lines, f"{flags}:\n{log}"
