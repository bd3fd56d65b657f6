"""The filesystems the mount suite compares, behind one small interface: a cloudfs mount (real
server + `cloudfs mount` via tests' Mount), tmpfs, and `rclone mount --vfs-cache-mode full` of a
local directory. Each starts and stops only what it started (by PID), unmounting in `stop()`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from benchlib.common import log

PUT_BLOCK_RE = re.compile(r'"PUT /v1/blocks/([0-9a-f]{64}) HTTP/[0-9.]+" (\d{3})')


def drop_caches() -> None:
    """Write back and drop the kernel page cache (root only)."""
    subprocess.run(["sync"], timeout=120, check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def force_unmount(path: Path) -> None:
    if os.path.ismount(path):
        r = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True)
        if r.returncode != 0 and os.path.ismount(path):
            subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


def tree_rss(pid: int, anon: bool = False) -> Any:
    """RSS of a process and all its children in bytes (0 if gone); with anon=True a pair
    (rss, anonymous rss) where anonymous = rss - file-backed/shared resident pages."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return (0, 0) if anon else 0
    total = anonymous = 0
    for p in procs:
        try:
            mem = p.memory_info()
        except psutil.NoSuchProcess:
            continue
        total += mem.rss
        anonymous += mem.rss - getattr(mem, "shared", 0)
    return (total, anonymous) if anon else total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fs:
    """One filesystem under test. `path` is where benchmark files go."""

    name = "?"
    path: Path

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def cold(self) -> None:
        """Make the next read of existing files cold (empty client cache, no page cache)."""
        drop_caches()

    def remount(self) -> None:
        """Restart the mount keeping its data cache (cold metadata), then drop the page cache."""
        drop_caches()

    def wait_stored(self, rel: str, size: int, timeout_s: float = 180) -> None:
        """Return once the backend holds `rel` with `size` bytes (tmpfs: at once)."""

    def wait_all_stored(self, timeout_s: float = 300) -> None:
        """Return once nothing written is still waiting to be uploaded."""

    def client_pid(self) -> int | None:
        return None

    def uploaded_bytes(self) -> int | None:
        """A counter of bytes sent to the backend, or None if there is no backend."""
        return None

    def stored_bytes(self) -> int | None:
        """The backend's own count of distinct bytes it stores for us, if it has one."""
        return None

    def alive(self) -> bool:
        """Still mounted (and, for FUSE, the client process still running)."""
        return os.path.ismount(self.path)

    def restart(self) -> None:
        """Bring a dead mount back (keeping the data) so later measurements can run."""
        self.stop()
        self.start()


