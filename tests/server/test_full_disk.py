"""A full server disk (issue 11, defect 4): 507 `server_full` (not 500), one warning a minute at
most, and recovery once space is back. The data dir is a real 8 MiB tmpfs, unmounted in finally.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from cloudfs_server.http.app import META, ServerConfig, create_app
from cloudfs_server.http.batch import PACK_TYPE

from tests.server.conftest import AppUser
from tests.server.helpers import bid

pytestmark = pytest.mark.asyncio

if os.geteuid() != 0:  # pragma: no cover - CI runs as root
    pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)", allow_module_level=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "small"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=True)


@pytest_asyncio.fixture
async def full_client(
    aiohttp_client: Callable[..., Awaitable[TestClient]], small_fs: Path
) -> TestClient:
    app = create_app(
        ServerConfig(data_dir=small_fs / "data", synchronous="NORMAL", metrics_token="adm")
    )
    return await aiohttp_client(app)


def fill(path: Path) -> None:
    """Write `path` until the filesystem refuses another byte."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        for size in (4096, 512, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError:
                    break


async def until_refused(call: Callable[[int], Awaitable[tuple[int, object]]]) -> tuple[int, dict]:
    """Repeat a small write until the server refuses it (SQLite may reuse WAL space first)."""
    for i in range(3000):
        status, body = await call(i)
        if status >= 300:
            assert isinstance(body, dict), body
            return status, body
    raise AssertionError("3000 writes on a full disk all succeeded")


async def test_full_disk_answers_507_server_full_and_recovers(
    full_client: TestClient, small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    info, token = await full_client.app[META].create_user("ann", None)
    ann = AppUser(full_client, token, info.root)
    status, dev = await ann.call("POST", "/v1/devices", {"device_name": "d", "blocks": []})
    assert status == 201, dev
    filler = small_fs / "filler"
    caplog.set_level(logging.INFO)
    fill(filler)

    data = os.urandom(256 * 1024)
    status, body = await ann.call("PUT", f"/v1/blocks/{bid(data)}", data=data)
    assert (status, body["error"]) == (507, "server_full"), body
    assert "space" in body["message"]

    async def create(i: int) -> tuple[int, object]:
        return await ann.call(
            "POST", f"/v1/nodes/{ann.root}/children", {"name": f"d{i}", "type": "dir"}
        )

    status, body = await until_refused(create)
    assert (status, body["error"]) == (507, "server_full"), body

    async def heartbeat(_i: int) -> tuple[int, object]:
        return await ann.call(
            "POST", f"/v1/devices/{dev['device_id']}/heartbeat", {"session": dev["session"]}
        )

    status, body = await until_refused(heartbeat)
    assert (status, body["error"]) == (507, "server_full"), body

    for _ in range(20):  # many refusals: still one warning, no traceback, no error
        status, body = await ann.call("PUT", f"/v1/blocks/{bid(data)}", data=data)
        assert status == 507, body
    records = [r for r in caplog.records if r.name.startswith("cloudfs_server")]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "disk full" in warnings[0].getMessage()
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info]

    filler.unlink()  # the operator frees space: everything works again
    assert await ann.put_block(data) == bid(data)
    status, body = await create(10_000)
    assert status == 201, body
    status, body = await heartbeat(0)
    assert status == 200, body
    async with full_client.get("/metrics", headers={"Authorization": "Bearer adm"}) as resp:
        text = await resp.text()
    refused = [line for line in text.splitlines() if line.startswith("cloudfs_store_errors_total{")]
    assert refused == ['cloudfs_store_errors_total{code="server_full"} 23.0'], refused


async def test_full_disk_answers_507_server_full_to_batch_and_pack(
    full_client: TestClient, small_fs: Path
) -> None:
    """POST /v1/batch (apply_batch, SQLite) and POST /v1/blocks/pack (block engine, upload rows)
    cross the same engine boundaries as the single routes: a full disk is 507, not 500."""
    info, token = await full_client.app[META].create_user("ann", None)
    ann = AppUser(full_client, token, info.root)
    filler = small_fs / "filler"
    fill(filler)

    data = os.urandom(256 * 1024)
    body = bytes.fromhex(bid(data)) + struct.pack(">I", len(data)) + data
    status, answer = await ann.call(
        "POST", "/v1/blocks/pack", data=body, headers={"Content-Type": PACK_TYPE}
    )
    assert (status, answer["error"]) == (507, "server_full"), answer

    async def batch(i: int) -> tuple[int, object]:
        ops = [
            {"op": "create", "parent": ann.root, "name": f"b{i}-{k}", "type": "dir"}
            for k in range(20)
        ]
        return await ann.call("POST", "/v1/batch", {"ops": ops})

    status, answer = await until_refused(batch)
    assert (status, answer["error"]) == (507, "server_full"), answer

    filler.unlink()
    status, answer = await ann.call(
        "POST", "/v1/blocks/pack", data=body, headers={"Content-Type": PACK_TYPE}
    )
    assert status == 200 and answer["blocks"][0]["stored"] is True, answer
    status, answer = await batch(10_000)
    assert status == 200 and all(r["ok"] for r in answer["results"]), answer
