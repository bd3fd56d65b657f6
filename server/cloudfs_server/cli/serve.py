"""`cloudfs-server serve`: run the HTTP server on one data directory."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import fcntl
import ipaddress
import logging
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

from cloudfs_server.cli.common import CliError, UsageError, duration_arg, store_config
from cloudfs_server.cli.maintenance import add_retention

log = logging.getLogger("cloudfs_server")


def lock_serving(data: Path) -> int:
    """One server per data directory on the embedded engine: its long-poll wake-ups are
    in-process (released at exit)."""
    fd = os.open(data / "serve.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CliError(f"another cloudfs-server is already serving {data}") from None
    return fd


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or "" (every address): not loopback


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's TLS context from --tls-cert/--tls-key, or None for plain http.

    Raises: UsageError if only one is given, or they cannot be loaded; plain http on a
    non-loopback address without --insecure-http."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        if not is_loopback(args.host) and not args.insecure_http:
            raise UsageError(
                f"refusing plain http on {args.host!r}: tokens would cross the network in clear;"
                " pass --tls-cert/--tls-key (or --insecure-http behind a TLS proxy)"
            )
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate/key: {exc}") from exc
    return ctx


def metrics_token(args: argparse.Namespace) -> str | None:
    if args.metrics_token_file is None:
        return None
    from cloudfs_server.http.metrics import load_token

    try:
        return load_token(Path(args.metrics_token_file))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--metrics-token-file: {exc}") from exc


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT (port 0 picks a free one)")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(
    args: argparse.Namespace, ssl_context: ssl.SSLContext | None, token: str | None
) -> int:
    from aiohttp import web  # only `serve` needs the web stack (keeps other commands quick)

    from cloudfs_server.http.app import create_app, create_metrics_app
    from cloudfs_server.http.middleware import ApiRunner

    config = dataclasses.replace(
        store_config(args),
        retention_days=args.retention_days,
        purge_interval_s=args.purge_interval,
        max_long_polls=args.max_long_polls,
        max_long_polls_per_user=args.max_long_polls_per_user,
        login_failures_max=args.login_failures,
        login_window_s=args.login_window,
        metrics_token=token,
    )
    app = create_app(config)
    access_log = None if args.no_access_log else logging.getLogger("aiohttp.access")
    runner = ApiRunner(app, access_log=access_log)
    runners: list[web.AppRunner] = [runner]
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, args.host, args.port, shutdown_timeout=30.0, ssl_context=ssl_context
        )
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(f"port {args.port} on {args.host} is already in use") from None
            raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        host, port = runner.addresses[0][:2]
        scheme = "https" if ssl_context is not None else "http"
        if args.metrics_address is not None:
            metrics_runner = web.AppRunner(create_metrics_app(app), access_log=None)
            runners.append(metrics_runner)
            await metrics_runner.setup()
            m_host, m_port = args.metrics_address
            try:
                await web.TCPSite(metrics_runner, m_host, m_port).start()
            except OSError as exc:
                raise CliError(f"cannot listen on {m_host}:{m_port}: {exc.strerror}") from None
            m_host, m_port = metrics_runner.addresses[0][:2]
            print(f"cloudfs-server metrics on http://{m_host}:{m_port}/metrics", flush=True)
        print(f"cloudfs-server listening on {scheme}://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: finishing in-flight requests")
    finally:
        for each in reversed(runners):
            await each.cleanup()
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
        help="held change-feed requests in all; beyond, idle clients are told to retry later",
    )
    p.add_argument(
        "--max-long-polls-per-user",
        type=int,
        default=64,
        help="held change-feed requests per user (so one user cannot delay the others)",
    )
    p.add_argument(
        "--login-failures",
        type=int,
        default=5,
        metavar="N",
        help="failed logins per user name and per client address within --login-window before "
        "logins answer 429 (per server process; default 5)",
    )
    p.add_argument(
        "--login-window",
        type=duration_arg,
        default=60.0,
        metavar="DURATION",
        help="the window of --login-failures (default 1m)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve https: certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="serve https: private key (PEM)")
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain http on a non-loopback address (e.g. behind a TLS-terminating proxy)",
    )
    p.add_argument(
        "--metrics-token-file",
        metavar="FILE",
        help="serve GET /metrics on the API address to this admin token (file mode 0600; the "
        "token itself or sha256:<hex>)",
    )
    p.add_argument(
        "--metrics-address",
        type=host_port,
        metavar="HOST:PORT",
        help="serve GET /metrics without auth on this separate address",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log detail on stderr (default info)",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")


def run(args: argparse.Namespace) -> int:
    # A refused configuration is a UsageError: one line, exit status 2 (cli/__init__.py main).
    ssl_context = tls_context(args)
    token = metrics_token(args)
    Path(args.data).mkdir(parents=True, exist_ok=True)
    if args.meta is not None:
        # Shared metadata: any number of servers on one database is the point (wake-ups cross
        # servers through LISTEN/NOTIFY, the gc lock is an advisory lock), so no serve.lock.
        return asyncio.run(serve(args, ssl_context, token))
    serve_lock = lock_serving(Path(args.data))
    try:
        return asyncio.run(serve(args, ssl_context, token))
    finally:
        os.close(serve_lock)
