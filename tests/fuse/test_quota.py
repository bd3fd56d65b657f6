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
