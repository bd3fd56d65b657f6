"""Real processes for tests: a `cloudfs-server` on 127.0.0.1 with a temporary data dir.

Every process is started by PID and stopped by that PID in `stop()`; nothing else is killed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
LISTEN_RE = re.compile(r"listening on (http://[0-9.]+:\d+)")


def server_cmd(*args: str) -> list[str]:
    return [str(BIN / "cloudfs-server"), *args]


@dataclass
class User:
    name: str
    token: str

    def headers(self, device: str = "test") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-Cloudfs-Device": device}


class ServerProcess:
    """A `cloudfs-server serve` child process on a free loopback port."""

    def __init__(self, data_dir: Path, *extra_args: str, meta_url: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.meta_url = meta_url  # PostgreSQL metadata (`--meta`), else the embedded engine
        self.extra_args = extra_args
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def start(self, timeout_s: float = 20.0) -> ServerProcess:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            server_cmd(
                "serve",
                *self.store_args(),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                *self.extra_args,
            ),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited early, see {self.log_path}")
            m = LISTEN_RE.search(line)
            if m:
                self.url = m.group(1)
                break
        else:
            raise RuntimeError("server did not print its address in time")
        # Keep draining stdout so the child never blocks on a full pipe.
        import threading

        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def store_args(self) -> list[str]:
        """`--data DIR` and, on PostgreSQL, `--meta URL`: what every command needs."""
        meta = ["--meta", self.meta_url] if self.meta_url else []
        return ["--data", str(self.data_dir), *meta]

    def add_user(self, name: str, *extra: str) -> User:
        meta = ("--meta", self.meta_url) if self.meta_url else ()
        return add_user(self.data_dir, name, *meta, *extra)

    def request(
        self,
        method: str,
        path: str,
        user: User | None = None,
        body: object = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, object]:
        """One HTTP request with the standard library; returns (status, parsed JSON or bytes)."""
        hdrs = dict(headers or {})
        if user is not None:
            hdrs.update(user.headers())
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        if "json" in ctype:
            return status, json.loads(raw)
        return status, raw


def add_user(data_dir: Path, name: str, *extra: str) -> User:
    out = subprocess.run(
        server_cmd("add-user", name, "--data", str(data_dir), *extra),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    token = out.strip().splitlines()[-1].strip()
    return User(name, token)


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and any(
        os.access(os.path.join(p, "fusermount3"), os.X_OK)
        for p in os.environ.get("PATH", "").split(os.pathsep)
    )
