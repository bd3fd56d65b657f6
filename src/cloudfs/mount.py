"""Mount wiring (layer 5): checks, one trio run with one root nursery, the pyfuse3 session, the
commit-queue task, and the control socket `cloudfs unmount/status` talk to.

Control protocol (JSON lines over a Unix socket in the runtime dir):
    {"cmd": "status"}  -> one status object
    {"cmd": "drain"}   -> progress objects {"waiting": text, ...} then {"done": true, "queued": n}
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from cloudfs import config, errors
from cloudfs.api import ApiClient
from cloudfs.cache import LocalCache
from cloudfs.chunking import ChunkParams
from cloudfs.filesystem import FileSystem, Options
from cloudfs.fuse_ops import CloudfsOperations, KernelNotifier, raise_read_ahead
from cloudfs.registry import RegistryTask
from cloudfs.sync import SyncTask

log = logging.getLogger(__name__)


class MountError(Exception):
    """A mistake the CLI reports as one line (mountpoint missing or busy, FUSE unavailable,
    server unreachable, bad token, cache dir in use)."""


@dataclass
class MountOptions:
    mountpoint: str
    server: str
    token: str
    cache_dir: str | None = None
    cache_size_bytes: int = 10 << 30
    device: str = field(default_factory=socket.gethostname)
    chunk_params: ChunkParams = field(default_factory=ChunkParams)
    attr_timeout_s: float = 1.0
    commit_budget_s: float = 8.0
    foreground: bool = True
    log_level: int = logging.INFO  # `cloudfs mount --log-level`


def check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError(
            "FUSE is not available: /dev/fuse does not exist "
            "(load the fuse module or run the container with --device /dev/fuse)"
        )
    if shutil.which("fusermount3") is None:
        raise MountError(
            "FUSE is not available: fusermount3 is not installed (apt-get install fuse3)"
        )


def check_mountpoint(path: str) -> str:
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise MountError(f"mountpoint {path} does not exist")
    if not os.path.isdir(real):
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(real):
        raise MountError(f"mountpoint {path} is busy: something is already mounted there")
    return real


async def connect(opts: MountOptions) -> tuple[ApiClient, dict[str, Any]]:
    """Check the server and the token; returns the client and `/v1/me`."""
    api = ApiClient(opts.server, opts.token, opts.device)
    try:
        await api.healthz()
    except errors.TemporaryError as exc:
        await api.aclose()
        raise MountError(f"server {opts.server} is unreachable: {exc}") from exc
    except errors.CloudfsError as exc:
        await api.aclose()
        raise MountError(
            f"server {opts.server} does not look like a cloudfs server: {exc}"
        ) from exc
    try:
        me = await api.me(budget_s=2.0)
    except errors.UnauthorizedError as exc:
        await api.aclose()
        raise MountError(f"server {opts.server} rejected the token (401 unauthorized)") from exc
    except errors.CloudfsError as exc:
        await api.aclose()
        raise MountError(f"cannot ask {opts.server} who we are: {exc}") from exc
    return api, me


def resolve_cache_dir(opts: MountOptions, user: str) -> Path:
    if opts.cache_dir:
        return Path(opts.cache_dir).expanduser().resolve()
    return config.default_cache_dir(opts.server, user)


def lock_cache_dir(cache_dir: Path) -> int:
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise MountError(f"cache dir {cache_dir} is in use by another mount") from exc
    return fd


def setup_logging(cache_dir: Path, to_stderr: bool, level: int = logging.INFO) -> Path:
    log_path = cache_dir / "mount.log"
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("CLOUDFS_DAEMON") != "1":
        fh = logging.FileHandler(log_path)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if to_stderr:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return log_path


class Mount:
    """One running mount: owns the FUSE session and the background tasks."""

    def __init__(
        self,
        opts: MountOptions,
        mountpoint: str,
        api: ApiClient,
        me: dict[str, Any],
        cache_dir: Path,
    ) -> None:
        self.opts = opts
        self.mountpoint = mountpoint
        self.api = api
        self.me = me
        self.cache_dir = cache_dir
        self.cache = LocalCache(cache_dir / "lmdb", opts.cache_size_bytes)
        self.registry = RegistryTask.connect(opts.server, opts.token, opts.device, self.cache)
        self.notifier = KernelNotifier()
        self.fs: FileSystem | None = None
        self.sync: SyncTask | None = None
        self.ops: CloudfsOperations | None = None
        self.socket_path = config.control_socket_path(mountpoint)
        self.record_path = config.mount_record_path(mountpoint)
        self.started_at = time.time()
        self._unmounting = False

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            fs = FileSystem(
                self.api,
                self.cache,
                int(self.me["root"]),
                self.cache_dir / "staging",
                Options(
                    device=self.opts.device,
                    chunk_params=self.opts.chunk_params,
                    attr_timeout_s=self.opts.attr_timeout_s,
                    commit_budget_s=self.opts.commit_budget_s,
                ),
                nursery=nursery,
                notifier=self.notifier,
            )
            self.fs = fs
            await fs.start()
            self.ops = CloudfsOperations(fs, self.opts.attr_timeout_s, self.opts.attr_timeout_s)
            fuse_options = set(pyfuse3.default_options)
            fuse_options |= {"fsname=cloudfs", "subtype=cloudfs", "noatime", "auto_unmount"}
            try:
                pyfuse3.init(self.ops, self.mountpoint, fuse_options)
            except RuntimeError as exc:
                raise MountError(f"cannot mount {self.mountpoint}: {exc}") from exc
            log.info(
                "mounted %s for %s at %s (device %s, cache %s)",
                self.opts.server,
                self.me.get("user"),
                self.mountpoint,
                self.opts.device,
                self.cache_dir,
            )
            unmounted = False
            try:
                await self._start_control(nursery)
                self._write_record()
                nursery.start_soon(fs.queue_task)
                nursery.start_soon(self.registry.run)
                self.sync = SyncTask(fs)
                await nursery.start(self.sync.run)
                nursery.start_soon(self._signals)
                nursery.start_soon(self._after_mount)
                await pyfuse3.main()
                unmounted = True
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        left = await fs.drain(budget_s=10.0)
                        if left:
                            log.warning(
                                "%d commits stay queued; they are sent on the next mount", left
                            )
                    except errors.CloudfsError as exc:
                        log.error("final drain failed: %s", exc)
                pyfuse3.close(unmount=not unmounted)
                self._remove_record()
                self.notifier.close()
                nursery.cancel_scope.cancel()
        self.cache.close()
        await self.api.aclose()
        log.info("unmounted %s", self.mountpoint)

    async def _after_mount(self) -> None:
        await trio.to_thread.run_sync(raise_read_ahead, self.mountpoint)

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                log.info("signal %d: committing and unmounting", signum)
                await self._unmount()
                return

    async def _unmount(self) -> None:
        if self._unmounting:
            return
        self._unmounting = True
        assert self.fs is not None
        await self.fs.drain(budget_s=10.0)
        pyfuse3.terminate()

    # ---- control socket --------------------------------------------------------------------------
    async def _start_control(self, nursery: trio.Nursery) -> None:
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        nursery.start_soon(trio.serve_listeners, self._serve_control, [listener])

    async def _serve_control(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            try:
                while b"\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                request = json.loads(buf.split(b"\n", 1)[0])
                cmd = request.get("cmd")
                if cmd == "status":
                    await self._send(stream, self.status())
                elif cmd == "drain":
                    await self._drain_for_client(stream)
                else:
                    await self._send(stream, {"error": f"unknown command {cmd!r}"})
            except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
                log.info("control connection ended: %s", exc)

    async def _send(self, stream: trio.SocketStream, obj: dict[str, Any]) -> None:
        await stream.send_all(json.dumps(obj).encode() + b"\n")

    async def _drain_for_client(self, stream: trio.SocketStream) -> None:
        assert self.fs is not None
        fs = self.fs
        done = trio.Event()
        result: dict[str, Any] = {}

        async def drain() -> None:
            try:
                result["queued"] = await fs.drain(budget_s=30.0)
            except errors.CloudfsError as exc:
                result["error"] = str(exc)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            while not done.is_set():
                with trio.move_on_after(0.5):
                    await done.wait()
                if not done.is_set():
                    st = fs.status()
                    await self._send(stream, {"waiting": describe_waiting(st), "status": st})
        await self._send(stream, {"done": True, **result})

    def status(self) -> dict[str, Any]:
        assert self.fs is not None
        return {
            "mountpoint": self.mountpoint,
            "server": self.opts.server,
            "user": self.me.get("user"),
            "device": self.opts.device,
            "cache_dir": str(self.cache_dir),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "internal_errors": self.ops.internal_errors if self.ops else 0,
            "requests": self.api.requests,
            "sync": self.sync.statistics() if self.sync else None,
            "registry": self.registry.statistics(),
            **self.fs.status(),
        }

    def _write_record(self) -> None:
        record = {
            "pid": os.getpid(),
            "mountpoint": self.mountpoint,
            "socket": str(self.socket_path),
            "cache_dir": str(self.cache_dir),
            "server": self.opts.server,
            "user": self.me.get("user"),
            "device": self.opts.device,
        }
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.record_path)

    def _remove_record(self) -> None:
        for path in (self.record_path, self.socket_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def describe_waiting(st: dict[str, Any]) -> str:
    parts = []
    if st.get("dirty_files"):
        parts.append(f"{len(st['dirty_files'])} files to commit")
    if st.get("uploads_pending"):
        parts.append(
            f"{st['uploads_pending']} block uploads "
            f"({st.get('upload_bytes_pending', 0) / (1 << 20):.1f} MiB in flight)"
        )
    if st.get("queued"):
        parts.append(f"{len(st['queued'])} queued commits (server unreachable?)")
    if st.get("committing"):
        parts.append(f"{st['committing']} commits in progress")
    return ", ".join(parts) or "the server to acknowledge"


async def mount_main(opts: MountOptions) -> None:
    """Foreground mount: checks, then serve until unmounted. Raises MountError for mistakes."""
    check_fuse()
    mountpoint = check_mountpoint(opts.mountpoint)
    api, me = await connect(opts)
    cache_dir = resolve_cache_dir(opts, str(me.get("user", "user")))
    lock_fd = lock_cache_dir(cache_dir)
    setup_logging(cache_dir, to_stderr=True, level=opts.log_level)
    try:
        mount = Mount(opts, mountpoint, api, me, cache_dir)
        await mount.run()
    finally:
        os.close(lock_fd)
