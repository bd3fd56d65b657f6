"""A real mount over https (issue 11): `cloudfs mount --ca-file` against a TLS server with a
throw-away CA, a file written and read back, and a fresh cache directory private to its user
(directories 0700, files 0600: LMDB, staging, lock, mount.log)."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.fuse.conftest import Mount, cloudfs_cmd
from tests.support import make_tls_files, start_tls_server

pytestmark = pytest.mark.fuse


def modes_open_to_others(root: Path) -> list[str]:
    """Every path under `root` (itself included) with a group or other permission bit."""
    bad = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            continue
        if st.st_mode & 0o077:
            bad.append(f"{path.relative_to(root.parent)} {stat.filemode(st.st_mode)}")
    return bad


def test_mount_over_https_with_ca_file_and_a_private_cache(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    server = start_tls_server(tmp_path / "data", tls)
    mount: Mount | None = None
    try:
        alice = server.add_user("alice")
        mount = Mount(server, alice, tmp_path, "laptop", extra_args=("--ca-file", str(tls.ca_file)))
        mount.start()
        data = os.urandom(3 << 20)
        (mount.path / "secret.bin").write_bytes(data)
        with open(mount.path / "open.bin", "wb") as held:  # a staging file exists meanwhile
            held.write(b"x" * 100_000)
            held.flush()
            assert modes_open_to_others(mount.cache_dir) == []
        assert (mount.path / "secret.bin").read_bytes() == data

        names = {p.name for p in mount.cache_dir.rglob("*")}
        assert {"lmdb", "data.mdb", "lock.mdb", "staging", "mount.log"} <= names, names
        assert modes_open_to_others(mount.cache_dir) == []
        assert stat.S_IMODE(mount.cache_dir.stat().st_mode) == 0o700

        # The data reached the server over TLS: another client sees it after the unmount.
        assert mount.stop() == 0
        mount = None
        status, body = server.request("GET", "/v1/me", alice)
        assert status == 200, body
        root = body["root"]
        status, node = server.request("GET", f"/v1/nodes/{root}/lookup?name=secret.bin", alice)
        assert status == 200 and node["size"] == len(data), node
    finally:
        if mount is not None:
            mount.stop()
        server.stop()


def test_mount_refuses_a_server_whose_certificate_it_does_not_trust(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    server = start_tls_server(tmp_path / "data", tls)
    try:
        alice = server.add_user("alice")
        point = tmp_path / "mnt"
        point.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "CLOUDFS_CA_FILE"}
        started = time.monotonic()
        result = subprocess.run(
            cloudfs_cmd(
                "mount", str(point), "--server", server.url, f"--token={alice.token}",
                "--cache-dir", str(tmp_path / "cache"), "--foreground",
            ),
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and "not trusted" in errors[0], result.stderr
        assert time.monotonic() - started < 15
        assert not os.path.ismount(point)
    finally:
        server.stop()
