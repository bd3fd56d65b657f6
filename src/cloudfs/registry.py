"""This device in its account's device registry (`/v1/devices`), and the CLI's `devices`/`holders`.

`RegistryTask` runs in the mount's root nursery: it joins with the block ids in the local cache (in
batches), reports what the cache gains and evicts, heartbeats within the lease, re-joins when the
server forgot it (lease expired, server restarted), and leaves on unmount. Registry trouble never
stops the mount: the task logs and tries again later.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import trio

from cloudfs import errors
from cloudfs.api import ApiClient
from cloudfs.cache import LocalCache
from cloudfs.clitools import CliError, UsageError, connection, fail, mount_of, run_api, walk
from cloudfs.sizes import format_size

log = logging.getLogger(__name__)

# Block ids per call: the server's limit for join, blocks and holders.
BATCH = 10_000
# Environment variable naming the lease (seconds) a mount asks for; the server's default is 60.
LEASE_ENV = "CLOUDFS_DEVICE_LEASE_S"
# Budget for one registry call's retries: short, the next round tries again anyway.
CALL_BUDGET_S = 2.0


def batches(items: Iterable[str], size: int = BATCH) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class DevicesApi:
    """The `/v1/devices` routes over an `ApiClient` (its retries and error translation)."""

    def __init__(self, api: ApiClient, budget_s: float | None = CALL_BUDGET_S) -> None:
        self.api = api
        self.budget_s = budget_s

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        return await self.api._json("POST", path, budget_s=self.budget_s, json_body=body)

    async def join(self, device_name: str, blocks: list[str], lease_s: int | None) -> Any:
        body: dict[str, Any] = {"device_name": device_name, "blocks": blocks}
        if lease_s is not None:
            body["lease_s"] = lease_s
        return await self._post("/v1/devices", body)

    async def change(self, device_id: int, session: str, add: list[str], remove: list[str]) -> Any:
        return await self._post(
            f"/v1/devices/{device_id}/blocks", {"session": session, "add": add, "remove": remove}
        )

    async def heartbeat(self, device_id: int, session: str) -> Any:
        return await self._post(f"/v1/devices/{device_id}/heartbeat", {"session": session})

    async def leave(self, device_id: int, session: str) -> None:
        await self._post(f"/v1/devices/{device_id}/leave", {"session": session})

    async def request(self, device_id: int, session: str, block_id: str) -> list[int]:
        answer = await self._post(
            f"/v1/devices/{device_id}/request", {"session": session, "block_id": block_id}
        )
        return list(answer["holders"])

    async def list_devices(self) -> list[dict[str, Any]]:
        answer = await self.api._json("GET", "/v1/devices", budget_s=self.budget_s)
        return list(answer["devices"])

    async def holders(self, block_ids: Iterable[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for batch in batches(dict.fromkeys(block_ids)):
            answer = await self._post("/v1/devices/holders", {"block_ids": batch})
            out.update(answer["holders"])
        return out


def cached_block_ids(cache: LocalCache) -> set[str]:
    """Every block id in the local cache (clean and not yet uploaded). One read transaction;
    safe in a worker thread."""
    with cache.env.begin(db=cache.binfo) as txn:
        return {bytes(key).hex() for key in txn.cursor().iternext(keys=True, values=False)}


def lease_from_env() -> int | None:
    raw = os.environ.get(LEASE_ENV)
    if not raw:
        return None
    try:
        return max(1, int(raw))
    except ValueError:
        log.warning("%s=%r is not an integer; using the server's default lease", LEASE_ENV, raw)
        return None


class RegistryTask:
    """Keeps this device's entry in the registry equal to the cache's block ids.

    `scan` returns the current block ids (by default: read the LMDB cache in a worker thread).
    Changes are sent at most every `poll_s`; a heartbeat goes out when nothing else was sent for
    a third of the lease. Never raises out of `run` except `Cancelled`.
    """

    def __init__(
        self,
        api: ApiClient,
        cache: LocalCache | None,
        device_name: str,
        lease_s: int | None = None,
        poll_s: float = 1.0,
        scan: Callable[[], Awaitable[set[str]]] | None = None,
    ) -> None:
        self.devices = DevicesApi(api)
        self.device_name = device_name
        self.lease_s = lease_s if lease_s is not None else lease_from_env()
        self.poll_s = poll_s
        if scan is None:
            assert cache is not None
            local = cache

            async def scan_cache() -> set[str]:
                return await trio.to_thread.run_sync(cached_block_ids, local)

            scan = scan_cache
        self._scan = scan
        self.device_id: int | None = None
        self._session = ""
        self._granted_lease_s = 60
        self._reported: set[str] = set()
        self._last_call = -math.inf
        self.joins = 0
        self.last_error: str | None = None
        self._own_api: ApiClient | None = None

    @classmethod
    def connect(
        cls, server: str, token: str, device_name: str, cache: LocalCache, **kwargs: Any
    ) -> RegistryTask:
        """A task with its own HTTP client (closed when `run` ends): registry traffic neither
        waits for the data plane's connections nor counts in its request statistics."""
        api = ApiClient(server, token, device_name)
        task = cls(api, cache, device_name, **kwargs)
        task._own_api = api
        return task

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay = self.poll_s
        try:
            while True:
                try:
                    if self.device_id is None:
                        await self._join()
                    else:
                        await self._sync()
                    self.last_error = None
                    delay = self.poll_s
                except errors.NodeNotFoundError as exc:
                    if self.device_id is not None:  # lease expired or server forgot us: rejoin
                        log.info("the registry forgot device %s; joining again", self.device_id)
                        self.device_id = None
                        continue
                    self.last_error = str(exc)  # the join itself: no registry on this server?
                    log.warning("device registry: %s (retrying in %.1f s)", exc, delay)
                    delay = min(delay * 2, 30.0)
                except errors.CloudfsError as exc:
                    self.last_error = str(exc)
                    log.warning("device registry: %s (retrying in %.1f s)", exc, delay)
                    delay = min(delay * 2, 30.0)
                await trio.sleep(delay)
        finally:
            await self._leave()
            if self._own_api is not None:
                with trio.CancelScope(shield=True):
                    await self._own_api.aclose()

    async def _join(self) -> None:
        snapshot = await self._scan()
        ordered = sorted(snapshot)
        answer = await self.devices.join(self.device_name, ordered[:BATCH], self.lease_s)
        self.device_id, self._session = int(answer["device_id"]), str(answer["session"])
        self._granted_lease_s = int(answer["lease_s"])
        self._reported = set(ordered[:BATCH])
        self._last_call = trio.current_time()
        self.joins += 1
        log.info(
            "joined the device registry as device %d (%s, lease %d s, %d blocks)",
            self.device_id,
            self.device_name,
            self._granted_lease_s,
            len(snapshot),
        )
        await self._send(set(ordered[BATCH:]), set())

    async def _sync(self) -> None:
        snapshot = await self._scan()
        sent = await self._send(snapshot - self._reported, self._reported - snapshot)
        if sent or trio.current_time() - self._last_call < self._granted_lease_s / 3:
            return
        assert self.device_id is not None
        answer = await self.devices.heartbeat(self.device_id, self._session)
        self._last_call = trio.current_time()
        if int(answer["blocks"]) != len(self._reported):
            # The server lost our blocks (it restarted): send them all again.
            log.info(
                "registry has %s of our %d blocks; sending them again",
                answer["blocks"],
                len(self._reported),
            )
            missing = self._reported
            self._reported = set()
            await self._send(missing, set())

    async def _send(self, add: set[str], remove: set[str]) -> bool:
        """Report changes in batches; `_reported` follows each acknowledged batch."""
        assert self.device_id is not None
        sent = False
        add_list, remove_list = sorted(add), sorted(remove)
        while add_list or remove_list:
            add_batch, add_list = add_list[:BATCH], add_list[BATCH:]
            room = BATCH - len(add_batch)
            remove_batch, remove_list = remove_list[:room], remove_list[room:]
            await self.devices.change(self.device_id, self._session, add_batch, remove_batch)
            self._reported.update(add_batch)
            self._reported.difference_update(remove_batch)
            self._last_call = trio.current_time()
            sent = True
        return sent

    async def _leave(self) -> None:
        if self.device_id is None:
            return
        device_id, self.device_id = self.device_id, None
        with trio.CancelScope(shield=True), trio.move_on_after(3.0):
            try:
                await self.devices.leave(device_id, self._session)
                log.info("left the device registry (device %d)", device_id)
            except errors.CloudfsError as exc:
                log.warning("could not leave the device registry: %s (it expires)", exc)

    async def request(self, block_id: str) -> list[int]:
        """Holders of `block_id` before the call; this device is recorded as holding it too.

        Raises: NodeNotFoundError if not joined, and the ApiClient's errors.
        """
        if self.device_id is None:
            raise errors.NodeNotFoundError("this device has not joined the registry yet")
        return await self.devices.request(self.device_id, self._session, block_id)

    def statistics(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "blocks_reported": len(self._reported),
            "lease_s": self._granted_lease_s,
            "joins": self.joins,
            "last_error": self.last_error,
        }