class TmpfsFs(Fs):
    name = "tmpfs"

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
            check=True,
            capture_output=True,
            text=True,
        )

    def stop(self) -> None:
        if os.path.ismount(self.path):
            r = subprocess.run(["umount", str(self.path)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


class RcloneFs(Fs):
    """`rclone mount REMOTE MNT --vfs-cache-mode full` with rc enabled for upload statistics."""

    name = "rclone"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.remote = base / "rclone-remote"
        self.path = base / "rclone-mnt"
        self.cache = base / "rclone-cache"
        self.log_path = base / "rclone.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.rc_url = ""

    def start(self, timeout_s: float = 30) -> None:
        for d in (self.remote, self.path, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.rc_url = f"http://127.0.0.1:{port}"
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                "rclone",
                "mount",
                str(self.remote),
                str(self.path),
                "--vfs-cache-mode",
                "full",
                "--cache-dir",
                str(self.cache),
                "--rc",
                "--rc-addr",
                f"127.0.0.1:{port}",
                "--rc-no-auth",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rclone exited with {self.proc.returncode}, see {self.log_path}"
                )
            if os.path.ismount(self.path):
                return
            time.sleep(0.05)
        raise RuntimeError("rclone mount did not come up")

    def stop(self) -> None:
        try:
            force_unmount(self.path)
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.terminate()
                    try:
                        self.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
        finally:
            force_unmount(self.path)
            self.proc = None

    def rc(self, command: str) -> dict:
        req = urllib.request.Request(
            f"{self.rc_url}/{command}",
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def cold(self) -> None:
        self.wait_all_stored()
        self.stop()
        shutil.rmtree(self.cache, ignore_errors=True)
        drop_caches()
        self.start()

    def remount(self) -> None:
        self.wait_all_stored()
        self.stop()
        drop_caches()
        self.start()

    def wait_all_stored(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            disk = self.rc("vfs/stats").get("diskCache", {})
            if disk.get("uploadsInProgress", 0) == 0 and disk.get("uploadsQueued", 0) == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"rclone still uploading after {timeout_s:.0f} s")

    def wait_stored(self, rel: str, size: int, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        target = self.remote / rel
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError("rclone died before the remote had the file")
            try:
                if target.stat().st_size == size:
                    self.wait_all_stored(max(1.0, deadline - time.monotonic()))
                    if target.stat().st_size == size:
                        return
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"rclone did not store {rel} within {timeout_s:.0f} s")

    def client_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and os.path.ismount(self.path)

    def uploaded_bytes(self) -> int | None:
        return int(self.rc("core/stats").get("bytes", 0))


class CloudfsFs(Fs):
    """A real `cloudfs-server` process and one `cloudfs mount` of a user's drive."""

    name = "cloudfs"

    def __init__(self, base: Path, cache_size: str) -> None:
        self.base = base
        self.cache_size = cache_size
        self.server = None
        self.user = None
        self.mount = None
        self.generation = 0
        self.path = base / "mnt-bench"
        self._sizes: dict[str, int] = {}

    def start(self) -> None:
        from tests.support import ServerProcess

        self.server = ServerProcess(self.base / "server-data").start()
        self.user = self.server.add_user("bench")
        self._mount()

    def _mount(self) -> None:
        from tests.fuse.conftest import Mount  # the tests' mount helper (unmounts by PID)

        self.mount = Mount(self.server, self.user, self.base, "bench", self.cache_size)
        self.mount.cache_dir = self.base / f"cache-bench-{self.generation}"
        self.path = self.mount.path
        self.mount.start(timeout_s=60)

    def stop(self) -> None:
        try:
            if self.mount is not None:
                self.mount.stop()
        finally:
            self.mount = None
            if self.server is not None:
                self.server.stop()
                self.server = None

    def cold(self) -> None:
        assert self.mount is not None
        self.mount.stop()
        shutil.rmtree(self.mount.cache_dir, ignore_errors=True)
        self.generation += 1
        drop_caches()
        self._mount()

    def remount(self) -> None:
        assert self.mount is not None
        self.mount.stop()
        drop_caches()
        self.mount.start(timeout_s=60)

    def api(self, path: str, **params: str) -> dict:
        assert self.server is not None and self.user is not None
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        req = urllib.request.Request(
            self.server.url + path + query, headers=self.user.headers("bench-check")
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def node(self, rel: str) -> dict | None:
        """The server's node for a path relative to the drive root, or None."""
        node = self.api("/v1/me")
        nid = node["root"]
        for part in rel.split("/"):
            try:
                node = self.api(f"/v1/nodes/{nid}/lookup", name=part)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                raise
            nid = node["id"]
        return node

    def wait_stored(self, rel: str, size: int, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError("the cloudfs client died before the server had the file")
            node = self.node(rel)
            if node is not None and node.get("size") == size:
                return
            time.sleep(0.02)
        raise TimeoutError(f"server did not have {rel} with {size} bytes within {timeout_s:.0f} s")

    def client_pid(self) -> int | None:
        return self.mount.pid if self.mount is not None and self.mount.proc is not None else None

    def alive(self) -> bool:
        m = self.mount
        return (
            m is not None
            and m.proc is not None
            and m.proc.poll() is None
            and os.path.ismount(self.path)
        )

    def restart(self) -> None:
        assert self.mount is not None
        self.mount.stop()
        self.mount.start(timeout_s=60)

    def stored_bytes(self) -> int | None:
        return int(self.api("/v1/usage")["stored_bytes"])

    def uploaded_bytes(self) -> int | None:
        """Sum of the sizes of every block PUT the server answered 2xx, from its access log (the
        API has no byte counter): each logged block id is sized once with HEAD."""
        assert self.server is not None
        time.sleep(0.2)  # the access log line is written just after the answer
        text = self.server.log_path.read_text(errors="replace")
        total = 0
        for m in PUT_BLOCK_RE.finditer(text):
            if m.group(2).startswith("2"):
                total += self.block_size(m.group(1))
        return total

    def block_size(self, block_id: str) -> int:
        if block_id not in self._sizes:
            assert self.server is not None and self.user is not None
            req = urllib.request.Request(
                f"{self.server.url}/v1/blocks/{block_id}",
                method="HEAD",
                headers=self.user.headers("bench-check"),
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                self._sizes[block_id] = int(resp.headers["Content-Length"])
        return self._sizes[block_id]


def start_all(fss: list[Fs]) -> dict[str, str]:
    """Start each filesystem; returns name -> error for those that could not start."""
    errors: dict[str, str] = {}
    for fs in fss:
        try:
            fs.start()
            log(f"mount suite: {fs.name} ready at {fs.path}")
        except Exception as exc:  # harness boundary: a target that cannot start fails its cells
            errors[fs.name] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
            log(f"mount suite: {fs.name} could not start: {errors[fs.name]}")
            try:
                fs.stop()
            except Exception as stop_exc:  # keep going: the others still get measured
                log(f"  stopping {fs.name} after a failed start: {stop_exc}")
    return errors
