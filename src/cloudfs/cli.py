"""The `cloudfs` command line (layer 5): mount, unmount, status, login, completion.

The CLI is a translation boundary: every error prints one line `cloudfs: error: …` on stderr;
exit status 0 ok, 1 failed, 2 malformed request, 141 stdout closed early (clitools).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from cloudfs import config, errors, history, registry
from cloudfs import login as password_login
from cloudfs.chunking import ChunkParams
from cloudfs.clitools import (
    EXIT_CLOSED_PIPE,
    CliError,
    OneLineParser,
    UsageError,
    VersionAction,
    duration_arg,
    fail,
    mount_records,
    pid_alive,
    server_url,
    size_arg,
)
from cloudfs.sizes import format_size, parse_size

LOG_LEVELS = ("debug", "info", "warning", "error")
# Set to 1 to get the traceback of an unexpected error besides its one line.
DEBUG_ENV = "CLOUDFS_DEBUG"


def chunk_size_arg(text: str) -> int:
    """argparse type for --chunk-size: a size of at least 256 bytes."""
    try:
        return parse_size(text, minimum=256)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="cloudfs", description="Mount a cloudfs drive.")
    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount the drive at MOUNTPOINT")
    m.add_argument("mountpoint")
    m.add_argument(
        "--server", help="server URL (default: CLOUDFS_SERVER, or the one from `cloudfs login`)"
    )
    m.add_argument("--token", help="API token (or CLOUDFS_TOKEN, or `cloudfs login`)")
    m.add_argument("--cache-dir", help="cache directory (default ~/.cache/cloudfs/SERVER/USER)")
    m.add_argument(
        "--cache-size", type=size_arg, default="10G", help="cache budget, e.g. 512M or 10G"
    )
    m.add_argument("--device-name", default=None, help="this device's name (default: hostname)")
    m.add_argument("--foreground", action="store_true", help="stay in the foreground")
    m.add_argument(
        "--chunk-size",
        type=chunk_size_arg,
        default=None,
        help="average chunk size (default 1M; tests use tiny sizes such as 256)",
    )
    m.add_argument(
        "--attr-timeout",
        type=duration_arg,
        default=1.0,
        help="how long the kernel may cache attributes and names, e.g. 500ms or 2s (default 1s)",
    )
    m.add_argument(
        "--commit-timeout",
        type=duration_arg,
        default=8.0,
        help="how long close() tries to reach the server before queueing (default 8s)",
    )
    m.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="mount.log detail (default info)"
    )

    u = sub.add_parser("unmount", help="commit everything pending, then unmount")
    u.add_argument("mountpoint")
    u.add_argument(
        "--timeout",
        type=duration_arg,
        default=120.0,
        help="how long to wait for pending commits, e.g. 30s or 5m (default 2m)",
    )

    s = sub.add_parser("status", help="show mounts, cache use, pending uploads and conflicts")
    s.add_argument("mountpoint", nargs="?")
    s.add_argument("--json", action="store_true")

    login = sub.add_parser("login", help="store a server URL and token in the config file")
    login.add_argument("server")
    login.add_argument("--token", help="API token (or CLOUDFS_TOKEN)")
    password_login.add_arguments(login)  # --user, --password-file, --device (login.py)

    c = sub.add_parser("completion", help="print the shell completion script (bash or zsh)")
    c.add_argument("shell", choices=("bash", "zsh"))

    registry.add_parsers(sub)  # devices, holders (issue 5)
    history.add_parsers(sub)  # versions, restore, trash, undelete
    for name, command in sub.choices.items():
        if name == "completion":
            continue
        command.add_argument(
            "--ca-file",
            help="trust only this CA (PEM) for an https server (default: CLOUDFS_CA_FILE, "
            "else the system CAs)",
        )
    return p


def use_ca_file(args: argparse.Namespace) -> None:
    """`--ca-file` (else CLOUDFS_CA_FILE) for every ApiClient of this process (and a background
    mount's child, which reads it from the environment); an unreadable one fails here, in one line.

    Raises: TlsError if the CA file cannot be loaded."""
    if getattr(args, "ca_file", None):
        os.environ["CLOUDFS_CA_FILE"] = os.path.abspath(args.ca_file)
    if os.environ.get("CLOUDFS_CA_FILE"):
        from cloudfs.api import tls_context

        tls_context(os.environ["CLOUDFS_CA_FILE"])


def dispatch(args: argparse.Namespace) -> int:
    use_ca_file(args)
    if args.command == "mount":
        return cmd_mount(args)
    if args.command == "unmount":
        return cmd_unmount(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "login":
        if args.user is not None:
            return password_login.cmd_login_password(args)
        return cmd_login(args)
    if args.command == "completion":
        return cmd_completion(args)
    if args.command == "devices":
        return registry.cmd_devices(args)
    if args.command == "holders":
        return registry.cmd_holders(args)
    return history.COMMANDS[args.command](args)


def quiet_closed_pipe() -> int:
    """stdout was closed by its reader (`| head`): stop quietly. Python flushes stdout once
    more at exit, so point it at /dev/null first or that flush prints a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


def main(argv: list[str] | None = None) -> int:
    """The CLI's one translation boundary: every error becomes one line and an exit status."""
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions: answer and exit
        import argcomplete  # only then (~30 ms of imports every other run would pay)

        argcomplete.autocomplete(parser)
    try:
        code = dispatch(parser.parse_args(argv))
        sys.stdout.flush()  # a closed pipe shows here, while we can still catch it
        return code
    except BrokenPipeError:
        return quiet_closed_pipe()
    except CliError as exc:
        return fail(exc)
    except errors.CloudfsError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except OSError as exc:
        if os.environ.get(DEBUG_ENV) or os.environ.get("CLOUDFS_DAEMON"):
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}")
    except Exception as exc:  # the last translation: a bug still gets one line, not a traceback
        if os.environ.get(DEBUG_ENV) or os.environ.get("CLOUDFS_DAEMON"):
            traceback.print_exc()  # the daemon's stderr is mount.log: keep the whole story there
        return fail(
            f"unexpected {exc.__class__.__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)"
        )


