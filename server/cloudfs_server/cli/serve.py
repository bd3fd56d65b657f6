"""`cloudfs-server serve`: run the HTTP server on one data directory."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import fcntl
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from cloudfs_server.cli.common import CliError, duration_arg, store_config
from cloudfs_server.cli.maintenance import add_retention

log = logging.getLogger("cloudfs_server")


def lock_serving(data: Path) -> int:
    """One server per data directory: long-poll wake-ups are in-process (released at exit)."""
    fd = os.open(data / "serve.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CliError(f"another cloudfs-server is already serving {data}") from None
    return fd


async def serve(args: argparse.Namespace) -> int:
    from aiohttp import web  # only `serve` needs the web stack (keeps other commands quick)

    from cloudfs_server.http.app import create_app
    from cloudfs_server.http.middleware import ApiRunner

    config = dataclasses.replace(
        store_config(args),
        retention_days=args.retention_days,
        purge_interval_s=args.purge_interval,
        max_long_polls=args.max_long_polls,
    )
    app = create_app(config)
    access_log = None if args.no_access_log else logging.getLogger("aiohttp.access")
    runner = ApiRunner(app, access_log=access_log)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port, shutdown_timeout=30.0)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(f"port {args.port} on {args.host} is already in use") from None
            raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        host, port = runner.addresses[0][:2]
        print(f"cloudfs-server listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: finishing in-flight requests")
    finally:
        await runner.cleanup()
    log.info("stopped")
    return 0


def add_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = cmd("serve", "run the HTTP server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    add_retention(p, "keep old versions and trash this long (hourly purge)")
    p.add_argument("--purge-interval", type=duration_arg, default=3600.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--max-long-polls",
        type=int,
        default=10_000,
        help="held change-feed requests; beyond, idle clients are told to retry later",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log detail on stderr (default info)",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")


def run(args: argparse.Namespace) -> int:
    Path(args.data).mkdir(parents=True, exist_ok=True)
    serve_lock = lock_serving(Path(args.data))
    try:
        return asyncio.run(serve(args))
    finally:
        os.close(serve_lock)
