"""`cloudfs.registry.RegistryTask` and the `devices`/`holders` commands against a real server,
with real LMDB caches (the mounts' registry behaviour without FUSE; tests/fuse has the mounts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from cloudfs.api import ApiClient
from cloudfs.cache import LocalCache
from cloudfs.chunking import block_id_of
from cloudfs.registry import DevicesApi, RegistryTask
from tests.support import ServerProcess, User

ROOT = Path(__file__).resolve().parents[2]


def block(n: int) -> tuple[str, bytes]:
    data = f"block {n}".encode() * 10
    return block_id_of(data), data


async def eventually(what: str, check: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Await until `check()` (sync or async) is truthy; fail naming `what`."""
    deadline = trio.current_time() + timeout_s
    last: object = None
    while trio.current_time() < deadline:
        last = check()
        if hasattr(last, "__await__"):
            last = await last  # type: ignore[misc]
        if last:
            return
        await trio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


class Device:
    """A registry member the way a mount runs it: a LocalCache plus a RegistryTask."""

    def __init__(
        self, server: ServerProcess, user: User, base: Path, name: str, lease_s: int | None = None
    ) -> None:
        self.name = name
        self.cache = LocalCache(base / f"cache-{name}", 64 << 20)
        self.api = ApiClient(server.url, user.token, name)
        self.task = RegistryTask(self.api, self.cache, name, lease_s=lease_s, poll_s=0.1)
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            await self.task.run()

    async def stop(self) -> None:
        self.scope.cancel()

    def add(self, *numbers: int) -> None:
        for n in numbers:
            assert self.cache.put_clean(*block(n))

    def evict(self, *numbers: int) -> None:
        self.cache.drop_blocks([block(n)[0] for n in numbers])


@asynccontextmanager
async def devices(
    server: ServerProcess, user: User, base: Path
) -> AsyncIterator[Callable[..., Device]]:
    made: list[Device] = []
    async with trio.open_nursery() as nursery:

        def start(name: str, lease_s: int | None = None, blocks: tuple[int, ...] = ()) -> Device:
            device = Device(server, user, base, name, lease_s)
            device.add(*blocks)
            made.append(device)
            nursery.start_soon(device.run)
            return device

        try:
            yield start
        finally:
            for device in made:
                await device.stop()
    for device in made:
        device.cache.close()
        await device.api.aclose()


async def joined(device: Device) -> int:
    await eventually(f"{device.name} to join", lambda: device.task.device_id is not None)
    assert device.task.device_id is not None
    return device.task.device_id


@pytest.mark.trio
async def test_three_devices_ids_holders_and_reuse(
    server: ServerProcess, alice: User, tmp_path: Path
) -> None:
    api = ApiClient(server.url, alice.token, "observer")
    reg = DevicesApi(api)
    b1, b2, b3 = (block(n)[0] for n in (1, 2, 3))

    async def holders(block_id: str) -> list[int]:
        return (await reg.holders([block_id]))[block_id]

    try:
        async with devices(server, alice, tmp_path) as start:
            laptop = start("laptop", blocks=(1, 2))
            assert await joined(laptop) == 1
            phone = start("phone", blocks=(2,))
            assert await joined(phone) == 2
            desk = start("desk")
            assert await joined(desk) == 3
            assert await holders(b1) == [1] and await holders(b2) == [1, 2]
            # Holders follow cache contents: additions and evictions are reported.
            desk.add(1, 3)
            await eventually("b1 on 1 and 3", lambda: _equal(holders(b1), [1, 3]))
            laptop.evict(1)
            await eventually("laptop's eviction", lambda: _equal(holders(b1), [3]))
            listed = await reg.list_devices()
            assert [(d["device_id"], d["device_name"], d["blocks"]) for d in listed] == [
                (1, "laptop", 1),
                (2, "phone", 1),
                (3, "desk", 2),
            ]
            # request(): holders before the call, then the requester holds it too.
            assert await phone.task.request(b3) == [3]
            assert await holders(b3) == [2, 3]
            # A clean stop leaves at once; the smallest free id is reused.
            await phone.stop()
            await eventually("phone to leave", lambda: _equal(_ids(reg.list_devices()), [1, 3]))
            assert await holders(b2) == [1]
            tablet = start("tablet")
            assert await joined(tablet) == 2
    finally:
        await api.aclose()


