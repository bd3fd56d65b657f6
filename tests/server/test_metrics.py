"""`/metrics` (issue 11): Prometheus text of one app's own registry, behind the admin token on the
API address, or without auth on `serve --metrics-address`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from cloudfs_server.http.app import META, ServerConfig, create_app
from cloudfs_server.http.metrics import WarningLimiter

from tests.server.conftest import AppUser
from tests.support import ServerProcess, server_cmd

TOKEN = "metrics-admin-7f3a"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample; 0 if absent (the series was never touched)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


async def app_user(
    aiohttp_client: Callable[..., Awaitable[TestClient]], data: Path, token: str | None
) -> AppUser:
    config = ServerConfig(data_dir=data, synchronous="NORMAL", metrics_token=token)
    client = await aiohttp_client(create_app(config))
    info, user_token = await client.app[META].create_user("ann", None)
    return AppUser(client, user_token, info.root)


async def scrape(user: AppUser, token: str = TOKEN) -> str:
    async with user.client.get("/metrics", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


@pytest.mark.asyncio
@pytest.mark.parametrize("stored", ["token", "hash"])
async def test_metrics_count_requests_bytes_commits_conflicts_and_long_polls(
    aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path, stored: str
) -> None:
    token = TOKEN if stored == "token" else "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()
    ann = await app_user(aiohttp_client, tmp_path / "a", token)
    for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ann.token}):
        async with ann.client.get("/metrics", headers=header) as resp:
            body = await resp.json()
            assert resp.status == 401 and body["error"] == "unauthorized", body
    # A user's own API token is not the admin token.
    status, body = await ann.call("GET", "/metrics")
    assert status == 401, body

    for _ in range(3):
        assert (await ann.call("GET", "/v1/me"))[0] == 200
    node = await ann.create_file(ann.root, "f", b"12345678")
    status, body = await ann.commit(node["id"], node["version"], b"abcdefgh")
    assert status == 200, body
    status, body = await ann.commit(node["id"], node["version"], b"stale!!!")
    assert status == 409 and body["error"] == "version_conflict", body
    status, latest = await ann.call("GET", "/v1/changes?cursor=latest")
    assert status == 200, latest
    cursor = latest["cursor"]
    poll = asyncio.create_task(ann.call("GET", f"/v1/changes?cursor={cursor}&wait=30"))
    await asyncio.sleep(0.3)
    held = await scrape(ann)
    await ann.mkdir(ann.root, "wake")
    assert (await asyncio.wait_for(poll, 5))[0] == 200
    text = await scrape(ann)

    assert sample(text, "cloudfs_http_requests_total", route="me", status="200") == 3
    assert sample(text, "cloudfs_http_requests_total", route="commit", status="409") == 1
    assert sample(text, "cloudfs_http_request_duration_seconds_count", route="me") == 3
    assert sample(text, "cloudfs_commits_total") == 1
    assert sample(text, "cloudfs_conflicts_total") == 1
    assert sample(held, "cloudfs_long_polls_open") == 1
    assert sample(text, "cloudfs_long_polls_open") == 0
    # 2 + 2 blocks of 4 bytes each were uploaded, plus JSON bodies.
    assert sample(text, "cloudfs_http_received_bytes_total") > 16
    assert sample(text, "cloudfs_http_sent_bytes_total") > 0
    assert sample(text, "cloudfs_store_errors_total", code="internal") == 0


@pytest.mark.asyncio
async def test_each_app_has_its_own_registry_and_no_token_means_not_served(
    aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path
) -> None:
    one = await app_user(aiohttp_client, tmp_path / "one", TOKEN)
    two = await app_user(aiohttp_client, tmp_path / "two", TOKEN)
    closed = await app_user(aiohttp_client, tmp_path / "closed", None)
    for _ in range(2):
        await one.call("GET", "/v1/me")
    await two.call("GET", "/v1/me")
    assert sample(await scrape(one), "cloudfs_http_requests_total", route="me") == 2
    assert sample(await scrape(two), "cloudfs_http_requests_total", route="me") == 1
    async with closed.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        body = await r.json()
        assert r.status == 404 and "--metrics-address" in body["message"], body


def test_serve_metrics_address_without_auth_and_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    refused = subprocess.run(
        server_cmd("serve", "--data", str(tmp_path / "data"), "--port", "0",
                   "--metrics-token-file", str(token_file)),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "readable by others" in lines[0], refused.stderr
    token_file.chmod(0o600)

    srv = ServerProcess(
        tmp_path / "data",
        "--metrics-address", "127.0.0.1:0",
        "--metrics-token-file", str(token_file),
    )  # fmt: skip
    srv.start()
    try:
        assert srv.metrics_url.startswith("http://127.0.0.1:"), srv.metrics_url
        user = srv.add_user("ann")
        assert srv.request("GET", "/v1/me", user)[0] == 200
        with urllib.request.urlopen(srv.metrics_url, timeout=10) as resp:  # no auth here
            text = resp.read().decode()
        assert sample(text, "cloudfs_http_requests_total", route="me", status="200") == 1
        status, _ = srv.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        status, body = srv.request("GET", "/metrics")
        assert status == 401, body
    finally:
        assert srv.stop() == 0
    assert os.stat(token_file).st_mode & 0o777 == 0o600


def test_full_disk_warning_is_let_through_once_a_minute() -> None:
    now = [1000.0]
    limiter = WarningLimiter(60.0, clock=lambda: now[0])
    assert limiter.allow() == 0
    for step in (1, 20, 30):  # 51 s later in all: still quiet
        now[0] += step
        assert limiter.allow() is None
    now[0] += 9.5  # 60.5 s after the first
    assert limiter.allow() == 3, "the next warning says how many were held back"
    assert limiter.allow() is None
