"""Over quota: close() reports ENOSPC, yet the edit is kept and committed once space exists.

The edit waits in the mount's durable queue (it survives an unmount and a new mount) and
`cloudfs status` says why it waits.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuse.conftest import Mount, cloudfs_cmd
from tests.support import ServerProcess, User, server_cmd


def _server_file(server: ServerProcess, user: User, name: str) -> dict:
    status, me = server.request("GET", "/v1/me", user)
    assert status == 200, me
    status, node = server.request("GET", f"/v1/nodes/{me['root']}/lookup?name={name}", user)
    assert status == 200, f"expected {name} on the server, got {status} {node}"
    return node


def test_over_quota_edit_is_kept_and_committed_when_space_is_freed(
    server: ServerProcess, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    user = server.add_user("carol", "--quota", "100000")
    mount = mount_factory(user, device="q")
    path = Path(mount.path) / "big.bin"
    data = os.urandom(200_000)  # twice the quota

    with pytest.raises(OSError) as caught, open(path, "wb") as f:
        f.write(data)
    assert caught.value.errno == errno.ENOSPC, f"expected ENOSPC at close, got {caught.value!r}"

    status = subprocess.run(
        cloudfs_cmd("status", str(mount.path)), capture_output=True, text=True, check=True
    ).stdout
    assert "big.bin" in status and "over quota" in status, status
    assert _server_file(server, user, "big.bin")["size"] == 0, "nothing over quota committed"

    # The edit survives the end of this client process (durable queue in the cache dir) ...
    mount.stop()
    subprocess.run(
        server_cmd("set-quota", "carol", "--data", str(server.data_dir), "--quota", "none"),
        check=True,
        capture_output=True,
    )
    # ... and a new mount of the same cache commits it.
    mount.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _server_file(server, user, "big.bin")["size"] == len(data):
            break
        time.sleep(0.2)
    assert _server_file(server, user, "big.bin")["size"] == len(data), (
        "the queued edit was not committed after the quota was lifted"
    )
    assert path.read_bytes() == data, "the mount shows the committed content"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_full_server_disk_gives_enospc_on_the_mount_and_the_edit_survives(tmp_path: Path) -> None:
    """The server's data dir on a real 16 MiB tmpfs, filled up: close() gets ENOSPC (507
    server_full, not EIO from a 500), the server logs one warning and no traceback, and once
    space is freed the queued edit is committed by the next mount."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    server = ServerProcess(small / "data")
    mount: Mount | None = None
    filler = small / "filler"
    try:
        server.start()
        user = server.add_user("dora")
        mount = Mount(server, user, tmp_path, "full").start()
        path = Path(mount.path) / "big.bin"
        path.write_bytes(b"")  # exists on the server before the disk fills
        with open(filler, "wb") as f:  # the operator's disk fills up
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        data = os.urandom(3 << 20)
        f = open(path, "wb")  # noqa: SIM115 - the error must come from close(), not open()
        f.write(data)
        with pytest.raises(OSError) as caught:
            f.close()
        assert caught.value.errno == errno.ENOSPC, f"expected ENOSPC at close, got {caught.value!r}"
        with pytest.raises(OSError) as caught:
            (Path(mount.path) / "new.txt").write_bytes(b"x")  # a create is refused too
        assert caught.value.errno == errno.ENOSPC, caught.value
        log = server.log_path.read_text()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
        assert log.count("answering 507 server_full") == 1, log[-3000:]

        filler.unlink()  # space is back
        mount.stop()
        mount.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _server_file(server, user, "big.bin")["size"] == len(data):
                break
            time.sleep(0.2)
        assert _server_file(server, user, "big.bin")["size"] == len(data), (
            "the queued edit was not committed after space was freed"
        )
        assert path.read_bytes() == data
    finally:
        if mount is not None:
            mount.stop()
        server.stop()
        subprocess.run(["umount", "-l", str(small)], check=True)
