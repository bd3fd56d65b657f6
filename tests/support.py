"""Real processes for tests: a `cloudfs-server` on 127.0.0.1 with a temporary data dir.

Every process is started by PID and stopped by that PID in `stop()`; nothing else is killed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

BIN = Path(sys.executable).parent
LISTEN_RE = re.compile(r"listening on (https?://[0-9.]+:\d+)")
METRICS_RE = re.compile(r"metrics on (http://[0-9.]+:\d+/metrics)")


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

    def __init__(
        self,
        data_dir: Path,
        *extra_args: str,
        meta_url: str | None = None,
        store_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.meta_url = meta_url  # PostgreSQL metadata (`--meta`), else the embedded engine
        self.extra_args = extra_args
        # Block store options (--blocks, --compress, ...): also what admin commands need.
        self.store_args = store_args
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.metrics_url = ""  # with `--metrics-address`
        self.ssl_context: ssl.SSLContext | None = None  # trusts the server's TLS certificate
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def start(self, timeout_s: float = 20.0) -> ServerProcess:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            server_cmd(
                "serve",
                *self.admin_args(),
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
            if m := METRICS_RE.search(line):
                self.metrics_url = m.group(1)
            m = LISTEN_RE.search(line)
            if m:
                self.url = m.group(1)
                break
        else:
            raise RuntimeError("server did not print its address in time")
        # Keep draining stdout so the child never blocks on a full pipe.
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

    def admin_args(self) -> list[str]:
        """`--data DIR`, on PostgreSQL `--meta URL`, and the block store options: what every
        command needs to open this server's stores."""
        meta = ["--meta", self.meta_url] if self.meta_url else []
        return ["--data", str(self.data_dir), *meta, *self.store_args]

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
            with urllib.request.urlopen(req, timeout=30, context=self.ssl_context) as resp:
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


@dataclass
class TlsFiles:
    """Throw-away TLS material (trustme): a CA and a certificate for 127.0.0.1/localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def serve_args(self) -> tuple[str, ...]:
        return ("--tls-cert", str(self.cert_file), "--tls-key", str(self.key_file))

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls_files(directory: Path) -> TlsFiles:
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_file))
    cert.private_key_pem.write_to_path(str(files.key_file))
    with open(files.cert_file, "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return files


def start_tls_server(data_dir: Path, tls: TlsFiles, *extra: str) -> ServerProcess:
    srv = ServerProcess(data_dir, *tls.serve_args(), *extra)
    srv.ssl_context = tls.client_context()
    return srv.start()


# ---- S3: moto's standalone server, and a gate to cut the network to it --------------------
MOTO_RE = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")
# Credentials for moto only (it accepts any); set in the environment like real ones would be.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-cloudfs",
    "AWS_SECRET_ACCESS_KEY": "testing-cloudfs-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_MAX_ATTEMPTS": "1",  # outages fail fast (the default 3 attempts back off for seconds)
    "AWS_CONFIG_FILE": "/nonexistent/cloudfs-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/cloudfs-test-aws-credentials",
}


class MotoServer:
    """`moto_server` (S3 endpoint) on a free loopback port, stopped by PID in `stop()`."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout_s: float = 30.0) -> MotoServer:
        self.proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("moto_server exited early")
            m = MOTO_RE.search(line)
            if m:
                self.url = m.group(1)
                break
        else:
            raise RuntimeError("moto_server did not print its address in time")
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with open(self.log_path, "a") as log:
            for line in self.proc.stderr:
                log.write(line)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class TcpGate:
    """A TCP forwarder on a fixed loopback port to `target`; `close()` refuses new connections
    and resets open ones (the store is "down"), `open()` listens on the same port again."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> TcpGate:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            # RST rather than FIN: what a crashed store looks like to the client.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