# ---- CLI: `cloudfs devices`, `cloudfs holders PATH` ----------------------------------------------
def add_parsers(sub: Any) -> None:
    """Add the `devices` and `holders` subcommands to cli.py's subparsers."""
    d = sub.add_parser("devices", help="list the account's devices (id, name, last seen, blocks)")
    d.add_argument(
        "--server", help="server URL (default: the mount's, CLOUDFS_SERVER, or `cloudfs login`)"
    )
    d.add_argument("--token", help="API token (or CLOUDFS_TOKEN, or `cloudfs login`)")
    d.add_argument("--json", action="store_true", help="print the server's JSON")
    h = sub.add_parser("holders", help="show which devices hold each block of a file")
    h.add_argument("path", help="a file in a mount (or, with --server, a path in the drive)")
    h.add_argument(
        "--server", help="server URL (default: the mount's, CLOUDFS_SERVER, or `cloudfs login`)"
    )
    h.add_argument("--token", help="API token (or CLOUDFS_TOKEN, or `cloudfs login`)")
    h.add_argument("--json", action="store_true", help="print JSON")


def _ago(time_ns: int) -> str:
    seconds = max(0.0, time.time() - time_ns / 1e9)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(time_ns / 1e9))


def render_devices(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "no devices joined"
    rows = [("ID", "NAME", "LAST SEEN", "BLOCKS")]
    rows += [
        (str(d["device_id"]), d["device_name"], _ago(d["last_seen_ns"]), str(d["blocks"]))
        for d in devices
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
        for r in rows
    )


def cmd_devices(args: argparse.Namespace) -> int:
    """`cloudfs devices`: the account's joined devices."""
    try:
        server, token = connection(args, None)
    except CliError as exc:
        return fail(exc)

    async def work(api: ApiClient) -> int:
        devices = await DevicesApi(api, budget_s=None).list_devices()
        print(json.dumps(devices, indent=2) if args.json else render_devices(devices))
        return 0

    return run_api(server, token, work)


def cmd_holders(args: argparse.Namespace) -> int:
    """`cloudfs holders PATH`: for each block of the file, the devices holding it."""
    found = mount_of(args.path)
    if found is None and not args.server:
        return fail(
            UsageError(f"{args.path} is not inside a running cloudfs mount (or give --server)")
        )
    record, drive_path = found if found is not None else (None, args.path)
    try:
        server, token = connection(args, record)
    except CliError as exc:
        return fail(exc)

    async def work(api: ApiClient) -> int:
        try:
            node = await walk(api, drive_path, blocks=True)
        except errors.NodeNotFoundError:
            return fail(f"{args.path}: no such file on the server (not yet committed?)")
        if node.kind != "file":
            return fail(f"{args.path} is a {'directory' if node.kind == 'dir' else node.kind}")
        devices_api = DevicesApi(api, budget_s=None)
        names = {d["device_id"]: d["device_name"] for d in await devices_api.list_devices()}
        blocks = list(node.blocks or ())
        holders = await devices_api.holders(block_id for block_id, _ in blocks)
        rows: list[dict[str, Any]] = []
        offset = 0
        for index, (block_id, length) in enumerate(blocks):
            rows.append(
                {
                    "index": index,
                    "offset": offset,
                    "length": length,
                    "block_id": block_id,
                    "holders": holders.get(block_id, []),
                }
            )
            offset += length
        if args.json:
            print(
                json.dumps(
                    {
                        "path": drive_path,
                        "version": node.version,
                        "blocks": rows,
                        "devices": {str(k): v for k, v in names.items()},
                    },
                    indent=2,
                )
            )
            return 0
        print(f"{drive_path}: {len(rows)} blocks, {format_size(node.size)}, version {node.version}")
        for row in rows:
            who = ", ".join(f"{h} ({names.get(h, '?')})" for h in row["holders"]) or "none"
            print(
                f"  #{row['index']:<5} {row['block_id'][:16]}  @{row['offset']:<12} "
                f"{format_size(row['length']):>10}  {who}"
            )
        return 0

    return run_api(server, token, work)


def main(argv: list[str] | None = None) -> int:
    """Run `devices`/`holders` alone (`python -m cloudfs.registry devices …`)."""
    parser = argparse.ArgumentParser(prog="cloudfs")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    return cmd_devices(args) if args.command == "devices" else cmd_holders(args)


if __name__ == "__main__":
    sys.exit(main())
