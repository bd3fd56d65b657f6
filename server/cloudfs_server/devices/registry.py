"""The device registry of every account: who is joined, with which blocks, until when.

In memory: one `FileSharing` per account (device ids, block → holders) plus each device's name,
session and lease deadline. Persistent (through a `DeviceStore`): the device list only, so after
a restart no id of a device that may still be alive is handed out again; such devices come back
with empty block sets and re-send them (the heartbeat answer's `blocks` count tells them).

No method blocks; methods that persist await the store. Between awaits nothing else runs on the
loop, and every in-memory change is made before the first await of a call, so concurrent calls
always see a consistent registry.

With a `shared` store (PostgreSQL: several servers on one database) the store is the truth for
the device list, sessions and leases: every operation first re-reads the account's rows
(`sync`), ids are taken with a conditional insert (`claim`; on a race the loser takes the next
free id) and a lease expires only if no server recorded a call within it. Holder sets stay per
server (each knows the blocks its own callers reported): an answer can miss a holder known to
another server, never name a device that does not hold the block, so peers fall back to the
server for what they are not told. Routing an account's calls to one server gives full answers.
"""

from __future__ import annotations

import heapq
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cloudfs.peers import FileSharing
from cloudfs_server.devices.store import DeviceRecord, DeviceStore
from cloudfs_server.errors import NotFoundError, StoreUnavailableError, TooLargeError

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 60
MIN_LEASE_S = 1
MAX_LEASE_S = 3600
# Bounds on one account's memory: devices and blocks per device.
MAX_DEVICES = 1000
MAX_BLOCKS_PER_DEVICE = 1_000_000
# Shared stores: a join that keeps losing the race for a free id gives up after this many tries.
JOIN_ATTEMPTS = 16


@dataclass
class Device:
    record: DeviceRecord
    deadline: float  # monotonic time after which the device is removed


@dataclass
class Account:
    sharing: FileSharing
    devices: dict[int, Device]


