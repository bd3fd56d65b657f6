"""Keyed locks and single-flight calls for trio (layer 1).

A `KeyedLock` serialises work per key (per inode) and forgets idle keys; `SingleFlight` runs one
coroutine per key at a time and gives every concurrent caller its result (or its exception).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")


class KeyedLock:
    """One `trio.Lock` per key, created on demand and dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock_, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock_, users - 1)

    def locked(self, key: Hashable) -> bool:
        entry = self._locks.get(key)
        return entry is not None and entry[0].locked()

    def statistics(self) -> dict[str, int]:
        return {"keys": len(self._locks)}


class _Flight(Generic[T]):
    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: T | None = None
        self.error: Exception | None = None
        self.completed = False


class SingleFlight(Generic[T]):
    """Concurrent `run(key, fn)` calls with the same key share one execution of `fn`."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[Any]] = {}

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        while (flight := self._flights.get(key)) is not None:
            await flight.done.wait()
            if flight.error is None and flight.completed:
                return flight.result  # type: ignore[return-value]
            if flight.error is not None:
                raise flight.error
            # the leader was cancelled: try again, possibly as the new leader
        flight = _Flight[T]()
        self._flights[key] = flight
        try:
            flight.result = await fn()
            flight.completed = True
            return flight.result
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    def in_flight(self, key: Hashable) -> bool:
        return key in self._flights
