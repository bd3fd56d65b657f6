"""The `cloudfs` command line as a user runs it (issue 3, "Command line"): background mount,
status, unmount, the token from the environment or `cloudfs login`, and mistakes that must print
one clear line and exit non-zero.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fuse.blackbox import ServerView, read_file, write_file
from tests.fuse.conftest import cloudfs_cmd
from tests.support import ServerProcess, User

pytestmark = pytest.mark.fuse


def run(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> Any:
    return subprocess.run(
        cloudfs_cmd(*args), capture_output=True, text=True, timeout=timeout_s, env=env
    )


def force_unmount(path: Path) -> None:
    if os.path.ismount(path):
        r = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment with its own HOME so `login` and the default cache dir stay in tmp."""
    env = dict(os.environ)
    env.pop("CLOUDFS_TOKEN", None)
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "home" / ".config")
    env["XDG_CACHE_HOME"] = str(tmp_path / "home" / ".cache")
    os.makedirs(env["HOME"])
    return env


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    p = tmp_path / "mnt"
    p.mkdir()
    try:
        yield p
    finally:
        if os.path.ismount(p):
            subprocess.run(cloudfs_cmd("unmount", str(p)), capture_output=True, timeout=60)
        force_unmount(p)


def one_line_error(r: Any, what: str) -> str:
    out = (r.stderr + r.stdout).strip()
    assert r.returncode != 0, f"{what}: expected a non-zero exit, got 0 with {out!r}"
    assert "Traceback" not in out, f"{what}: a traceback instead of a message:\n{out}"
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"{what}: expected one clear line, got {lines!r}"
    return lines[0]


def test_background_mount_status_unmount(
    server: ServerProcess, alice: User, mnt: Path, tmp_path: Path, home: dict[str, str]
) -> None:
    cache = tmp_path / "cache"
    r = run("mount", str(mnt), "--server", server.url, f"--token={alice.token}",
            "--cache-dir", str(cache), "--cache-size", "512M", "--device-name", "cli-box",
            env=home)  # fmt: skip
    assert r.returncode == 0, f"cloudfs mount failed: {r.stdout}{r.stderr}"
    assert os.path.ismount(mnt), "cloudfs mount returned before the mount answers"
    write_file(mnt / "hello.txt", b"hi from the cli")
    assert ServerView(server, alice).content("hello.txt") == b"hi from the cli"
    st = run("status", str(mnt), env=home)
    assert st.returncode == 0, f"cloudfs status failed: {st.stdout}{st.stderr}"
    for word in (server.url.split("//")[1], "alice", "cli-box"):
        assert word in st.stdout, f"cloudfs status should show {word!r}:\n{st.stdout}"
    assert any(c.isdigit() for c in st.stdout), f"status should show cache numbers:\n{st.stdout}"
    logs = [p for p in cache.rglob("*") if p.is_file() and "log" in p.name.lower()]
    assert logs, f"a background mount logs to a file in the cache dir: {sorted(cache.rglob('*'))}"
    un = run("unmount", str(mnt), env=home)
    assert un.returncode == 0, f"cloudfs unmount failed: {un.stdout}{un.stderr}"
    assert not os.path.ismount(mnt), "still mounted after cloudfs unmount"


def test_token_from_environment_and_login(
    server: ServerProcess, alice: User, mnt: Path, tmp_path: Path, home: dict[str, str]
) -> None:
    env = dict(home, CLOUDFS_TOKEN=alice.token)
    r = run("mount", str(mnt), "--server", server.url, "--cache-dir", str(tmp_path / "c1"),
            env=env)  # fmt: skip
    assert r.returncode == 0, f"mount with CLOUDFS_TOKEN failed: {r.stdout}{r.stderr}"
    write_file(mnt / "env.txt", b"env")
    assert run("unmount", str(mnt), env=env).returncode == 0
    lg = run("login", server.url, f"--token={alice.token}", env=home)
    assert lg.returncode == 0, f"cloudfs login failed: {lg.stdout}{lg.stderr}"
    r = run("mount", str(mnt), "--server", server.url, "--cache-dir", str(tmp_path / "c2"),
            env=home)  # fmt: skip
    assert r.returncode == 0, f"mount with the token from login failed: {r.stdout}{r.stderr}"
    assert read_file(mnt / "env.txt") == b"env"
    assert run("unmount", str(mnt), env=home).returncode == 0


def test_mistakes_print_one_line(
    server: ServerProcess, alice: User, mnt: Path, tmp_path: Path, home: dict[str, str]
) -> None:
    def mount(*args: str, point: Path = mnt, url: str = server.url) -> Any:
        return run("mount", str(point), "--server", url, "--cache-dir", str(tmp_path / "c"),
                   *args, env=home, timeout_s=90)  # fmt: skip

    line = one_line_error(mount(f"--token={alice.token}", point=tmp_path / "nope"),
                          "missing mountpoint")  # fmt: skip
    assert "nope" in line, f"the message should name the mountpoint: {line!r}"
    one_line_error(mount("--token", "not-a-valid-token"), "bad token")
    assert not os.path.ismount(mnt)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, never listening
        one_line_error(mount(f"--token={alice.token}", url=dead_url), "server unreachable")
    assert not os.path.ismount(mnt)
    one_line_error(mount(f"--token={alice.token}", "--cache-size", "12Q"), "bad --cache-size")
    # busy: already mounted there
    ok = mount(f"--token={alice.token}")
    assert ok.returncode == 0, f"mount failed: {ok.stdout}{ok.stderr}"
    one_line_error(mount(f"--token={alice.token}"), "mountpoint busy")
    assert os.path.ismount(mnt), "a refused second mount must leave the first one working"
    one_line_error(run("unmount", str(tmp_path / "not-mounted"), env=home), "unmount nothing")


def test_units_log_level_and_unusable_cache_dir(
    server: ServerProcess, alice: User, mnt: Path, tmp_path: Path, home: dict[str, str]
) -> None:
    cache = tmp_path / "cache"
    r = run("mount", str(mnt), "--server", server.url, f"--token={alice.token}",
            "--cache-dir", str(cache), "--cache-size", "256M", "--attr-timeout", "500ms",
            "--commit-timeout", "5s", "--log-level", "debug", env=home)  # fmt: skip
    assert r.returncode == 0, f"mount with units and --log-level failed: {r.stdout}{r.stderr}"
    assert not (mnt / "missing").exists()  # a failed lookup: logged at debug level only
    write_file(mnt / "units.txt", b"units")
    un = run("unmount", str(mnt), "--timeout", "1m", env=home)
    assert un.returncode == 0, f"unmount --timeout 1m failed: {un.stdout}{un.stderr}"
    log = (cache / "mount.log").read_text()
    assert " DEBUG " in log, f"--log-level debug should log debug lines:\n{log[-2000:]}"
    assert ServerView(server, alice).content("units.txt") == b"units"

    host = server.url.removeprefix("http://")
    bad_url = run("mount", str(mnt), "--server", host, f"--token={alice.token}", env=home)
    assert one_line_error(bad_url, "URL without http://") == (
        f"cloudfs: error: '{host}' is not a server URL; write http://{host}"
    )
    assert bad_url.returncode == 2
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    for foreground in ((), ("--foreground",)):
        r = run("mount", str(mnt), "--server", server.url, f"--token={alice.token}",
                "--cache-dir", str(a_file / "cache"), *foreground, env=home)  # fmt: skip
        line = one_line_error(r, f"cache dir under a file {foreground}")
        assert str(a_file) in line and r.returncode == 1, line
        assert not os.path.ismount(mnt)
