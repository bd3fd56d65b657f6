"""Real FUSE mounts for tests: `cloudfs mount --foreground` as a child process, by PID.

Every mount is unmounted in `finally` (`cloudfs unmount`, then `fusermount3 -u`, then `-uz`), and
only the child this fixture started is signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, User, fuse_available

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.fuse

if not fuse_available():  # pragma: no cover - CI installs fuse3 in scripts/test
    raise RuntimeError("FUSE tests need /dev/fuse and fusermount3 (scripts/test installs fuse3)")


def is_mounted(path: Path) -> bool:
    """Whether something (even a dead FUSE mount) is mounted at `path`, from /proc/self/mounts."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def cloudfs_cmd(*args: str) -> list[str]:
    return [str(BIN / "cloudfs"), *args]


class Mount:
    """One `cloudfs mount` child process of one user."""

    def __init__(
        self,
        server: ServerProcess,
        user: User,
        base: Path,
        device: str,
        cache_size: str = "1G",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.server = server
        self.user = user
        self.device = device
        self.path = base / f"mnt-{device}"
        self.cache_dir = base / f"cache-{device}"
        self.log_path = base / f"mount-{device}.log"
        self.cache_size = cache_size
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 20.0) -> Mount:
        self.path.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            cloudfs_cmd(
                "mount",
                str(self.path),
                "--server",
                self.server.url,
                f"--token={self.user.token}",
                "--cache-dir",
                str(self.cache_dir),
                "--cache-size",
                self.cache_size,
                "--device-name",
                self.device,
                "--foreground",
                *self.extra_args,
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mount exited with {self.proc.returncode}, see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-3000:]
                )
            if os.path.ismount(self.path):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mount did not come up in {timeout_s}s, see {self.log_path}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """Clean unmount (commits pending work), then make sure nothing is left mounted."""
        try:
            if self.proc is not None and self.proc.poll() is None and os.path.ismount(self.path):
                subprocess.run(
                    cloudfs_cmd("unmount", str(self.path)), timeout=timeout_s, capture_output=True
                )
            if self.proc is not None:
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._force_unmount()
        rc = self.proc.returncode if self.proc is not None else None
        self.proc = None
        return rc

    def kill9(self) -> None:
        """Simulate a crash: SIGKILL the client, then clear the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        self._force_unmount()

    def remount(self) -> Mount:
        self.stop()
        return self.start()

    def _force_unmount(self) -> None:
        # Not os.path.ismount: on a dead FUSE mount (client killed) lstat fails with ENOTCONN
        # and ismount answers False, leaving the dead mount in place.
        if is_mounted(self.path):
            r = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)


@pytest.fixture
def mount_factory(server: ServerProcess, tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Make any number of mounts: `mount_factory(user, device="laptop", cache_size="64M")`."""
    mounts: list[Mount] = []

    def make(
        user: User,
        device: str | None = None,
        cache_size: str = "1G",
        extra_args: tuple[str, ...] = (),
    ) -> Mount:
        m = Mount(server, user, tmp_path, device or f"dev{len(mounts) + 1}", cache_size, extra_args)
        mounts.append(m)
        return m.start()

    try:
        yield make
    finally:
        for m in mounts:
            m.stop()


@pytest.fixture
def mount(mount_factory: Callable[..., Mount], alice: User) -> Mount:
    """One mount of alice's drive; `mount.path` is the folder."""
    return mount_factory(alice, device="laptop")
