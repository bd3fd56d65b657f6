"""The device registry over HTTP (`/v1/devices…`) against a real `cloudfs-server` process, on
the embedded engine and on PostgreSQL (where the registry re-reads the shared device list)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
from cloudfs_server.devices.registry import DeviceRegistry
from cloudfs_server.devices.store import SqliteDeviceStore

from tests.support import ServerProcess, User


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """This module's server, on the embedded engine unless a test asks for both (`BOTH`);
    PostgreSQL gets a new database on the session's cluster."""
    meta = None
    if getattr(request, "param", "sqlite") == "postgres":
        meta = request.getfixturevalue("pg_cluster").new_database("dev")
    srv = ServerProcess(tmp_path / "data", meta_url=meta).start()
    try:
        yield srv
    finally:
        srv.stop()


# The tests whose behaviour depends on the device store (ids, sessions, leases, restarts).
BOTH = pytest.mark.parametrize("server", ["sqlite", "postgres"], indirect=True)


def bid(n: int | str) -> str:
    """A well-formed block id (the registry never needs the bytes)."""
    return blake3.blake3(str(n).encode()).hexdigest()


class Dev:
    """One joined device of one user, over the real HTTP API."""

    def __init__(
        self,
        server: ServerProcess,
        user: User,
        name: str,
        blocks: list[str],
        lease_s: int | None = None,
    ) -> None:
        self.server, self.user = server, user
        body: dict[str, object] = {"device_name": name, "blocks": blocks}
        if lease_s is not None:
            body["lease_s"] = lease_s
        status, answer = server.request("POST", "/v1/devices", user, body)
        assert status == 201, answer
        assert isinstance(answer, dict)
        self.device_id: int = answer["device_id"]
        self.session: str = answer["session"]
        self.lease_s: int = answer["lease_s"]

    def call(self, action: str, **body: object) -> tuple[int, object]:
        return self.server.request(
            "POST",
            f"/v1/devices/{self.device_id}/{action}",
            self.user,
            {"session": self.session, **body},
        )

    def ok(self, action: str, **body: object) -> dict:
        status, answer = self.call(action, **body)
        assert status == 200, (action, status, answer)
        assert isinstance(answer, dict)
        return answer

    def request(self, block_id: str) -> list[int]:
        return self.ok("request", block_id=block_id)["holders"]


def devices_of(server: ServerProcess, user: User) -> list[dict]:
    status, answer = server.request("GET", "/v1/devices", user)
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer["devices"]


def holders(server: ServerProcess, user: User, block_id: str) -> list[int]:
    status, answer = server.request("GET", f"/v1/devices/holders/{block_id}", user)
    assert status == 200, answer
    assert isinstance(answer, dict) and answer["block_id"] == block_id
    return answer["holders"]


