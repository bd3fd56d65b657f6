"""What is particular to each block layer and to the S3 engine, directly (no HTTP): raw vs zstd
headers, ciphertext at rest, the format guard refusing a wrong key or other layers, key files,
`--blocks` URLs, a mirror with a member down, and S3 unreachable (503-class errors, then back)."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from cloudfs_server.engines.chain import BlockChain, parse_blocks_url
from cloudfs_server.engines.dir import DirBlockStore
from cloudfs_server.engines.encrypt import load_key
from cloudfs_server.engines.s3 import S3BlockStore
from cloudfs_server.errors import NotFoundError, StoreConfigError, StoreUnavailableError
from cloudfs_server.http.app import META, ServerConfig, create_app

from tests.server.helpers import bid
from tests.server.test_blockstore import KEY, TEXT, put
from tests.support import MotoServer, TcpGate


@pytest.fixture
def gate(moto: MotoServer) -> Iterator[TcpGate]:
    """The session's moto behind a gate this test can close (the store goes down)."""
    g = TcpGate(moto.url).open()
    try:
        yield g
    finally:
        g.close()


@pytest.mark.asyncio
async def test_compression_stores_incompressible_data_raw(tmp_path: Path) -> None:
    engine = DirBlockStore(tmp_path)
    store = BlockChain([engine], compress=True).build()
    await store.open()
    noise = os.urandom(100_000)
    await put(store, TEXT)
    await put(store, noise)
    text_stored = await engine.get_stored(bid(TEXT))
    assert text_stored[:1] == b"\x01" and len(text_stored) < len(TEXT) // 4
    assert await engine.get_stored(bid(noise)) == b"\x00" + noise
    assert await store.read(bid(TEXT), 5, 100) == TEXT[5:105]
    assert await store.read(bid(noise), 99_990, 100) == noise[99_990:]


@pytest.mark.asyncio
async def test_encryption_hides_plaintext_and_is_deterministic(tmp_path: Path) -> None:
    a, b = DirBlockStore(tmp_path / "a"), DirBlockStore(tmp_path / "b")
    store = BlockChain([a, b], key=KEY).build()  # encrypt(mirror(a, b))
    await store.open()
    await put(store, TEXT)
    stored = await a.get_stored(bid(TEXT))
    assert TEXT[:40] not in stored and len(stored) == len(TEXT) + 29
    # Derived nonce: both mirror copies (and any rewrite) are byte-identical.
    assert await b.get_stored(bid(TEXT)) == stored
    await put(store, TEXT)
    assert await a.get_stored(bid(TEXT)) == stored
    other = BlockChain([DirBlockStore(tmp_path / "c")], key=KEY).build()
    await other.open()
    await put(other, b"another block")
    assert (await a.get_stored(bid(TEXT)))[1:13] != (
        await other.inner.get_stored(bid(b"another block"))
    )[1:13]


@pytest.mark.asyncio
async def test_format_guard_refuses_wrong_key_missing_key_and_other_layers(
    tmp_path: Path,
) -> None:
    first = BlockChain([DirBlockStore(tmp_path)], compress=True, key=KEY).build()
    await first.open()
    await put(first, TEXT)
    await first.close()
    cases = [
        (BlockChain([DirBlockStore(tmp_path)], compress=True, key=os.urandom(32)), "key"),
        (BlockChain([DirBlockStore(tmp_path)], compress=True), "layers"),
        (BlockChain([DirBlockStore(tmp_path)]), "layers"),
        (BlockChain([DirBlockStore(tmp_path)], key=KEY), "layers"),
    ]
    for chain, word in cases:
        with pytest.raises(StoreConfigError, match=word):
            await chain.build().open()
    again = BlockChain([DirBlockStore(tmp_path)], compress=True, key=KEY).build()
    await again.open()
    assert await again.read(bid(TEXT), 0, 50) == TEXT[:50]


@pytest.mark.asyncio
async def test_layers_cannot_be_switched_on_over_plain_blocks(tmp_path: Path) -> None:
    plain = BlockChain([DirBlockStore(tmp_path)]).build()
    await plain.open()
    await put(plain, b"a plain block")
    with pytest.raises(StoreConfigError, match="written without --compress"):
        await BlockChain([DirBlockStore(tmp_path)], compress=True).build().open()
    await plain.open()  # plain again: still fine (no marker is written for plain stores)
    assert await plain.read(bid(b"a plain block"), 0, 5) == b"a pla"


def test_key_files_raw_hex_base64_and_bad(tmp_path: Path) -> None:
    key = os.urandom(32)
    for name, content in [
        ("raw", key),
        ("hex", key.hex().encode() + b"\n"),
        ("b64", base64.b64encode(key) + b"\n"),
    ]:
        (tmp_path / name).write_bytes(content)
        assert load_key(tmp_path / name) == key
    (tmp_path / "short").write_bytes(b"0123")
    with pytest.raises(StoreConfigError, match="32 bytes"):
        load_key(tmp_path / "short")
    with pytest.raises(StoreConfigError, match="cannot read"):
        load_key(tmp_path / "missing")