def cmd_completion(args: argparse.Namespace) -> int:
    """`cloudfs completion bash|zsh`: the script to source, for `cloudfs` and `cloudfs-server`
    (argcomplete: the shell runs the command itself, which answers from its parser)."""
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["cloudfs", "cloudfs-server"], shell=args.shell))
    return 0


# ---- mount ---------------------------------------------------------------------------------------
def _chunk_params(avg: int | None) -> ChunkParams:
    if not avg:
        return ChunkParams()
    return ChunkParams(avg_bytes=avg, min_bytes=max(64, avg // 4), max_bytes=max(1024, avg * 4))


def mount_options(args: argparse.Namespace) -> Any:
    from cloudfs.mount import MountOptions

    server = args.server or os.environ.get("CLOUDFS_SERVER") or config.default_server()
    if not server:
        raise UsageError(
            "no server given: use --server URL, CLOUDFS_SERVER or `cloudfs login URL --token T`"
        )
    server = server_url(server)
    token = args.token or os.environ.get("CLOUDFS_TOKEN") or config.token_for(server)
    if not token:
        raise UsageError(f"no token for {server}: use --token, CLOUDFS_TOKEN or `cloudfs login`")
    return MountOptions(
        mountpoint=args.mountpoint,
        server=server,
        token=token,
        cache_dir=args.cache_dir,
        cache_size_bytes=args.cache_size,
        device=args.device_name or socket.gethostname(),
        chunk_params=_chunk_params(args.chunk_size),
        attr_timeout_s=args.attr_timeout,
        commit_budget_s=args.commit_timeout,
        foreground=args.foreground,
        log_level=getattr(logging, args.log_level.upper()),
    )


def cmd_mount(args: argparse.Namespace) -> int:
    import trio

    from cloudfs.mount import MountError, check_fuse, check_mountpoint, connect, mount_main

    opts = mount_options(args)
    if opts.foreground:
        try:
            trio.run(mount_main, opts)
        except MountError as exc:
            return fail(str(exc))
        return 0

    # background: check what we can here (clear errors), then start a foreground child
    async def preflight() -> dict[str, Any]:
        check_fuse()
        check_mountpoint(opts.mountpoint)
        api, me = await connect(opts)
        await api.aclose()
        return me

    try:
        me = trio.run(preflight)
    except MountError as exc:
        return fail(str(exc))
    cache_dir = (
        Path(opts.cache_dir).expanduser().resolve()
        if opts.cache_dir
        else config.default_cache_dir(opts.server, str(me.get("user", "user")))
    )
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cache_dir, 0o700)  # private to its user, like everything in it
    log_path = cache_dir / "mount.log"
    os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    argv = [
        sys.executable,
        "-m",
        "cloudfs.cli",
        "mount",
        os.path.abspath(opts.mountpoint),
        "--server",
        opts.server,
        "--cache-dir",
        str(cache_dir),
        "--cache-size",
        str(opts.cache_size_bytes),
        "--device-name",
        opts.device,
        "--attr-timeout",
        str(args.attr_timeout),
        "--commit-timeout",
        str(args.commit_timeout),
        "--log-level",
        args.log_level,
        "--foreground",
    ]
    if args.chunk_size:
        argv += ["--chunk-size", str(args.chunk_size)]
    env = dict(os.environ, CLOUDFS_TOKEN=opts.token, CLOUDFS_DAEMON="1")
    with open(log_path, "ab") as log:
        start = log.tell()
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = log_path.read_bytes()[start:].decode(errors="replace").splitlines()
            errs = [line for line in tail if line.startswith("cloudfs: error:")]
            msg = (
                errs[-1][len("cloudfs: error: ") :]
                if errs
                else f"the mount process exited with {child.returncode}; see {log_path}"
            )
            return fail(msg)
        if os.path.ismount(opts.mountpoint):
            print(f"mounted {opts.server} at {opts.mountpoint} (pid {child.pid}, log {log_path})")
            return 0
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGTERM)
    return fail(f"the mount did not come up within 30 s; see {log_path}")


