"""Wake-ups of change-feed long-polls (`GET /v1/changes?wait=S`) after a change is committed."""

from __future__ import annotations

import asyncio
import contextlib


class ChangeNotifier:
    """Wakes long-polls of a user after a change is committed (one process only).

    Each waiting request holds a future in its user's set; a change resolves only that user's
    futures, so the cost of a change does not grow with the number of other users' long-polls.
    Held long-polls are limited per user (`max_per_user`) and in all (`max_waiting`), so one
    user holding many cannot delay the live feed of the others.
    """

    def __init__(self, max_waiting: int = 10_000, max_per_user: int = 64) -> None:
        self._generation: dict[int, int] = {}
        self._waiters: dict[int, set[asyncio.Future[None]]] = {}
        self.closing = False
        self.max_waiting = max_waiting
        self.max_per_user = max_per_user
        self.waiting = 0  # long-polls held right now (all users)

    def busy(self, user_id: int) -> bool:
        """Too many long-polls are held (by this user, or in all): the user's idle subscriber
        should come back later."""
        held = len(self._waiters.get(user_id, ()))
        return held >= self.max_per_user or self.waiting >= self.max_waiting

    def generation(self, user_id: int) -> int:
        return self._generation.get(user_id, 0)

    async def notify(self, user_id: int) -> None:
        self._generation[user_id] = self.generation(user_id) + 1
        for fut in self._waiters.pop(user_id, ()):
            if not fut.done():
                fut.set_result(None)

    async def wait(self, user_id: int, seen: int, timeout_s: float) -> None:
        """Return when the user's generation moved past `seen`, on shutdown, or after the wait."""
        if self.closing or self.generation(user_id) != seen:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(user_id, set())
        waiters.add(fut)
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout_s)
        finally:
            self.waiting -= 1
            waiters.discard(fut)
            if not waiters and self._waiters.get(user_id) is waiters:
                del self._waiters[user_id]

    async def close(self) -> None:
        self.closing = True
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()
