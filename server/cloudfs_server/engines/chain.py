"""Builds the block store from the options: engines from `--blocks` URLs (two → mirror), then the
layers above them in the order compress → encrypt → mirror/engine, under a `FormatGuard` that
refuses to open a store whose blocks were written with other layers or another key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.compress import CompressLayer
from cloudfs_server.engines.dir import DirBlockStore
from cloudfs_server.engines.encrypt import EncryptLayer, key_check
from cloudfs_server.engines.layer import BlockLayer
from cloudfs_server.engines.mirror import MirrorStore
from cloudfs_server.errors import StoreConfigError

log = logging.getLogger(__name__)

FORMAT_MARKER = "format"
S3_PARAMS = {"endpoint", "region", "path_style"}


def parse_blocks_url(text: str) -> BlockStore:
    """`dir:///PATH`, a plain path, or `s3://BUCKET[/PREFIX][?endpoint=URL&region=R&path_style=1]`.

    Raises: StoreConfigError naming what is wrong (credentials in the URL are refused).
    """
    if "://" not in text:
        return DirBlockStore(Path(text))
    parts = urlsplit(text)
    if parts.username or parts.password:
        raise StoreConfigError(
            "credentials do not belong in a --blocks URL: use AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
        )
    if parts.scheme == "dir":
        if parts.netloc or not parts.path:
            raise StoreConfigError(f"a dir URL is dir:///absolute/path, not {text!r}")
        return DirBlockStore(Path(parts.path))
    if parts.scheme != "s3":
        raise StoreConfigError(
            f"unknown block store {parts.scheme!r}: use dir:///PATH or s3://BUCKET"
        )
    from cloudfs_server.engines.s3 import S3BlockStore  # botocore loads in ~0.3 s: only if used

    if not parts.hostname:
        raise StoreConfigError("an S3 URL names its bucket: s3://BUCKET[/PREFIX]?endpoint=URL")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - S3_PARAMS
    if unknown:
        raise StoreConfigError(
            f"unknown S3 option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(S3_PARAMS))}"
        )
    endpoint = query.get("endpoint", [None])[-1]
    if endpoint is not None:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise StoreConfigError(f"the S3 endpoint must be an http(s) URL, not {endpoint!r}")
        if ep.username or ep.password:
            raise StoreConfigError("credentials do not belong in the S3 endpoint URL")
    path_style = query.get("path_style", ["0"])[-1].lower() in ("1", "true", "yes")
    return S3BlockStore(
        parts.hostname,
        prefix=parts.path,
        endpoint_url=endpoint,
        region=query.get("region", [None])[-1],
        path_style=path_style,
    )


@dataclass
class BlockChain:
    """The engines and the layers above them (outermost first applied last)."""

    engines: list[BlockStore]
    compress: bool = False
    key: bytes | None = None

    def layers(self) -> list[str]:
        return (["zstd"] if self.compress else []) + (["aes-256-gcm"] if self.key else [])

    def wrap(self, base: BlockStore) -> BlockStore:
        """`base` under the layers: compress(encrypt(base))."""
        wrappers: list[Callable[[BlockStore], BlockStore]] = []
        if self.key is not None:
            key = self.key
            wrappers.append(lambda inner: EncryptLayer(inner, key))
        if self.compress:
            wrappers.append(CompressLayer)
        store = base
        for wrap in wrappers:
            store = wrap(store)
        return store

    def build(self) -> FormatGuard:
        base = self.engines[0] if len(self.engines) == 1 else MirrorStore(self.engines)
        return FormatGuard(self.wrap(base), self)

    def member_views(self) -> list[tuple[BlockStore, BlockStore]]:
        """(engine, the layers over that engine alone) per engine, for scrub."""
        return [(engine, self.wrap(engine)) for engine in self.engines]


class FormatGuard(BlockLayer):
    """The outermost store. At open, compares the store's format marker (layers, key
    fingerprint) with the options and refuses to serve on a mismatch. A store without a marker
    holds plain blocks; the first start with layers on an empty store writes the marker."""

    def __init__(self, inner: BlockStore, chain: BlockChain) -> None:
        super().__init__(inner)
        self.chain = chain
        self.label = inner.label

    def expected(self) -> dict[str, object]:
        marker: dict[str, object] = {"format": 1, "layers": self.chain.layers()}
        if self.chain.key is not None:
            marker["key_check"] = key_check(self.chain.key)
        return marker

    async def open(self) -> None:
        await self.inner.open()
        try:
            await self._check_format()
        except BaseException:
            await self.inner.close()
            raise

    async def _check_format(self) -> None:
        want = self.expected()
        raw = await self.inner.get_marker(FORMAT_MARKER)
        if raw is None:
            if not self.chain.layers():
                return  # no marker = plain blocks, the format of every store before layers
            if await self.inner.list_ids():
                raise StoreConfigError(
                    f"the block store {self.label} holds blocks written without "
                    f"{_flags(self.chain.layers())}; start the server without them"
                )
        else:
            try:
                have = json.loads(raw)
            except ValueError as exc:
                raise StoreConfigError(
                    f"the block store's format marker is damaged: {exc}"
                ) from exc
            if have.get("layers") != want["layers"]:
                raise StoreConfigError(
                    f"the block store {self.label} was written with layers "
                    f"{have.get('layers') or 'none'} ({_flags(have.get('layers') or [])}) but "
                    f"the options say {want['layers'] or 'none'}; start with the same options"
                )
            if have.get("key_check") != want.get("key_check"):
                raise StoreConfigError(
                    "the encryption key does not match the one the stored blocks were written "
                    "with: refusing to start (check --encryption-key-file)"
                )
        # Written (again) every start: a mirror member added empty gets it too.
        await self.inner.put_marker(FORMAT_MARKER, json.dumps(want, sort_keys=True).encode())


def _flags(layers: list[str]) -> str:
    names = {"zstd": "--compress", "aes-256-gcm": "--encryption-key-file"}
    return " and ".join(names.get(layer, layer) for layer in layers) or "no layer options"