# ---- control socket client -----------------------------------------------------------------------
def _record(mountpoint: str) -> dict[str, Any] | None:
    try:
        return json.loads(config.mount_record_path(mountpoint).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _control(sock_path: str, request: dict[str, Any], timeout_s: float):  # type: ignore[no-untyped-def]
    """Yields the JSON objects the mount answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(sock_path)
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield json.loads(line)
    finally:
        s.close()


def cmd_unmount(args: argparse.Namespace) -> int:
    mp = os.path.abspath(args.mountpoint)
    if not os.path.exists(mp):
        return fail(f"mountpoint {args.mountpoint} does not exist")
    if not os.path.ismount(mp):
        return fail(f"{args.mountpoint} is not mounted")
    record = _record(mp)
    started = time.monotonic()
    said = ""
    if record and pid_alive(int(record["pid"])):
        try:
            for msg in _control(record["socket"], {"cmd": "drain"}, timeout_s=args.timeout):
                if "waiting" in msg and time.monotonic() - started > 1.0 and msg["waiting"] != said:
                    said = msg["waiting"]
                    print(f"cloudfs: waiting for {said}", file=sys.stderr, flush=True)
                if msg.get("done"):
                    if msg.get("queued"):
                        print(
                            f"cloudfs: {msg['queued']} commits could not reach the server; "
                            "they stay queued and are sent on the next mount",
                            file=sys.stderr,
                            flush=True,
                        )
                    break
        except OSError as exc:
            print(
                f"cloudfs: could not ask the mount to commit ({exc}); unmounting anyway",
                file=sys.stderr,
            )
    r = subprocess.run(["fusermount3", "-u", mp], capture_output=True, text=True)
    if r.returncode != 0:
        detail = (r.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
        if "busy" in detail.lower():
            return fail(f"{args.mountpoint} is busy (files are open or a process is inside it)")
        return fail(f"cannot unmount {args.mountpoint}: {detail}")
    if record:
        pid = int(record["pid"])
        deadline = time.monotonic() + args.timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            if time.monotonic() - started > 1.0 and said != "exit":
                said = "exit"
                print(
                    f"cloudfs: waiting for the mount process {pid} to finish",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(0.05)
    return 0


# ---- status --------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    if args.mountpoint:
        rec = _record(os.path.abspath(args.mountpoint))
        if rec is None or not pid_alive(int(rec["pid"])):
            return fail(f"{args.mountpoint} is not a running cloudfs mount")
        records = [rec]
    else:
        records = mount_records()
        if not records:
            print("no cloudfs mounts running")
            return 0
    statuses = []
    for rec in records:
        try:
            st = next(iter(_control(rec["socket"], {"cmd": "status"}, timeout_s=10)))
        except (OSError, StopIteration) as exc:
            return fail(f"cannot reach the mount at {rec['mountpoint']}: {exc}")
        statuses.append(st)
    if args.json:
        print(json.dumps(statuses if not args.mountpoint else statuses[0], indent=2))
        return 0
    for st in statuses:
        print(render_status(st))
    return 0


def render_status(st: dict[str, Any]) -> str:
    cache = st["cache"]
    lines = [
        f"{st['mountpoint']}: {st['server']} as {st['user']} (device {st['device']}, "
        f"pid {st['pid']})",
        f"  cache: {format_size(cache['used_bytes'])} used of {format_size(cache['limit_bytes'])}"
        f" ({format_size(cache['dirty_bytes'])} not yet uploaded) in {st['cache_dir']}",
    ]
    if st.get("uploads_pending"):
        lines.append(
            f"  uploading: {st['uploads_pending']} blocks, "
            f"{format_size(st.get('upload_bytes_pending', 0))} in flight, "
            f"{format_size(st.get('uploaded_bytes', 0))} sent so far"
        )
    dirty = st.get("dirty_files") or []
    if dirty:
        lines.append(
            f"  open with changes: {len(dirty)} files "
            f"({format_size(sum(d['staged_bytes'] for d in dirty))} staged)"
        )
    reg = st.get("registry")
    if reg:
        lines.append(
            f"  device registry: device {reg['device_id']}, {reg['blocks_reported']} cached blocks"
            " reported"
            if reg["device_id"] is not None
            else f"  device registry: not joined ({reg.get('last_error') or 'joining'})"
        )
    sync = st.get("sync")
    if sync:
        lines.append(
            f"  live sync: {'live' if sync['live'] else 'NOT live (catching up or offline)'} at "
            f"change {sync['cursor']}; {sync['applied']} remote changes applied, "
            f"{sync['echoes']} own, {sync['rescans']} rescans; "
            f"{st.get('requests', 0)} server requests besides the feed"
        )
    queued = st.get("queued") or []
    if queued:
        lines.append(f"  pending commits (waiting for the server): {len(queued)}")
        for q in queued[:10]:
            why = ""
            if q.get("waiting_for") == "quota":
                why = " (over quota: free space or raise the quota)"
            lines.append(f"    {q['name']} ({format_size(q['size'])}){why}")
    else:
        lines.append("  pending commits: none")
    conflicts = st.get("conflicts") or []
    if conflicts:
        lines.append("  recent conflicts:")
        for c in conflicts[:10]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["time_ns"] / 1e9))
            lines.append(
                f"    {when} {c['name']} -> {c['copy']} (other device: {c.get('other_device')})"
            )
    else:
        lines.append("  recent conflicts: none")
    return "\n".join(lines)


# ---- login ---------------------------------------------------------------------------------------
def cmd_login(args: argparse.Namespace) -> int:
    import trio

    from cloudfs.mount import MountError, MountOptions, connect

    server = server_url(args.server)
    token = args.token or os.environ.get("CLOUDFS_TOKEN")
    if not token:
        raise UsageError("no token given: use --token TOKEN or CLOUDFS_TOKEN")
    opts = MountOptions(mountpoint="", server=server, token=token)

    async def check() -> dict[str, Any]:
        api, me = await connect(opts)
        await api.aclose()
        return me

    try:
        me = trio.run(check)
    except MountError as exc:
        return fail(str(exc))
    path = config.save_login(server, token)
    print(f"logged in to {server} as {me.get('user')}; token saved in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
