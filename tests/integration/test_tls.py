"""TLS end to end (issue 11): `serve --tls-cert/--tls-key`, the refusal of plain http off
loopback, and the client's keep-alive transport over https with `--ca-file` / CLOUDFS_CA_FILE
(throw-away certificates from trustme)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from cloudfs import errors
from cloudfs.api import ApiClient
from cloudfs.chunking import block_id_of
from tests.support import ServerProcess, TlsFiles, make_tls_files, server_cmd, start_tls_server

CLOUDFS = str(Path(sys.executable).parent / "cloudfs")


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def tls_server(tmp_path: Path, tls: TlsFiles) -> Iterator[ServerProcess]:
    srv = start_tls_server(tmp_path / "data", tls)
    try:
        yield srv
    finally:
        srv.stop()


def test_serve_over_tls_answers_https(tls_server: ServerProcess) -> None:
    assert tls_server.url.startswith("https://127.0.0.1:"), tls_server.url
    user = tls_server.add_user("ann")
    status, me = tls_server.request("GET", "/v1/me", user)
    assert status == 200 and me["user"] == "ann", me
    # Blocks over TLS are sent from memory (no sendfile): whole (200) and ranged (206).
    data = os.urandom(300_000)
    block_id = block_id_of(data)
    status, body = tls_server.request("PUT", f"/v1/blocks/{block_id}", user, data=data)
    assert status == 201, body
    assert tls_server.request("GET", f"/v1/blocks/{block_id}", user) == (200, data)
    status, part = tls_server.request(
        "GET", f"/v1/blocks/{block_id}", user, headers={"Range": "bytes=1000-1999"}
    )
    assert (status, part) == (206, data[1000:2000])


def test_serve_refuses_plain_http_off_loopback_unless_insecure_http(tmp_path: Path) -> None:
    refused = subprocess.run(
        server_cmd("serve", "--data", str(tmp_path / "data"), "--host", "0.0.0.0", "--port", "0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2, refused
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--tls-cert" in lines[0] and "--insecure-http" in lines[0], lines
    assert not (tmp_path / "data").exists(), "a refused serve created the data dir"
    srv = ServerProcess(tmp_path / "data", "--insecure-http")
    # ServerProcess binds 127.0.0.1; the flag must be accepted (and change nothing there).
    srv.start()
    try:
        assert srv.request("GET", "/healthz")[0] == 200
    finally:
        assert srv.stop() == 0
    half = subprocess.run(
        server_cmd("serve", "--data", str(tmp_path / "d2"), "--tls-cert", "x.pem"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert half.returncode == 2 and "go together" in half.stderr, half.stderr


def test_serve_off_loopback_with_tls_starts(tmp_path: Path, tls: TlsFiles) -> None:
    proc = subprocess.Popen(
        server_cmd(
            "serve", "--data", str(tmp_path / "data"), "--host", "0.0.0.0", "--port", "0",
            *tls.serve_args(),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on https://0.0.0.0:" in line, line
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.trio
async def test_client_uses_the_keep_alive_transport_over_https(
    tls_server: ServerProcess, tls: TlsFiles
) -> None:
    user = tls_server.add_user("ann")
    api = ApiClient(tls_server.url, user.token, "laptop", ca_file=str(tls.ca_file))
    try:
        assert api._raw is not None and api._raw.ssl_context is not None
        me = await api.me()
        assert me["user"] == "ann"
        data = os.urandom(1 << 20)
        block_id = block_id_of(data)
        assert await api.put_block(block_id, data) is True
        assert bytes(await api.get_block(block_id)) == data
        for _ in range(5):  # keep-alive: the connections are reused, not one per call
            await api.me()
        assert api._raw is not None, "the client fell back to httpx for https"
        assert len(api._raw._idle) <= 2, len(api._raw._idle)
    finally:
        await api.aclose()


@pytest.mark.trio
async def test_client_refuses_an_untrusted_certificate_at_once(
    tls_server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOUDFS_CA_FILE", raising=False)
    other = make_tls_files(tmp_path / "other")  # a CA that did not sign the server's cert
    for ca_file in (None, str(other.ca_file)):
        api = ApiClient(tls_server.url, "t", "laptop", ca_file=ca_file)
        try:
            with trio.fail_after(3):  # not retried for the whole budget
                with pytest.raises(errors.TlsError, match="not trusted"):
                    await api.me()
        finally:
            await api.aclose()


def test_cli_ca_file_flag_and_environment_and_one_line_refusal(
    tls_server: ServerProcess, tls: TlsFiles, tmp_path: Path
) -> None:
    user = tls_server.add_user("ann")
    env = {k: v for k, v in os.environ.items() if k not in ("CLOUDFS_TOKEN", "CLOUDFS_CA_FILE")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")

    def login(*extra: str, **more_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLOUDFS, "login", tls_server.url, "--token", user.token, *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, **more_env},
        )

    refused = login()
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "not trusted" in lines[0] and "--ca-file" in lines[0], lines
    ok = login("--ca-file", str(tls.ca_file))
    assert ok.returncode == 0 and "as ann" in ok.stdout, ok.stderr
    ok = login(CLOUDFS_CA_FILE=str(tls.ca_file))
    assert ok.returncode == 0, ok.stderr
    bad = login("--ca-file", str(tmp_path / "missing.pem"))
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 1 and len(lines) == 1 and "CA file" in lines[0], bad.stderr
