"""Helpers for the black-box mount tests: seeded data, the server's view over HTTP, shared mounts.

Only what a user touches: the mount path, the `cloudfs` CLI and the HTTP API (to check what the
server holds). Nothing here imports the client or the server.
"""

from __future__ import annotations

import ctypes
import hashlib
import http.client
import json
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3

from tests.support import ServerProcess, User

AT_FDCWD = -100
RENAME_NOREPLACE = 1
MiB = 1 << 20


def det_bytes(seed: int | str, n: int) -> bytes:
    """`n` pseudo-random bytes, the same for the same seed (no compression or dedup shortcut)."""
    return random.Random(seed).randbytes(n)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: os.PathLike[str] | str, chunk: int = 4 * MiB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while buf := f.read(chunk):
            h.update(buf)
    return h.hexdigest()


def read_file(path: os.PathLike[str] | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_file(path: os.PathLike[str] | str, data: bytes, fsync: bool = False) -> None:
    with open(path, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def renameat2(src: os.PathLike[str] | str, dst: os.PathLike[str] | str, flags: int) -> None:
    """renameat2(2) through libc (Python has no wrapper); raises OSError with errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(src), None, str(dst))


def wait_for(pred: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.1) -> Any:
    """Poll `pred` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last value: {last!r})")


class ServerView:
    """What the server holds for one user, read over HTTP (the protocol in docs/protocol.md)."""

    def __init__(self, server: ServerProcess, user: User) -> None:
        self.server = server
        self.user = user

    def get(self, path: str) -> Any:
        status, body = self.server.request("GET", path, self.user)
        assert status == 200, f"GET {path}: expected 200, got {status} {body!r}"
        return body

    def get_or_none(self, path: str) -> Any:
        status, body = self.server.request("GET", path, self.user)
        if status == 404:
            return None
        assert status == 200, f"GET {path}: expected 200 or 404, got {status} {body!r}"
        return body

    def root(self) -> int:
        return int(self.get("/v1/me")["root"])

    def node_at(self, relpath: str) -> dict[str, Any] | None:
        """The node at `relpath` (relative to the drive root), or None if any part is missing."""
        node = self.get(f"/v1/nodes/{self.root()}")
        for part in [p for p in relpath.split("/") if p]:
            q = urllib.parse.quote(part, safe="")
            node = self.get_or_none(f"/v1/nodes/{node['id']}/lookup?name={q}")
            if node is None:
                return None
        return node

    def node(self, relpath: str) -> dict[str, Any]:
        node = self.node_at(relpath)
        assert node is not None, f"server has no node at {relpath!r}"
        return node

    def children(self, node_id: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            q = "limit=5000" + (f"&after={urllib.parse.quote(after, safe='')}" if after else "")
            page = self.get(f"/v1/nodes/{node_id}/children?{q}")
            out.extend(page["entries"])
            after = page["next"]
            if not after:
                return out

    def names(self, relpath: str = "") -> list[str]:
        return [e["name"] for e in self.children(self.node(relpath)["id"])]

    def post(self, path: str, body: object, expect: int = 201) -> Any:
        status, answer = self.server.request("POST", path, self.user, body=body)
        assert status == expect, f"POST {path}: expected {expect}, got {status} {answer!r}"
        return answer

    def bulk_create(self, parent_id: int, names: list[str], threads: int = 2) -> None:
        """Create empty files `names` under `parent_id` fast (keep-alive connections, threads)."""
        host, port = urllib.parse.urlsplit(self.server.url).netloc.split(":")
        headers = {**self.user.headers(), "Content-Type": "application/json"}
        errors: list[str] = []

        def work(part: list[str]) -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                for name in part:
                    body = json.dumps({"name": name, "type": "file"})
                    conn.request("POST", f"/v1/nodes/{parent_id}/children", body, headers)
                    resp = conn.getresponse()
                    answer = resp.read()
                    if resp.status != 201:
                        errors.append(f"{name!r}: {resp.status} {answer[:200]!r}")
                        return
            finally:
                conn.close()

        workers = [threading.Thread(target=work, args=(names[k::threads],)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors, f"bulk create failed: {errors[:3]}"

    def blocks_content(self, blocks: list[list[Any]]) -> bytes:
        """Download `[[block_id, len], ...]` and check every block hashes to its id."""
        parts = []
        for block_id, length in blocks:
            status, data = self.server.request("GET", f"/v1/blocks/{block_id}", self.user)
            assert status == 200, f"GET block {block_id}: expected 200, got {status}"
            assert isinstance(data, bytes) and len(data) == length, (
                f"block {block_id}: expected {length} bytes, got {len(data)}"
            )
            assert blake3.blake3(data).hexdigest() == block_id, f"block {block_id} hash mismatch"
            parts.append(data)
        return b"".join(parts)

    def content_of(self, node_id: int) -> bytes:
        node = self.get(f"/v1/nodes/{node_id}?blocks=1")
        data = self.blocks_content(node["blocks"])
        assert len(data) == node["size"], (
            f"node {node_id}: blocks add up to {len(data)}, size {node['size']}"
        )
        return data

    def content(self, relpath: str) -> bytes:
        return self.content_of(self.node(relpath)["id"])

    def versions(self, node_id: int) -> list[dict[str, Any]]:
        return list(self.get(f"/v1/nodes/{node_id}/versions")["versions"])

    def version_content(self, node_id: int, version: int) -> bytes:
        v = self.get(f"/v1/nodes/{node_id}/versions/{version}")
        return self.blocks_content(v["blocks"])


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100]


@contextmanager
def standalone_mount(
    base: Path, device: str = "shared", extra_args: tuple[str, ...] = ()
) -> Iterator[Any]:
    """A server + alice + one mount, for a module-scoped fixture (tests use their own subfolder).

    Yields the `Mount` object of tests/fuse/conftest.py; stops both by PID in `finally`.
    """
    from tests.fuse.conftest import Mount  # the same class the function-scoped fixtures use

    srv = ServerProcess(base / "data").start()
    try:
        user = srv.add_user("alice")
        m = Mount(srv, user, base, device, extra_args=extra_args)
        try:
            m.start()
            yield m
        finally:
            m.stop()
    finally:
        srv.stop()


def fresh_dir(m: Any, name: str) -> Path:
    """A new, empty folder on a shared mount for one test; revives the mount if a test killed it."""
    if m.proc is None or m.proc.poll() is not None or not os.path.ismount(m.path):
        m.kill9()
        m.start()
    d = Path(m.path) / safe_name(name)
    os.mkdir(d)
    return d
