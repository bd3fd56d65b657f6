"""`cloudfs login URL --user NAME` end to end against a real server (issue 11): the device's
token lands in the 0600 config file and the next command works with it; every failure is one
line and a non-zero exit."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_cli_process import one_line, run
from tests.pg import free_port
from tests.support import BIN, ServerProcess, server_cmd

PASSWORD = "a long and secret phrase"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No token, server or data dir from the environment (as in test_cli_process.py)."""
    out = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CLOUDFS_TOKEN", "CLOUDFS_SERVER", "CLOUDFS_DATA", "CLOUDFS_CONFIG")
    }
    out["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    out["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    return out


def test_password_login_saves_a_device_token_used_by_the_next_command(
    server: ServerProcess,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    server.add_user("alice", "--password-file", str(password))
    config = tmp_path / "checkout" / "config.json"
    mine = dict(env, CLOUDFS_CONFIG=str(config))
    out = run(
        mine, "cloudfs", "login", server.url, "--user", "alice",
        "--password-file", str(password), "--device", "laptop",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "as alice (device 'laptop')" in out.stdout, out.stdout
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    saved = json.loads(config.read_text())
    assert saved["default_server"] == server.url
    token = saved["servers"][server.url]["token"]
    assert token.startswith("cfs_")
    out = run(mine, "cloudfs", "trash")  # no --token, no CLOUDFS_TOKEN: the saved one
    assert (out.returncode, out.stdout.strip()) == (0, "the trash is empty"), out.stderr
    listed = subprocess.run(
        server_cmd("tokens", "alice", "--json", *server.admin_args()),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    devices = {row["device"]: row for row in json.loads(listed)}
    assert set(devices) == {"admin-cli", "laptop"}
    assert devices["laptop"]["last_used_ns"] is not None  # `cloudfs trash` used it
    # the device name defaults to the host name
    out = run(mine, "cloudfs", "login", server.url, "--user", "alice", "--password-file",
              str(password))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"(device {os.uname().nodename!r})" in out.stdout, out.stdout


def test_every_login_failure_is_one_line(
    server: ServerProcess,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    server.add_user("alice", "--password-file", str(password))
    mine = dict(env, CLOUDFS_CONFIG=str(tmp_path / "config.json"))

    def login(url: str, password_file: Path, user: str = "alice") -> str:
        out = run(mine, "cloudfs", "login", url, "--user", user, "--password-file",
                  str(password_file))  # fmt: skip
        return one_line(out, 1)

    assert "wrong user name or password" in login(server.url, wrong)
    assert "wrong user name or password" in login(server.url, wrong, user="nobody")
    assert "cannot reach" in login(f"http://127.0.0.1:{free_port()}", password)
    assert "cannot read the password file" in login(server.url, tmp_path / "missing")
    for _ in range(3):  # 5 failures in a minute from this address (2 above)
        login(server.url, wrong)
    line = login(server.url, password)  # even the right password, meanwhile
    assert "too many failed logins; try again in" in line, line
    assert not (tmp_path / "config.json").exists(), "no failed login may write the config"
    out = run(mine, "cloudfs", "login", server.url, "--user", "alice")  # stdin: not a terminal
    assert "--password-file" in one_line(out, 2)
