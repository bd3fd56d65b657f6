"""The device registry of every account: who is joined, with which blocks, until when.

In memory: one `FileSharing` per account (device ids, block → holders) plus each device's name,
session and lease deadline. Persistent (through a `DeviceStore`): the device list only, so after
a restart no id of a device that may still be alive is handed out again; such devices come back
with empty block sets and re-send them (the heartbeat answer's `blocks` count tells them).

No method blocks; methods that persist await the store. Between awaits nothing else runs on the
loop, and every in-memory change is made before the first await of a call, so concurrent calls
always see a consistent registry.
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
from cloudfs_server.errors import NotFoundError, TooLargeError

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 60
MIN_LEASE_S = 1
MAX_LEASE_S = 3600
# Bounds on one account's memory: devices and blocks per device.
MAX_DEVICES = 1000
MAX_BLOCKS_PER_DEVICE = 1_000_000


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

    def _track(self, account: Account, record: DeviceRecord, now: float) -> Device:
        device = Device(record, now + record.lease_s)
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

    # -- the routes' operations ------------------------------------------------------------------

    async def join(
        self, user_id: int, device_name: str, blocks: list[str], lease_s: int | None
    ) -> DeviceRecord:
        """A new device of `user_id` holding `blocks`; it gets the smallest free device id.

        Raises: TooLargeError (too many devices or blocks).
        """
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
        device = self._device(user_id, device_id, session)
        self._seen(device)
        await self.store.touch(user_id, device_id, session, device.record.last_seen_ns)
        return device.record

    async def leave(self, user_id: int, device_id: int, session: str) -> None:
        """The device leaves; its id is free at once. Raises: NotFoundError."""
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
