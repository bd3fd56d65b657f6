"""Server configuration and the choice of storage engines; importable without aiohttp.

The CLI's maintenance commands (add-user, fsck, gc, ...) import only this, not the web stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloudfs_server.devices.store import DeviceStore, SqliteDeviceStore
from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.chain import BlockChain, parse_blocks_url
from cloudfs_server.engines.dir import DirBlockStore
from cloudfs_server.engines.encrypt import load_key
from cloudfs_server.engines.gclock import FileGcLock, GcLock
from cloudfs_server.engines.meta import MetadataStore
from cloudfs_server.engines.sqlite import SqliteMetadataStore

MiB = 1 << 20
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    retention_days: float = 30.0
    purge_interval_s: float = 3600.0
    block_max_bytes: int = 16 * MiB
    json_max_bytes: int = 32 * MiB
    metadata_threads: int = 4
    synchronous: str = "FULL"
    max_long_polls: int = 10_000  # held /v1/changes requests; beyond: "retry_after_s" (busy)
    max_long_polls_per_user: int = 64  # the same, per user (one user cannot starve the others)
    # Failed logins (POST /v1/login) allowed per user name and per client address in the window
    # (per process); beyond, 429 until the oldest failure leaves the window.
    login_failures_max: int = 5
    login_window_s: float = 60.0
    busy_retry_s: float = 10.0  # the back-off suggested to idle subscribers when busy
    # GET /metrics on the API address needs this admin token (or `sha256:<hex>` of it); None:
    # not served there (`serve --metrics-address` serves it on its own address instead).
    metrics_token: str | None = None
    # `postgresql://…`: metadata (and devices, gc lock) in that database, shared by any number of
    # servers; None: the embedded SQLite engine in data_dir.
    meta_url: str | None = None
    # Block engines (`--blocks`, engines/chain.py): empty = the directory engine under data_dir;
    # two = a mirror. Layers: zstd (`--compress`), AES-256-GCM (`--encryption-key-file`).
    blocks: tuple[str, ...] = ()
    compress: bool = False
    encryption_key_file: Path | None = None


def is_shared(config: ServerConfig) -> bool:
    """Whether the metadata lives in a database several servers may share."""
    return config.meta_url is not None


def open_stores(config: ServerConfig) -> tuple[MetadataStore, BlockStore, GcLock]:
    """The engines for a data dir (not yet opened). The one place engines are chosen."""
    data = Path(config.data_dir)
    if config.meta_url is not None:
        # Imported here: deployments on the embedded engine never load the PostgreSQL driver.
        from cloudfs_server.engines.postgres import PgGcLock, PostgresMetadataStore

        pg = PostgresMetadataStore(config.meta_url, threads=max(8, config.metadata_threads))
        return pg, block_chain(config).build(), PgGcLock(config.meta_url)
    meta = SqliteMetadataStore(
        data / "meta.sqlite3", threads=config.metadata_threads, synchronous=config.synchronous
    )
    return meta, block_chain(config).build(), FileGcLock(data / "gc.lock")


def open_device_store(config: ServerConfig) -> DeviceStore:
    """The device list's engine (not yet opened): next to the metadata."""
    if config.meta_url is not None:
        from cloudfs_server.devices.store_postgres import PgDeviceStore

        return PgDeviceStore(config.meta_url)
    return SqliteDeviceStore(Path(config.data_dir) / "devices.sqlite3")


def block_chain(config: ServerConfig) -> BlockChain:
    """The block engines and layers the options select. Raises: StoreConfigError."""
    engines = [parse_blocks_url(url) for url in config.blocks] or [DirBlockStore(config.data_dir)]
    key = None if config.encryption_key_file is None else load_key(config.encryption_key_file)
    return BlockChain(engines, compress=config.compress, key=key)
