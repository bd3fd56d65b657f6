"""Real `cloudfs-server` processes on S3 (moto) and on the block layers: the blocks API, gc, fsck,
usage --json, the object store going down (503 + Retry-After, then back), a mirror member down
and `scrub` repairing it, and the refusal to start with a wrong encryption key."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.server.helpers import Api, bid
from tests.support import MotoServer, ServerProcess, TcpGate, server_cmd


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_cmd(*args), capture_output=True, text=True, timeout=60)


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def object_ids(endpoint: str, bucket: str) -> set[str]:
    resp = s3_client(endpoint).list_objects_v2(Bucket=bucket, Prefix="blocks/")
    return {obj["Key"].rsplit("/", 1)[-1] for obj in resp.get("Contents", [])}


@pytest.fixture
def gate(moto: MotoServer) -> Iterator[TcpGate]:
    g = TcpGate(moto.url).open()
    try:
        yield g
    finally:
        g.close()


@pytest.fixture
def server(tmp_path: Path, bucket_url: str) -> Iterator[ServerProcess]:
    """A server whose blocks live in a fresh bucket on moto (the autouse fixture's fsck gets
    the same options)."""
    srv = ServerProcess(tmp_path / "data", store_args=("--blocks", bucket_url)).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_blocks_api_gc_fsck_and_usage_on_s3(server: ServerProcess, moto: MotoServer) -> None:
    bucket = server.store_args[1].split("?")[0].removeprefix("s3://")
    assert "created the missing bucket " + bucket in server.log_path.read_text()
    user = server.add_user("alice")
    api = Api(server, user)
    data = os.urandom(300_000)
    f = api.create_file(api.root, "f", data, chunk=100_000)
    block_ids = [bid(data[i : i + 100_000]) for i in range(0, 300_000, 100_000)]
    assert object_ids(moto.url, bucket) == set(block_ids)
    assert api.read(f["id"]) == data
    status, part = api.call("GET", f"/v1/blocks/{block_ids[1]}", headers={"Range": "bytes=10-19"})
    assert (status, part) == (206, data[100_010:100_020])
    status, tail = api.call("GET", f"/v1/blocks/{block_ids[2]}", headers={"Range": "bytes=-5"})
    assert (status, tail) == (206, data[-5:])
    status, body = api.call("GET", f"/v1/blocks/{bid(b'never uploaded')}")
    assert status == 404 and body["error"] == "not_found"
    status, body = api.call(
        "POST", "/v1/blocks/missing", {"block_ids": [block_ids[0], bid(b"never uploaded")]}
    )
    assert body == {"missing": [bid(b"never uploaded")]}
    orphan = api.put_block(b"uploaded but never committed")
    out = cli("gc", "--data", str(server.data_dir), *server.store_args, "--grace-seconds", "0")
    assert out.returncode == 0 and "removed 1 unreferenced block" in out.stdout, out
    assert object_ids(moto.url, bucket) == set(block_ids) and orphan not in object_ids(
        moto.url, bucket
    )
    out = cli("fsck", "--data", str(server.data_dir), *server.store_args)
    assert out.returncode == 0 and "fsck: clean" in out.stdout, out
    out = cli("usage", "--data", str(server.data_dir), *server.store_args, "--json")
    usage = json.loads(out.stdout)
    assert usage["server"]["stored_bytes"] == usage["server"]["physical_bytes"] == 300_000
    assert usage["users"][0]["physical_bytes"] == 300_000  # no layers


def test_store_down_answers_503_with_retry_after_then_recovers(
    tmp_path: Path, gate: TcpGate, bucket_url: str
) -> None:
    url = bucket_url.split("?")[0] + f"?endpoint={gate.url}"
    srv = ServerProcess(tmp_path / "data", store_args=("--blocks", url)).start()
    try:
        api = Api(srv, srv.add_user("alice"))
        before = api.put_block(b"before the outage")
        gate.close()
        status, body = api.call("PUT", f"/v1/blocks/{bid(b'during')}", data=b"during")
        assert status == 503 and body["error"] == "store_unavailable", body
        assert "unreachable" in body["message"]
        status, body = api.call("GET", f"/v1/blocks/{before}")
        assert status == 503 and body["error"] == "store_unavailable", body
        assert srv.request("GET", "/healthz")[0] == 200  # still serving
        # Retry-After is in the headers (urllib drops them in Api.call: ask directly)
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            f"{srv.url}/v1/blocks/{before}", headers=api.user.headers(), method="GET"
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 503 and err.value.headers["Retry-After"] == "5"
        gate.open()
        assert api.put_block(b"during") == bid(b"during")
        status, data = api.call("GET", f"/v1/blocks/{before}")
        assert (status, data) == (200, b"before the outage")
        assert srv.proc is not None and srv.proc.poll() is None
    finally:
        srv.stop()
    log = srv.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert "503" in log


def test_mirror_member_down_then_scrub_repairs_it(
    tmp_path: Path, gate: TcpGate, bucket_url: str, moto: MotoServer
) -> None:
    bucket = bucket_url.split("?")[0].removeprefix("s3://")
    url = f"s3://{bucket}?endpoint={gate.url}"
    local = tmp_path / "local-blocks"
    store_args = ("--blocks", url, "--blocks", f"dir://{local}", "--compress")
    data = tmp_path / "data"
    srv = ServerProcess(data, store_args=store_args).start()
    try:
        api = Api(srv, srv.add_user("alice"))
        first = api.create_file(api.root, "first", b"written to both " * 100, chunk=400)
        gate.close()
        second = api.create_file(api.root, "second", b"only written locally " * 100, chunk=700)
        assert api.read(first["id"]) == b"written to both " * 100
        assert api.read(second["id"]) == b"only written locally " * 100
        gate.open()
    finally:
        srv.stop()
    ids_local = {p.name for p in (local / "blocks").rglob("*") if len(p.name) == 64}
    ids_remote = object_ids(moto.url, bucket)
    missed = ids_local - ids_remote
    assert missed and ids_remote < ids_local
    out = cli("scrub", "--data", str(data), *store_args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(missed)} cop(ies) repaired" in out.stdout, out.stdout
    assert object_ids(moto.url, bucket) == ids_local
    out = cli("scrub", "--data", str(data), *store_args)
    assert out.returncode == 0 and "0 cop(ies) repaired" in out.stdout, out.stdout
    assert cli("fsck", "--data", str(data), *store_args).returncode == 0
    # A block lost from both members: unrecoverable, exit 1.
    victim = sorted(ids_local)[0]
    (local / "blocks" / victim[:2] / victim[2:4] / victim).unlink()
    s3_client(moto.url).delete_object(
        Bucket=bucket, Key=f"blocks/{victim[:2]}/{victim[2:4]}/{victim}"
    )
    out = cli("scrub", "--data", str(data), *store_args)
    assert out.returncode == 1 and "1 unrecoverable" in out.stdout, out.stdout
    assert f"unrecoverable: block {victim}" in out.stdout


def test_encrypted_compressed_store_refuses_a_wrong_key(tmp_path: Path) -> None:
    key, wrong = tmp_path / "key", tmp_path / "wrong-key"
    key.write_bytes(os.urandom(32))
    wrong.write_text(os.urandom(32).hex() + "\n")
    data = tmp_path / "data"
    args = ("--compress", "--encryption-key-file", str(key))
    secret = b"a secret sentence that must not be stored in clear. " * 50
    srv = ServerProcess(data, store_args=args).start()
    try:
        api = Api(srv, srv.add_user("alice"))
        f = api.create_file(api.root, "s", secret, chunk=len(secret))
        assert api.read(f["id"]) == secret
    finally:
        srv.stop()
    (stored,) = [p for p in (data / "blocks").rglob("*") if len(p.name) == 64]
    assert b"secret" not in stored.read_bytes() and len(stored.read_bytes()) < len(secret) // 4
    for bad_args, word in [
        (("--compress", "--encryption-key-file", str(wrong)), "encryption key does not match"),
        (("--compress",), "layers"),
        ((), "layers"),
    ]:
        out = cli("fsck", "--data", str(data), *bad_args)
        assert out.returncode == 1 and word in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    refused = ServerProcess(data, store_args=("--compress", "--encryption-key-file", str(wrong)))
    with pytest.raises(RuntimeError, match="exited early"):
        refused.start()
    assert "encryption key does not match" in refused.log_path.read_text()
    out = cli("usage", "--data", str(data), *args, "--json")
    usage = json.loads(out.stdout)
    server = usage["server"]
    assert server["stored_bytes"] == len(secret) and server["physical_bytes"] < len(secret) // 4
    (alice,) = usage["users"]
    assert alice["stored_bytes"] == len(secret)
    assert alice["physical_bytes"] == server["physical_bytes"]  # her blocks are all there is
    assert cli("fsck", "--data", str(data), *args).returncode == 0


def test_bad_block_options_are_one_line_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli("add-user", "alice", "--data", str(data)).returncode == 0
    for bad, word, code in [
        # A malformed URL is a malformed command (2); a key file that cannot be read failed (1).
        (("--blocks", "s3://AKIA:secret@bucket"), "credentials do not belong", 2),
        (("--blocks", "gopher://x"), "unknown block store", 2),
        (("--encryption-key-file", str(tmp_path / "nope")), "cannot read the encryption key", 1),
    ]:
        out = cli("fsck", "--data", str(data), *bad)
        assert out.returncode == code and word in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "secret" not in out.stderr