async def _equal(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


async def _ids(listing: object) -> list[int]:
    return [d["device_id"] for d in await listing]  # type: ignore[misc]


@pytest.mark.trio
async def test_many_blocks_join_in_batches(
    server: ServerProcess, alice: User, tmp_path: Path
) -> None:
    ids = {block_id_of(str(n).encode()) for n in range(23_456)}

    async def scan() -> set[str]:
        return set(ids)

    api = ApiClient(server.url, alice.token, "big")
    task = RegistryTask(api, None, "big", poll_s=0.1, scan=scan)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            await eventually(
                "all blocks reported", lambda: task.statistics()["blocks_reported"] == 23_456
            )
            listed = await DevicesApi(api).list_devices()
            assert listed[0]["blocks"] == 23_456
            ids.difference_update(sorted(ids)[:12_000])  # a mass eviction: two batches
            await eventually(
                "mass eviction", lambda: task.statistics()["blocks_reported"] == 11_456
            )
            assert (await DevicesApi(api).list_devices())[0]["blocks"] == 11_456
            nursery.cancel_scope.cancel()
        assert await DevicesApi(api).list_devices() == []  # left on cancel
    finally:
        await api.aclose()


@pytest.mark.trio
async def test_server_restart_the_device_keeps_its_id_and_resends_blocks(
    server: ServerProcess, alice: User, tmp_path: Path
) -> None:
    async with devices(server, alice, tmp_path) as start:
        one = start("one", lease_s=5, blocks=(1, 2, 3))
        await joined(one)
        two = start("two", lease_s=5, blocks=(3,))
        await joined(two)
        await trio.to_thread.run_sync(server.stop)
        await trio.to_thread.run_sync(server.start)
        # The tasks' clients still point at the old port: give them the new one (the old
        # clients are closed at the end: a call may still be using them).
        old_clients = []
        for device in (one, two):
            old_clients.append(device.api)
            device.api = ApiClient(server.url, alice.token, device.name)
            device.task.devices.api = device.api
        api = ApiClient(server.url, alice.token, "observer")
        try:
            reg = DevicesApi(api)
            b3 = block(3)[0]
            await eventually(
                "blocks re-sent after the restart", lambda: _equal(reg.holders([b3]), {b3: [1, 2]})
            )
            listed = await reg.list_devices()
            assert [(d["device_id"], d["blocks"]) for d in listed] == [(1, 3), (2, 1)]
            assert one.task.joins == 1 and two.task.joins == 1  # same ids, no re-join
        finally:
            await api.aclose()
            for client in old_clients:
                await client.aclose()


KILLED_DEVICE = textwrap.dedent("""
    import sys, trio
    from pathlib import Path
    from cloudfs.api import ApiClient
    from cloudfs.cache import LocalCache
    from cloudfs.chunking import block_id_of
    from cloudfs.registry import RegistryTask

    async def main() -> None:
        url, token, cache_dir = sys.argv[1:4]
        cache = LocalCache(Path(cache_dir), 1 << 24)
        data = b"held by the doomed device"
        cache.put_clean(block_id_of(data), data)
        task = RegistryTask(ApiClient(url, token, "doomed"), cache, "doomed", lease_s=1,
                            poll_s=0.1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            while task.device_id is None:
                await trio.sleep(0.05)
            print("joined", task.device_id, flush=True)
            await trio.sleep_forever()

    trio.run(main)
""")


@pytest.mark.trio
async def test_a_killed_device_expires_after_its_lease(
    server: ServerProcess, alice: User, tmp_path: Path
) -> None:
    api = ApiClient(server.url, alice.token, "observer")
    reg = DevicesApi(api)
    proc = await trio.to_thread.run_sync(
        lambda: subprocess.Popen(
            [sys.executable, "-c", KILLED_DEVICE, server.url, alice.token, str(tmp_path / "d")],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
    )
    try:
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == "joined 1", line
        doomed_block = block_id_of(b"held by the doomed device")
        assert (await reg.holders([doomed_block]))[doomed_block] == [1]
        proc.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(proc.wait)
        killed_at = time.monotonic()
        assert [d["device_name"] for d in await reg.list_devices()] == ["doomed"]
        await eventually(
            "the killed device to expire", lambda: _equal(reg.list_devices(), []), timeout_s=10
        )
        assert time.monotonic() - killed_at >= 0.5  # not before its lease ran out
        assert (await reg.holders([doomed_block]))[doomed_block] == []
        answer = await reg.join("next", [], None)
        assert answer["device_id"] == 1  # the freed id
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await api.aclose()


def cloudfs_registry(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLOUDFS_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "cloudfs.registry", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.trio
async def test_devices_and_holders_commands(
    server: ServerProcess, alice: User, bob: User, tmp_path: Path
) -> None:
    # A file on the server whose blocks are 1, 2, 1 (a repeated block), made over HTTP.
    api = ApiClient(server.url, alice.token, "maker")
    parts = [block(1), block(2), block(1)]
    try:
        for block_id, data in parts[:2]:
            await api.put_block(block_id, data)
        me = await api.me()
        await api._json(
            "POST",
            f"/v1/nodes/{me['root']}/children",
            json_body={
                "name": "f.bin",
                "type": "file",
                "size": sum(len(d) for _, d in parts),
                "blocks": [[b, len(d)] for b, d in parts],
            },
        )
    finally:
        await api.aclose()
    async with devices(server, alice, tmp_path) as start:
        laptop = start("laptop", blocks=(1,))
        await joined(laptop)
        phone = start("phone", blocks=(1, 2))
        await joined(phone)
        await eventually("phone's blocks", lambda: phone.task.statistics()["blocks_reported"] == 2)
        common = ("--server", server.url, f"--token={alice.token}")
        out = await trio.to_thread.run_sync(cloudfs_registry, "devices", *common)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split() == ["ID", "NAME", "LAST", "SEEN", "BLOCKS"]
        assert [line.split()[:2] + line.split()[-1:] for line in lines[1:]] == [
            ["1", "laptop", "1"],
            ["2", "phone", "2"],
        ]
        out = await trio.to_thread.run_sync(cloudfs_registry, "holders", "/f.bin", *common)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith("/f.bin: 3 blocks")
        assert lines[1].endswith("1 (laptop), 2 (phone)")
        assert lines[2].endswith("2 (phone)")
        assert lines[3].endswith("1 (laptop), 2 (phone)")
        # Bob sees none of alice's devices, and cannot see her file.
        bob_args = ("--server", server.url, f"--token={bob.token}")
        out = await trio.to_thread.run_sync(cloudfs_registry, "devices", *bob_args)
        assert (out.returncode, out.stdout.strip()) == (0, "no devices joined")
        out = await trio.to_thread.run_sync(cloudfs_registry, "holders", "/f.bin", *bob_args)
        assert out.returncode == 1 and out.stderr.startswith("cloudfs: error: /f.bin: no such")
        out = await trio.to_thread.run_sync(
            cloudfs_registry, "devices", "--server", server.url, "--token=wrong"
        )
        assert out.returncode == 1
        assert (
            out.stderr.strip() == f"cloudfs: error: {server.url} rejected the token (401 "
            "unauthorized)"
        )
        out = await trio.to_thread.run_sync(cloudfs_registry, "holders", "/", *common)
        assert out.returncode == 1 and out.stderr.strip() == "cloudfs: error: / is a directory"


# -- three real mounts of one account -----------------------------------------------------------


def cloudfs(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLOUDFS_TOKEN"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "cloudfs"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def listed_devices(server: ServerProcess, user: User) -> list[tuple[int, str]]:
    out = cloudfs("devices", "--server", server.url, f"--token={user.token}", "--json")
    assert out.returncode == 0, out.stderr
    return [(d["device_id"], d["device_name"]) for d in json.loads(out.stdout)]


def poll(what: str, check: Callable[[], object], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


@pytest.mark.fuse
@pytest.mark.slow
def test_three_mounts_ids_holders_and_a_killed_mount_expiring(
    server: ServerProcess, alice: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fuse.conftest import Mount  # needs FUSE; imported here so collection never does

    monkeypatch.setenv("CLOUDFS_DEVICE_LEASE_S", "2")
    mounts: list[Mount] = []

    def mount(name: str) -> Mount:
        m = Mount(server, alice, tmp_path, name, extra_args=("--chunk-size", "64K"))
        mounts.append(m)
        m.start()
        return m

    def holders_of(m: Mount, name: str) -> list[str]:
        out = cloudfs("holders", str(m.path / name), f"--token={alice.token}")
        assert out.returncode == 0, out.stderr
        return [line.split("  ")[-1] for line in out.stdout.splitlines()[1:]]

    try:
        laptop = mount("laptop")
        poll("laptop to join", lambda: listed_devices(server, alice) == [(1, "laptop")])
        phone = mount("phone")
        poll("phone to join", lambda: listed_devices(server, alice)[-1:] == [(2, "phone")])
        desk = mount("desk")
        poll("desk to join", lambda: listed_devices(server, alice)[-1:] == [(3, "desk")])
        status = cloudfs("status", str(laptop.path), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["registry"]["device_id"] == 1
        status = cloudfs("status", str(desk.path))
        assert "device registry: device 3, 0 cached blocks reported" in status.stdout

        data = os.urandom(400_000)
        (laptop.path / "photo.raw").write_bytes(data)  # close() commits: laptop holds the blocks
        poll("the laptop's blocks", lambda: set(holders_of(desk, "photo.raw")) == {"1 (laptop)"})
        blocks = len(holders_of(desk, "photo.raw"))
        assert blocks >= 3, "expected several 64 KiB-average blocks"

        poll("phone to see the file", lambda: (phone.path / "photo.raw").exists())
        assert (phone.path / "photo.raw").read_bytes() == data  # the phone caches the blocks
        poll(
            "the phone's blocks",
            lambda: holders_of(desk, "photo.raw") == ["1 (laptop), 2 (phone)"] * blocks,
        )

        # A clean unmount leaves at once; remounting takes the smallest free id (2 again) and
        # reports the blocks still in its cache.
        phone.stop()
        assert listed_devices(server, alice) == [(1, "laptop"), (3, "desk")]
        assert set(holders_of(desk, "photo.raw")) == {"1 (laptop)"}
        phone.start()
        poll("phone to rejoin", lambda: (2, "phone") in listed_devices(server, alice))
        poll(
            "the phone's cached blocks after remount",
            lambda: set(holders_of(desk, "photo.raw")) == {"1 (laptop), 2 (phone)"},
        )

        # A killed mount cannot leave: it is removed after its 2 s lease and its id is free.
        desk.kill9()
        killed_at = time.monotonic()
        assert (3, "desk") in listed_devices(server, alice)
        poll(
            "the killed desk to expire",
            lambda: listed_devices(server, alice) == [(1, "laptop"), (2, "phone")],
        )
        assert time.monotonic() - killed_at > 1.0
        tablet = mount("tablet")
        poll("tablet to take id 3", lambda: (3, "tablet") in listed_devices(server, alice))
        assert tablet.path.is_dir()
    finally:
        for m in mounts:
            m.stop()


@pytest.mark.trio
async def test_a_server_without_the_registry_is_retried_with_backoff_not_spun_on(
    server: ServerProcess, alice: User
) -> None:
    """Every route 404s under a wrong base path: the task backs off and never stops the caller."""
    api = ApiClient(server.url + "/no-such-prefix", alice.token, "lost")
    task = RegistryTask(api, None, "lost", poll_s=0.1, scan=lambda: _empty())
    attempts = 0
    real_join = task.devices.join

    async def counting_join(*args: object) -> object:
        nonlocal attempts
        attempts += 1
        return await real_join(*args)  # type: ignore[arg-type]

    task.devices.join = counting_join  # type: ignore[method-assign]
    try:
        with trio.move_on_after(2.0):
            await task.run()
        assert task.joins == 0 and task.device_id is None
        assert task.last_error is not None and "not_found" in task.last_error
        assert 2 <= attempts <= 6, f"{attempts} join attempts in 2 s (0.1 s doubling back-off)"
    finally:
        await api.aclose()


async def _empty() -> set[str]:
    return set()