def test_blocks_urls() -> None:
    s3 = parse_blocks_url("s3://bkt/some/prefix?endpoint=http://127.0.0.1:9000&path_style=1")
    assert isinstance(s3, S3BlockStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.path_style) == (
        "bkt",
        "some/prefix/",
        "http://127.0.0.1:9000",
        True,
    )
    assert s3.key_of("ab" * 32) == f"some/prefix/blocks/ab/ab/{'ab' * 32}"
    assert isinstance(parse_blocks_url("dir:///srv/blocks"), DirBlockStore)
    assert isinstance(parse_blocks_url("/srv/blocks"), DirBlockStore)
    for bad, word in [
        ("s3://KEY:SECRET@bkt", "credentials"),
        ("s3://bkt?endpoint=http://k:s@host", "credentials"),
        ("s3://bkt?colour=blue", "unknown S3 option"),
        ("s3://bkt?endpoint=ftp://host", "http"),
        ("ftp://host/x", "unknown block store"),
        ("dir://relative/path", "dir:///"),
    ]:
        with pytest.raises(StoreConfigError, match=word):
            parse_blocks_url(bad)


@pytest.mark.asyncio
async def test_s3_unreachable_is_store_unavailable_then_recovers(
    gate: TcpGate, bucket_url: str
) -> None:
    url = bucket_url.split("?")[0] + f"?endpoint={gate.url}"
    store = BlockChain([parse_blocks_url(url)]).build()
    await store.open()
    try:
        await put(store, b"before the outage")
        gate.close()
        with pytest.raises(StoreUnavailableError) as err:
            await put(store, b"during the outage")
        assert err.value.headers() == {"Retry-After": "5"}
        with pytest.raises(StoreUnavailableError):
            await store.read(bid(b"before the outage"), 0, 5)
        with pytest.raises(StoreUnavailableError):
            await store.list_ids()
        gate.open()
        await put(store, b"after the outage")
        assert await store.read(bid(b"before the outage"), 0, 6) == b"before"
        assert sorted(await store.list_ids()) == sorted(
            [bid(b"before the outage"), bid(b"after the outage")]
        )
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_mirror_goes_on_with_a_member_down(
    gate: TcpGate, bucket_url: str, tmp_path: Path
) -> None:
    url = bucket_url.split("?")[0] + f"?endpoint={gate.url}"
    local, remote = DirBlockStore(tmp_path), parse_blocks_url(url)
    store = BlockChain([remote, local], compress=True).build()  # the remote member first
    await store.open()
    try:
        await put(store, b"both copies" * 10)
        gate.close()
        await put(store, b"only the local copy" * 10)  # written while the remote is down
        assert await store.read(bid(b"both copies" * 10), 0, 4) == b"both"
        assert await store.read(bid(b"only the local copy" * 10), 0, 4) == b"only"
        assert await store.verify(bid(b"both copies" * 10), 110) is None
        gate.open()
        with pytest.raises(NotFoundError):
            await remote.get_stored(bid(b"only the local copy" * 10))
        # Read from whichever has it (the remote is skipped for a while after its failure).
        assert await store.read(bid(b"only the local copy" * 10), 0, 4) == b"only"
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_s3_creates_a_missing_bucket_and_says_so(
    bucket_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="cloudfs_server.engines.s3")
    store = parse_blocks_url(bucket_url)
    await store.open()
    await store.close()
    created = [r for r in caplog.records if "created the missing bucket" in r.getMessage()]
    assert len(created) == 1
    caplog.clear()
    await store.open()  # the second time it exists: nothing said
    await store.close()
    assert not [r for r in caplog.records if "created the missing bucket" in r.getMessage()]


@pytest.mark.asyncio
async def test_http_blocks_on_a_layered_store_200_206_and_head(
    aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path
) -> None:
    """No local file to sendfile: the GET route answers from read(); without a Range header
    that is a 200 with the whole block (it used to be a 206)."""
    app = create_app(ServerConfig(data_dir=tmp_path, synchronous="NORMAL", compress=True))
    client = await aiohttp_client(app)
    _info, token = await client.app[META].create_user("ann", None)
    auth = {"Authorization": f"Bearer {token}"}
    async with client.put(f"/v1/blocks/{bid(TEXT)}", data=io.BytesIO(TEXT), headers=auth) as resp:
        assert resp.status == 201, await resp.text()
    async with client.get(f"/v1/blocks/{bid(TEXT)}", headers=auth) as resp:
        assert resp.status == 200 and await resp.read() == TEXT
    ranged = {**auth, "Range": "bytes=100-199"}
    async with client.get(f"/v1/blocks/{bid(TEXT)}", headers=ranged) as resp:
        assert resp.status == 206 and await resp.read() == TEXT[100:200]
        assert resp.headers["Content-Range"] == f"bytes 100-199/{len(TEXT)}"
    async with client.head(f"/v1/blocks/{bid(TEXT)}", headers=auth) as resp:
        assert resp.status == 200 and resp.content_length == len(TEXT)
    (stored,) = [p for p in (tmp_path / "blocks").rglob("*") if len(p.name) == 64]
    assert stored.read_bytes()[:1] == b"\x01" and stored.stat().st_size < len(TEXT) // 3
