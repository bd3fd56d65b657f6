"""Where the client keeps its files (layer 1): the login config, default cache dirs, and the
per-user runtime directory through which `cloudfs unmount/status` find a running mount.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cloudfs.errors import ConfigError

# Names another login config than ~/.config/cloudfs/config.json (scripts/start uses its own).
CONFIG_ENV = "CLOUDFS_CONFIG"


def config_path() -> Path:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cloudfs" / "config.json"


def load_config() -> dict[str, Any]:
    """The login config (`{"servers": {url: {"token": ...}}, "default_server": url}`), {} if
    there is none. Raises: ConfigError naming the file when it is unreadable or malformed."""
    path = config_path()
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"the config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("servers", {}), dict):
        raise ConfigError(f"the config file {path} is not a cloudfs login config")
    return cfg


def save_login(server: str, token: str) -> Path:
    """Store the token for `server` (mode 0600) and make it the default server."""
    cfg = load_config()
    cfg.setdefault("servers", {})[server.rstrip("/")] = {"token": token}
    cfg["default_server"] = server.rstrip("/")
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp, path)
    return path


def token_for(server: str | None) -> str | None:
    cfg = load_config()
    servers = cfg.get("servers", {})
    if server is None:
        server = cfg.get("default_server")
    if server is None:
        return None
    entry = servers.get(server.rstrip("/"))
    return entry.get("token") if isinstance(entry, dict) else None


def default_server() -> str | None:
    server = load_config().get("default_server")
    return server if isinstance(server, str) else None


def default_cache_dir(server: str, user: str) -> Path:
    """`~/.cache/cloudfs/<host_port>/<user>`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    parts = urlsplit(server)
    host = (parts.netloc or parts.path or "server").replace(":", "_").replace("/", "_")
    return Path(base) / "cloudfs" / host / user


def runtime_dir() -> Path:
    """Short per-user directory for control sockets (AF_UNIX paths are limited to 108 bytes)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "cloudfs" if base else Path(f"/tmp/cloudfs-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def mount_key(mountpoint: str | os.PathLike[str]) -> str:
    real = os.path.realpath(os.fspath(mountpoint))
    return hashlib.sha256(real.encode()).hexdigest()[:20]


def control_socket_path(mountpoint: str | os.PathLike[str]) -> Path:
    return runtime_dir() / f"{mount_key(mountpoint)}.sock"


def mount_record_path(mountpoint: str | os.PathLike[str]) -> Path:
    return runtime_dir() / f"{mount_key(mountpoint)}.json"
