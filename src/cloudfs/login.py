"""`cloudfs login URL --user NAME` (layer 5): a password login that gets this device its own
token (POST /v1/login) and saves server URL and token in the 0600 config file (config.py).

`cloudfs login URL --token T` (an admin-issued token) stays in cli.py; cli.py hands over here
when `--user` is given.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from pathlib import Path
from typing import Any

from cloudfs import config
from cloudfs.clitools import CliError, UsageError, server_url

LOGIN_TIMEOUT_S = 30.0  # Argon2 on a busy server takes a while; this is the whole request


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The password-login options of `cloudfs login` (cli.py registers the command)."""
    parser.add_argument("--user", help="log in with this user's password (POST /v1/login)")
    parser.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="with --user: the password is the first line of FILE (default: a prompt)",
    )
    parser.add_argument(
        "--device", help="with --user: this device's token name (default: the hostname)"
    )


def read_password(path: Path | None) -> str:
    """Raises: CliError (unreadable file, empty password), UsageError (nowhere to prompt)."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read the password file {path}: {exc}") from exc
        password = text.splitlines()[0] if text else ""
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        raise UsageError("give --password-file FILE (stdin is not a terminal to prompt on)")
    if not password:
        raise CliError("the password is empty")
    return password


def request_token(server: str, user: str, password: str, device: str) -> dict[str, Any]:
    """POST /v1/login; the answer's {"token", "device", "user"}.

    Raises: CliError with one line for every failure (wrong password, rate-limited,
    unreachable server, TLS, an unexpected answer)."""
    import httpx

    from cloudfs import errors
    from cloudfs.api import tls_context

    ca_file = os.environ.get("CLOUDFS_CA_FILE")
    try:
        verify = tls_context(ca_file) if server.startswith("https:") else True
    except errors.TlsError as exc:
        raise CliError(str(exc)) from exc
    body = {"user": user, "password": password, "device": device}
    try:
        with httpx.Client(verify=verify, timeout=LOGIN_TIMEOUT_S) as client:
            resp = client.post(f"{server}/v1/login", json=body)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach {server}: {exc or exc.__class__.__name__}") from exc
    try:
        answer = resp.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CliError(
            f"{server} answered {resp.status_code} without JSON: is it a cloudfs server?"
        )
    if resp.status_code == 201 and isinstance(answer.get("token"), str):
        return answer
    message = answer.get("message") or answer.get("error") or f"status {resp.status_code}"
    if resp.status_code == 401:
        raise CliError(f"login to {server} refused: {message}")
    if resp.status_code == 429:
        wait = resp.headers.get("Retry-After", "?")
        raise CliError(f"too many failed logins; try again in {wait} s")
    raise CliError(f"login to {server} failed ({resp.status_code}): {message}")


def cmd_login_password(args: argparse.Namespace) -> int:
    """`cloudfs login URL --user NAME [--password-file FILE] [--device NAME]`."""
    server = server_url(args.server)
    if getattr(args, "token", None):
        raise UsageError("give either --token or --user, not both")
    device = args.device or socket.gethostname()
    password = read_password(args.password_file)
    answer = request_token(server, args.user, password, device)
    path = config.save_login(server, answer["token"])
    print(
        f"logged in to {server} as {answer.get('user')} (device {answer.get('device')!r}); "
        f"token saved in {path}"
    )
    return 0