class DeviceRegistry:
    """Every account's devices. `clock` (monotonic seconds) is injectable for tests."""

    def __init__(
        self,
        store: DeviceStore,
        default_lease_s: int = DEFAULT_LEASE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.default_lease_s = default_lease_s
        self.clock = clock
        self._accounts: dict[int, Account] = {}
        # One entry (deadline, user_id, device_id, session) per joined device. A heartbeat only
        # moves `Device.deadline` later; when an entry comes due it is checked against the device
        # and pushed again with the current deadline if the device is still alive. Entries of
        # devices that left stay until due, or until the heap is rebuilt when they outnumber the
        # live ones (so join/leave churn cannot grow it).
        self._deadlines: list[tuple[float, int, int, str]] = []
        self._live = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def restore(self) -> int:
        """Load the persisted devices: their ids are taken again, with empty block sets and a
        fresh lease to come back in. Returns how many were restored."""
        records = await self.store.load()
        now = self.clock()
        for record in records:
            account = self._account(record.user_id)
            account.sharing.claim(record.device_id)
            self._track(account, record, now)
        return len(records)

    def _account(self, user_id: int) -> Account:
        account = self._accounts.get(user_id)
        if account is None:
            account = self._accounts[user_id] = Account(FileSharing(0), {})
        return account

    def _track(
        self, account: Account, record: DeviceRecord, now: float, deadline: float | None = None
    ) -> Device:
        device = Device(record, now + record.lease_s if deadline is None else deadline)
        account.devices[record.device_id] = device
        self._live += 1
        heapq.heappush(
            self._deadlines, (device.deadline, record.user_id, record.device_id, record.session)
        )
        if len(self._deadlines) > 2 * self._live + 64:
            self._deadlines = [
                (d.deadline, d.record.user_id, d.record.device_id, d.record.session)
                for a in self._accounts.values()
                for d in a.devices.values()
            ]
            heapq.heapify(self._deadlines)
        return device

    def _device(self, user_id: int, device_id: int, session: str) -> Device:
        account = self._accounts.get(user_id)
        device = account.devices.get(device_id) if account else None
        # compare_digest refuses non-ASCII str (TypeError): compare the UTF-8 bytes.
        given = session.encode("utf-8", "surrogatepass")
        if device is None or not secrets.compare_digest(device.record.session.encode(), given):
            raise NotFoundError(
                f"device {device_id} is not joined with this session (it left, or its lease "
                "expired); join again",
                device_id=device_id,
            )
        return device

    def _seen(self, device: Device) -> None:
        record = device.record
        record.last_seen_ns = time.time_ns()
        device.deadline = self.clock() + record.lease_s

    # -- shared stores ---------------------------------------------------------------------------

    async def sync(self, user_id: int, caller: tuple[int, str] | None = None) -> None:
        """Shared stores: record a call of `caller` (device_id, session), then make this server's
        view of the account match the store (devices that joined, left or expired through other
        servers). A no-op for a store that only this server changes."""
        if not self.store.shared:
            return
        if caller is not None:
            await self.store.touch(user_id, caller[0], caller[1], time.time_ns())
        self._reconcile(user_id, await self.store.load_user(user_id))

    def _reconcile(self, user_id: int, records: list[DeviceRecord]) -> None:
        now, now_ns = self.clock(), time.time_ns()
        stored = {r.device_id: r for r in records}
        account = self._accounts.get(user_id)
        if account is not None:
            for device_id, device in list(account.devices.items()):
                row = stored.get(device_id)
                if row is None or row.session != device.record.session:
                    self._drop(user_id, device_id)  # left or expired elsewhere, or id reused
        if not stored:
            return
        account = self._account(user_id)
        for device_id, row in stored.items():
            deadline = now + row.lease_s - max(0, now_ns - row.last_seen_ns) / 1e9
            known = account.devices.get(device_id)
            if known is None:
                account.sharing.claim(device_id)  # joined through another server: no blocks here
                self._track(account, row, now, deadline)
            else:
                known.record.last_seen_ns = max(known.record.last_seen_ns, row.last_seen_ns)
                known.deadline = max(known.deadline, deadline)

    async def _join_shared(
        self, user_id: int, device_name: str, blocks: list[str], lease: int
    ) -> DeviceRecord:
        for _ in range(JOIN_ATTEMPTS):
            await self.sync(user_id)
            account = self._account(user_id)
            if len(account.devices) >= MAX_DEVICES:
                raise TooLargeError(f"an account can have at most {MAX_DEVICES} joined devices")
            device_id = account.sharing.join(blocks)
            now_ns = time.time_ns()
            record = DeviceRecord(
                user_id, device_id, device_name, secrets.token_urlsafe(16), now_ns, now_ns, lease
            )
            self._track(account, record, self.clock())
            try:
                claimed = await self.store.claim(record)
            except BaseException:
                self._undo_join(record)
                raise
            if claimed:
                return record
            self._undo_join(record)  # another server took this id first: sync and try the next
        raise StoreUnavailableError("too many devices joined this account at once; retry")

    def _undo_join(self, record: DeviceRecord) -> None:
        current = self._accounts.get(record.user_id)
        device = current.devices.get(record.device_id) if current else None
        if device is not None and device.record is record:
            self._drop(record.user_id, record.device_id)

    # -- the routes' operations ------------------------------------------------------------------

    async def join(
        self, user_id: int, device_name: str, blocks: list[str], lease_s: int | None
    ) -> DeviceRecord:
        """A new device of `user_id` holding `blocks`; it gets the smallest free device id.

        Raises: TooLargeError (too many devices or blocks).
        """
        if self.store.shared:
            if len(blocks) > MAX_BLOCKS_PER_DEVICE:
                raise TooLargeError(f"a device can report at most {MAX_BLOCKS_PER_DEVICE} blocks")
            lease = self.default_lease_s if lease_s is None else lease_s
            record = await self._join_shared(user_id, device_name, blocks, lease)
            log.info("user %d: device %d (%r) joined", user_id, record.device_id, device_name)
            return record
        account = self._account(user_id)
        if len(account.devices) >= MAX_DEVICES:
            raise TooLargeError(f"an account can have at most {MAX_DEVICES} joined devices")
        if len(blocks) > MAX_BLOCKS_PER_DEVICE:
            raise TooLargeError(f"a device can report at most {MAX_BLOCKS_PER_DEVICE} blocks")
        lease = self.default_lease_s if lease_s is None else lease_s
        device_id = account.sharing.join(blocks)
        now_ns = time.time_ns()
        record = DeviceRecord(
            user_id, device_id, device_name, secrets.token_urlsafe(16), now_ns, now_ns, lease
        )
        self._track(account, record, self.clock())
        try:
            await self.store.insert(record)
        except BaseException:  # not persisted: undo, so the id is not held by a ghost
            current = self._accounts.get(user_id)
            device = current.devices.get(device_id) if current else None
            if device is not None and device.record is record:
                self._drop(user_id, device_id)
            raise
        log.info(
            "user %d: device %d (%r) joined with %d blocks",
            user_id,
            device_id,
            device_name,
            len(blocks),
        )
        return record

    async def change_blocks(
        self, user_id: int, device_id: int, session: str, add: list[str], remove: list[str]
    ) -> tuple[int, int, int]:
        """The device gained `add` and evicted `remove` (remove applies last).

        Returns (added, removed, blocks held now). Raises: NotFoundError, TooLargeError.
        """
        await self.sync(user_id, (device_id, session))
        device = self._device(user_id, device_id, session)
        sharing = self._accounts[user_id].sharing
        if sharing.chunk_count(device_id) + len(add) > MAX_BLOCKS_PER_DEVICE:
            raise TooLargeError(f"a device can hold at most {MAX_BLOCKS_PER_DEVICE} blocks")
        added = sharing.add_chunks(device_id, add)
        removed = sharing.remove_chunks(device_id, remove)
        self._seen(device)
        return added, removed, sharing.chunk_count(device_id)

    async def heartbeat(self, user_id: int, device_id: int, session: str) -> DeviceRecord:
        """Extend the lease. Raises: NotFoundError."""
        await self.sync(user_id)
        device = self._device(user_id, device_id, session)
        self._seen(device)
        await self.store.touch(user_id, device_id, session, device.record.last_seen_ns)
        return device.record

    async def leave(self, user_id: int, device_id: int, session: str) -> None:
        """The device leaves; its id is free at once. Raises: NotFoundError."""
        await self.sync(user_id)
        self._device(user_id, device_id, session)
        self._drop(user_id, device_id)
        await self.store.delete(user_id, device_id, session)
        log.info("user %d: device %d left", user_id, device_id)

    def request(self, user_id: int, device_id: int, session: str, block_id: str) -> list[int]:
        """`FileSharing.request`: holders before the call; the device gains the block if any.

        Raises: NotFoundError.
        """
        device = self._device(user_id, device_id, session)
        sharing = self._accounts[user_id].sharing
        if not sharing.owns(device_id, block_id) and (
            sharing.chunk_count(device_id) >= MAX_BLOCKS_PER_DEVICE
        ):
            raise TooLargeError(f"a device can hold at most {MAX_BLOCKS_PER_DEVICE} blocks")
        self._seen(device)
        return sharing.request(device_id, block_id)

    def blocks_held(self, user_id: int, device_id: int) -> int:
        return self._accounts[user_id].sharing.chunk_count(device_id)

    def list_devices(self, user_id: int) -> list[dict[str, Any]]:
        """The account's joined devices, by id."""
        account = self._accounts.get(user_id)
        if account is None:
            return []
        now = self.clock()
        return [
            {
                "device_id": device_id,
                "device_name": device.record.device_name,
                "joined_ns": device.record.joined_ns,
                "last_seen_ns": device.record.last_seen_ns,
                "lease_s": device.record.lease_s,
                "expires_in_s": round(max(0.0, device.deadline - now), 3),
                "blocks": account.sharing.chunk_count(device_id),
            }
            for device_id, device in sorted(account.devices.items())
        ]

    def holders(self, user_id: int, block_ids: Iterable[str]) -> dict[str, list[int]]:
        """For each block id: ascending ids of the account's devices holding it."""
        account = self._accounts.get(user_id)
        if account is None:
            return {block_id: [] for block_id in block_ids}
        return {block_id: account.sharing.holders(block_id) for block_id in block_ids}

    # -- leases ----------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    async def expire(self) -> list[tuple[int, int]]:
        """Remove every device whose lease has run out; returns their (user_id, device_id)."""
        if self.store.shared:
            return await self._expire_shared()
        now = self.clock()
        expired: list[tuple[int, int, str]] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, user_id, device_id, session = heapq.heappop(self._deadlines)
            account = self._accounts.get(user_id)
            device = account.devices.get(device_id) if account else None
            if device is None or device.record.session != session:
                continue  # left (or expired) and maybe replaced since this entry
            if device.deadline > now:  # seen since: wait for its current deadline
                heapq.heappush(self._deadlines, (device.deadline, user_id, device_id, session))
                continue
            self._drop(user_id, device_id)
            expired.append((user_id, device_id, session))
            log.info(
                "user %d: device %d (%r) expired after its %d s lease",
                user_id,
                device_id,
                device.record.device_name,
                device.record.lease_s,
            )
        for user_id, device_id, session in expired:
            await self.store.delete(user_id, device_id, session)
        return [(user_id, device_id) for user_id, device_id, _ in expired]

    async def _expire_shared(self) -> list[tuple[int, int]]:
        """Shared stores: a device is removed only if the store agrees no server saw it within
        its lease (a conditional delete); otherwise its deadline is refreshed from the store."""
        now = self.clock()
        due: list[Device] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, user_id, device_id, session = heapq.heappop(self._deadlines)
            account = self._accounts.get(user_id)
            device = account.devices.get(device_id) if account else None
            if device is None or device.record.session != session:
                continue
            if device.deadline > now:
                heapq.heappush(self._deadlines, (device.deadline, user_id, device_id, session))
                continue
            due.append(device)
        expired: list[tuple[int, int]] = []
        for device in due:
            r = device.record
            cutoff_ns = time.time_ns() - r.lease_s * 10**9
            if await self.store.expire(r.user_id, r.device_id, r.session, cutoff_ns):
                expired.append((r.user_id, r.device_id))
                log.info("user %d: device %d expired after its %d s lease", *expired[-1], r.lease_s)
            await self.sync(r.user_id)  # drops it if gone; else it was seen elsewhere
            account = self._accounts.get(r.user_id)
            alive = account.devices.get(r.device_id) if account else None
            if alive is not None and alive.record.session == r.session:
                heapq.heappush(self._deadlines, (alive.deadline, r.user_id, r.device_id, r.session))
        return expired

    def _drop(self, user_id: int, device_id: int) -> None:
        account = self._accounts[user_id]
        del account.devices[device_id]
        self._live -= 1
        account.sharing.leave(device_id)
        if not account.devices:
            del self._accounts[user_id]  # memory proportional to accounts with live devices

    def statistics(self) -> dict[str, int]:
        return {
            "accounts": len(self._accounts),
            "devices": self._live,
            "pending_deadlines": len(self._deadlines),
        }