def wait_until(what: str, cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_the_issues_example_over_http(server: ServerProcess, alice: User) -> None:
    b1, b2, b3, b4 = (bid(i) for i in range(1, 5))
    one = Dev(server, alice, "one", [b1, b2])
    two = Dev(server, alice, "two", [b2, b3])
    three = Dev(server, alice, "three", [b4])
    assert (one.device_id, two.device_id, three.device_id) == (1, 2, 3)
    assert one.request(b3) == [2]
    assert two.request(b2) == [1, 2]
    assert one.ok("leave") == {"left": True}
    assert two.request(b1) == []
    two.ok("leave")
    again = Dev(server, alice, "again", [])
    assert again.device_id == 1
    assert [d["device_id"] for d in devices_of(server, alice)] == [1, 3]
    # Device 1 gained b3 by its request, then left; device 2 held it and left too.
    assert holders(server, alice, b3) == []
    assert holders(server, alice, b4) == [3]


def test_list_shows_names_last_seen_and_block_counts(server: ServerProcess, alice: User) -> None:
    before_ns = time.time_ns()
    laptop = Dev(server, alice, "laptop", [bid(i) for i in range(5)])
    phone = Dev(server, alice, "phone", [bid(0)])
    listed = devices_of(server, alice)
    assert [(d["device_id"], d["device_name"], d["blocks"]) for d in listed] == [
        (laptop.device_id, "laptop", 5),
        (phone.device_id, "phone", 1),
    ]
    for d in listed:
        assert before_ns <= d["joined_ns"] <= d["last_seen_ns"] <= time.time_ns()
        assert d["lease_s"] == 60 and 0 < d["expires_in_s"] <= 60
    seen_before = listed[1]["last_seen_ns"]
    answer = phone.ok("heartbeat")
    assert answer["device_id"] == phone.device_id and answer["blocks"] == 1
    assert answer["last_seen_ns"] > seen_before
    assert devices_of(server, alice)[1]["last_seen_ns"] == answer["last_seen_ns"]


def test_device_name_defaults_to_the_device_header(server: ServerProcess, alice: User) -> None:
    status, answer = server.request("POST", "/v1/devices", alice, {})
    assert status == 201, answer
    assert devices_of(server, alice)[0]["device_name"] == "test"  # tests.support's header


def test_blocks_added_and_removed_in_batches(server: ServerProcess, alice: User) -> None:
    ids = [bid(i) for i in range(25_000)]
    dev = Dev(server, alice, "big", ids[:10_000])
    for start in range(10_000, 25_000, 10_000):
        answer = dev.ok("blocks", add=ids[start : start + 10_000])
        assert answer["added"] == len(ids[start : start + 10_000])
    assert devices_of(server, alice)[0]["blocks"] == 25_000
    answer = dev.ok("blocks", add=[ids[0], bid("new")], remove=ids[100:200])
    assert answer == {"added": 1, "removed": 100, "blocks": 24_901}
    other = Dev(server, alice, "other", [ids[150], ids[300]])
    status, batch = server.request(
        "POST", "/v1/devices/holders", alice, {"block_ids": [ids[150], ids[300], bid("nobody")]}
    )
    assert status == 200
    assert batch == {
        "holders": {
            ids[150]: [other.device_id],
            ids[300]: [dev.device_id, other.device_id],
            bid("nobody"): [],
        }
    }
    status, err = server.request("POST", "/v1/devices", alice, {"blocks": ids[:10_001]})
    assert status == 400 and err["error"] == "bad_request" and "10000" in err["message"]


def test_one_account_never_sees_anothers_devices(
    server: ServerProcess, alice: User, bob: User
) -> None:
    secret = bid("alice's")
    a = Dev(server, alice, "alice-laptop", [secret])
    b = Dev(server, bob, "bob-laptop", [])
    assert b.device_id == 1 == a.device_id  # ids are per account
    assert [d["device_name"] for d in devices_of(server, bob)] == ["bob-laptop"]
    assert holders(server, bob, secret) == []
    assert b.request(secret) == []
    assert holders(server, alice, secret) == [1]
    # Bob cannot act as alice's device, even knowing its id and session.
    status, err = server.request("POST", "/v1/devices/1/heartbeat", bob, {"session": a.session})
    assert status == 404 and err["error"] == "not_found"
    status, _ = server.request("POST", "/v1/devices/1/leave", bob, {"session": a.session})
    assert status == 404
    assert [d["device_name"] for d in devices_of(server, alice)] == ["alice-laptop"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/devices"),
        ("POST", "/v1/devices"),
        ("POST", "/v1/devices/holders"),
        ("GET", f"/v1/devices/holders/{bid(1)}"),
        ("POST", "/v1/devices/1/blocks"),
        ("POST", "/v1/devices/1/heartbeat"),
        ("POST", "/v1/devices/1/leave"),
        ("POST", "/v1/devices/1/request"),
    ],
)
def test_every_route_needs_a_token(
    server: ServerProcess, alice: User, method: str, path: str
) -> None:
    status, err = server.request(method, path, None, {} if method == "POST" else None)
    assert status == 401 and err["error"] == "unauthorized"
    status, err = server.request(
        method,
        path,
        None,
        {} if method == "POST" else None,
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert status == 401


def test_bad_input_is_a_clear_400_or_404(server: ServerProcess, alice: User) -> None:
    dev = Dev(server, alice, "d", [])
    cases: list[tuple[str, object, int, str, str]] = [
        ("/v1/devices", {"blocks": ["XYZ"]}, 400, "bad_block_id", "XYZ"),
        ("/v1/devices", {"blocks": "abc"}, 400, "bad_request", "'blocks'"),
        ("/v1/devices", {"lease_s": 0}, 400, "bad_request", "'lease_s'"),
        ("/v1/devices", {"lease_s": 3601}, 400, "bad_request", "'lease_s'"),
        ("/v1/devices", {"device_name": ""}, 400, "bad_request", "'device_name'"),
        ("/v1/devices", {"device_name": "x" * 256}, 400, "bad_request", "255"),
        ("/v1/devices", {"colour": "red"}, 400, "bad_request", "colour"),
        ("/v1/devices", [1], 400, "bad_request", "JSON object"),
        (f"/v1/devices/{dev.device_id}/heartbeat", {}, 400, "bad_request", "'session'"),
        (f"/v1/devices/{dev.device_id}/heartbeat", {"session": 5}, 400, "bad_request", "'session'"),
        (
            f"/v1/devices/{dev.device_id}/heartbeat",
            {"session": "nope"},
            404,
            "not_found",
            "join again",
        ),
        ("/v1/devices/7/heartbeat", {"session": dev.session}, 404, "not_found", "device 7"),
        (
            f"/v1/devices/{dev.device_id}/request",
            {"session": dev.session},
            400,
            "bad_request",
            "'block_id'",
        ),
        (
            f"/v1/devices/{dev.device_id}/request",
            {"session": dev.session, "block_id": "a" * 63},
            400,
            "bad_block_id",
            "64",
        ),
        (
            f"/v1/devices/{dev.device_id}/blocks",
            {"session": dev.session, "add": [1]},
            400,
            "bad_block_id",
            "64",
        ),
        ("/v1/devices/holders", {}, 400, "bad_request", "'block_ids'"),
    ]
    for path, body, want_status, want_code, in_message in cases:
        status, err = server.request("POST", path, alice, body)
        assert (status, err.get("error")) == (want_status, want_code), (path, body, err)
        assert in_message in err["message"], (path, body, err)
    status, err = server.request("GET", "/v1/devices/holders/nothex", alice)
    assert status == 400 and err["error"] == "bad_block_id"
    # Nothing above changed the registry.
    assert [(d["device_id"], d["blocks"]) for d in devices_of(server, alice)] == [(1, 0)]


@BOTH
def test_a_device_that_stops_heartbeating_expires_and_its_id_is_reused(
    server: ServerProcess, alice: User
) -> None:
    keeper = Dev(server, alice, "keeper", [bid(1)], lease_s=1)
    quiet = Dev(server, alice, "quiet", [bid(1), bid(2)], lease_s=1)
    assert holders(server, alice, bid(1)) == [1, 2]
    start = time.monotonic()
    while time.monotonic() - start < 2.5:  # > 2 leases: only the keeper heartbeats
        assert keeper.ok("heartbeat")["blocks"] == 1
        time.sleep(0.2)
    assert [d["device_name"] for d in devices_of(server, alice)] == ["keeper"]
    assert holders(server, alice, bid(1)) == [1]
    assert holders(server, alice, bid(2)) == []
    status, err = quiet.call("heartbeat")
    assert status == 404 and "join again" in err["message"]
    assert Dev(server, alice, "new", []).device_id == quiet.device_id  # the freed id, reused


@BOTH
def test_restart_keeps_live_ids_until_their_lease_runs_out(
    server: ServerProcess, alice: User
) -> None:
    a = Dev(server, alice, "a", [bid(1), bid(2)])
    b = Dev(server, alice, "b", [bid(2)], lease_s=2)
    c = Dev(server, alice, "c", [])
    c.ok("leave")
    server.stop()
    server.start()
    listed = devices_of(server, alice)
    assert [(d["device_id"], d["device_name"], d["blocks"]) for d in listed] == [
        (1, "a", 0),
        (2, "b", 0),
    ]
    fresh = Dev(server, alice, "fresh", [])
    assert fresh.device_id == 3  # 1 and 2 may still be alive: not handed out
    # A restored device carries on with its session; `blocks: 0` tells it to re-send them.
    assert a.ok("heartbeat")["blocks"] == 0
    assert a.ok("blocks", add=[bid(1), bid(2)])["blocks"] == 2
    assert holders(server, alice, bid(2)) == [1]
    # b never comes back: it expires after its lease and its id is free again.
    wait_until(
        "device 2 to expire", lambda: [d["device_id"] for d in devices_of(server, alice)] == [1, 3]
    )
    assert Dev(server, alice, "later", []).device_id == 2
    status, _ = b.call("heartbeat")
    assert status == 404


@BOTH
def test_state_survives_kill_9_of_the_server(server: ServerProcess, alice: User) -> None:
    a = Dev(server, alice, "a", [])
    Dev(server, alice, "b", [])
    a.ok("leave")
    server.kill9()
    server.start()
    assert [(d["device_id"], d["device_name"]) for d in devices_of(server, alice)] == [(2, "b")]
    assert Dev(server, alice, "c", []).device_id == 1


def test_openapi_documents_every_device_route(server: ServerProcess, alice: User) -> None:
    status, doc = server.request("GET", "/v1/openapi.json", alice)
    assert status == 200
    ops = {
        (path, method.upper()): op["operationId"]
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    for path, method, name in [
        ("/v1/devices", "POST", "join_device"),
        ("/v1/devices", "GET", "list_devices"),
        ("/v1/devices/holders", "POST", "holders_of_blocks"),
        ("/v1/devices/holders/{block_id}", "GET", "holders_of_block"),
        ("/v1/devices/{device_id}/blocks", "POST", "change_device_blocks"),
        ("/v1/devices/{device_id}/heartbeat", "POST", "device_heartbeat"),
        ("/v1/devices/{device_id}/leave", "POST", "leave_device"),
        ("/v1/devices/{device_id}/request", "POST", "request_block"),
    ]:
        assert ops.get((path, method)) == name, (path, method)


# -- the registry itself, with a controlled clock and a real SQLite store ------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def open_registry(tmp_path: Path, clock: FakeClock) -> DeviceRegistry:
    store = SqliteDeviceStore(tmp_path / "devices.sqlite3")
    await store.open()
    registry = DeviceRegistry(store, default_lease_s=10, clock=clock)
    await registry.restore()
    return registry


@pytest.mark.asyncio
async def test_leases_expire_exactly_and_heartbeats_do_not_pile_up(
    tmp_path: Path, clock: FakeClock
) -> None:
    registry = await open_registry(tmp_path, clock)
    try:
        a = await registry.join(7, "a", [bid(1)], None)
        b = await registry.join(7, "b", [bid(1)], 30)
        for _ in range(1000):  # many calls within the lease: still one heap entry per device
            clock.now += 0.009
            await registry.heartbeat(7, a.device_id, a.session)
        assert registry.statistics() == {"accounts": 1, "devices": 2, "pending_deadlines": 2}
        clock.now += 9.9  # a: 9.9 s after its last heartbeat, lease 10 s
        assert await registry.expire() == []
        clock.now += 0.2
        assert await registry.expire() == [(7, a.device_id)]
        assert registry.holders(7, [bid(1)]) == {bid(1): [b.device_id]}
        assert [r.device_id for r in await registry.store.load()] == [b.device_id]
        clock.now += 30
        assert await registry.expire() == [(7, b.device_id)]
        assert registry.statistics() == {"accounts": 0, "devices": 0, "pending_deadlines": 0}
        assert await registry.store.load() == []
    finally:
        await registry.store.close()


@pytest.mark.asyncio
async def test_a_late_delete_never_removes_a_newer_device_with_the_same_id(
    tmp_path: Path, clock: FakeClock
) -> None:
    registry = await open_registry(tmp_path, clock)
    try:
        old = await registry.join(1, "old", [], None)
        await registry.leave(1, old.device_id, old.session)
        new = await registry.join(1, "new", [], None)
        assert new.device_id == old.device_id and new.session != old.session
        await registry.store.delete(1, old.device_id, old.session)  # e.g. an expiry running late
        assert [(r.device_id, r.device_name) for r in await registry.store.load()] == [(1, "new")]
    finally:
        await registry.store.close()


@pytest.mark.asyncio
async def test_restore_claims_persisted_ids_with_empty_block_sets(
    tmp_path: Path, clock: FakeClock
) -> None:
    registry = await open_registry(tmp_path, clock)
    records = [await registry.join(3, f"d{i}", [bid(i)], None) for i in range(4)]
    await registry.leave(3, records[1].device_id, records[1].session)
    await registry.store.close()
    again = await open_registry(tmp_path, clock)
    try:
        listed = again.list_devices(3)
        assert [(d["device_id"], d["device_name"], d["blocks"]) for d in listed] == [
            (1, "d0", 0),
            (3, "d2", 0),
            (4, "d3", 0),
        ]
        assert (await again.join(3, "fresh", [], None)).device_id == 2
        clock.now += 5
        assert (await again.heartbeat(3, 3, records[2].session)).device_name == "d2"
        clock.now += 5.5  # one lease after the restart: only device 3 came back
        assert sorted(await again.expire()) == [(3, 1), (3, 2), (3, 4)]
        assert [d["device_id"] for d in again.list_devices(3)] == [3]
    finally:
        await again.store.close()


@pytest.mark.asyncio
async def test_join_leave_churn_does_not_grow_the_deadline_heap(
    tmp_path: Path, clock: FakeClock
) -> None:
    registry = await open_registry(tmp_path, clock)
    try:
        stay = await registry.join(1, "stay", [], 3600)
        for _ in range(2000):
            churn = await registry.join(1, "churn", [bid(1)], 3600)
            await registry.leave(1, churn.device_id, churn.session)
            assert registry.statistics()["pending_deadlines"] <= 2 * 2 + 64
        assert registry.statistics()["devices"] == 1
        clock.now += 3599
        await registry.heartbeat(1, stay.device_id, stay.session)
        clock.now += 2
        assert await registry.expire() == []  # stale entries due, the live device re-armed
        assert registry.statistics() == {"accounts": 1, "devices": 1, "pending_deadlines": 1}
    finally:
        await registry.store.close()
