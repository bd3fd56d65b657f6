"""Fixtures for fine-grained server tests: the aiohttp app in-process on a temp data dir."""

from __future__ import annotations

import logging
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from cloudfs_server.http.app import META, ServerConfig, create_app

from tests.pg import PgCluster
from tests.server.helpers import bid
from tests.support import S3_ENV, MotoServer, server_cmd

# `pytestmark = BOTH_ENGINES` in a module runs each of its tests on the embedded engine and on
# PostgreSQL (the conformance suite: the two engines must not drift apart).
BOTH_ENGINES = pytest.mark.parametrize("meta_engine", ["sqlite", "postgres"], indirect=True)


class AppUser:
    """An aiohttp test client acting as one user."""

    def __init__(self, client: TestClient, token: str, root: int, device: str = "test") -> None:
        self.client = client
        self.token = token
        self.root = root
        self.device = device

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "X-Cloudfs-Device": self.device,
            **(extra or {}),
        }

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": self.headers(headers)}
        if body is not None:
            kwargs["json"] = body
        if data is not None:
            kwargs["data"] = data
        async with self.client.request(method, path, **kwargs) as resp:
            raw = await resp.read()
            if "json" in resp.headers.get("Content-Type", ""):
                return resp.status, await resp.json()
            return resp.status, raw

    async def put_block(self, data: bytes) -> str:
        block_id = bid(data)
        status, body = await self.call("PUT", f"/v1/blocks/{block_id}", data=data)
        assert status in (200, 201), body
        return block_id

    async def upload(self, content: bytes, chunk: int = 4) -> list[list[Any]]:
        parts = [content[i : i + chunk] for i in range(0, len(content), chunk)]
        return [[await self.put_block(p), len(p)] for p in parts]

    async def mkdir(self, parent: int, name: str) -> dict[str, Any]:
        status, node = await self.call(
            "POST", f"/v1/nodes/{parent}/children", {"name": name, "type": "dir"}
        )
        assert status == 201, node
        return node

    async def create_file(self, parent: int, name: str, content: bytes = b"") -> dict[str, Any]:
        blocks = await self.upload(content)
        status, node = await self.call(
            "POST",
            f"/v1/nodes/{parent}/children",
            {"name": name, "type": "file", "size": len(content), "blocks": blocks},
        )
        assert status == 201, node
        return node

    async def commit(self, node_id: int, base: int, content: bytes) -> tuple[int, Any]:
        blocks = await self.upload(content)
        return await self.call(
            "PUT",
            f"/v1/nodes/{node_id}/content",
            {"base_version": base, "size": len(content), "blocks": blocks},
        )

    async def read(self, node_id: int) -> bytes:
        status, node = await self.call("GET", f"/v1/nodes/{node_id}?blocks=1")
        assert status == 200, node
        out = b""
        for block_id, _length in node["blocks"]:
            status, data = await self.call("GET", f"/v1/blocks/{block_id}")
            assert status == 200, data
            out += data
        return out

    async def children(self, node_id: int) -> list[str]:
        status, body = await self.call("GET", f"/v1/nodes/{node_id}/children")
        assert status == 200, body
        return [e["name"] for e in body["entries"]]


@pytest.fixture(autouse=True)
def no_unexpected_server_errors(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Fail a test whose server logged an error or a traceback (s3ql's rule), or whose real
    server's stores do not pass `cloudfs-server fsck` afterwards."""
    srv = request.getfixturevalue("server") if "server" in request.fixturenames else None
    yield
    bad = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR and r.name.split(".")[0] in ("cloudfs_server", "aiohttp")
    ]
    assert not bad, bad
    if srv is not None and srv.log_path.exists():
        log = srv.log_path.read_text()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    if srv is not None and srv.proc is not None:
        # Whatever the test did, the stores it leaves behind are consistent.
        check = subprocess.run(
            server_cmd("fsck", *srv.admin_args()), capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 endpoint per test session (each test uses its own bucket); the AWS
    credentials it accepts are set in the environment, as real ones would be."""
    srv = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in S3_ENV.items():
            mp.setenv(name, value)
        try:
            yield srv.start()
        finally:
            srv.stop()


@pytest.fixture
def bucket_url(moto: MotoServer) -> str:
    """A `--blocks` URL for a fresh bucket on the session's moto (created by the server)."""
    return f"s3://cfs-{uuid.uuid4().hex[:16]}?endpoint={moto.url}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def meta_engine(request: pytest.FixtureRequest) -> str:
    """The metadata engine of this test's app: "sqlite" unless the module asks for both."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def app_config(request: pytest.FixtureRequest, meta_engine: str) -> Callable[..., ServerConfig]:
    """Builds the ServerConfig of an app on this test's engine (PostgreSQL: a new database on
    the session's cluster each call)."""

    def make(data_dir: Path, **options: Any) -> ServerConfig:
        if meta_engine == "postgres":
            cluster: PgCluster = request.getfixturevalue("pg_cluster")
            options["meta_url"] = cluster.new_database()
        return ServerConfig(data_dir=data_dir, synchronous="NORMAL", **options)

    return make


@pytest_asyncio.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    data_dir: Path,
    app_config: Callable[..., ServerConfig],
) -> TestClient:
    app = create_app(app_config(data_dir))
    return await aiohttp_client(app)


@pytest_asyncio.fixture
async def make_user(client: TestClient) -> Callable[..., Awaitable[AppUser]]:
    async def make(name: str, quota: int | None = None, device: str = "test") -> AppUser:
        info, token = await client.app[META].create_user(name, quota)
        return AppUser(client, token, info.root, device)

    return make


@pytest_asyncio.fixture
async def ann(make_user: Callable[..., Awaitable[AppUser]]) -> AppUser:
    return await make_user("ann")


@pytest_asyncio.fixture
async def ben(make_user: Callable[..., Awaitable[AppUser]]) -> AppUser:
    return await make_user("ben")
