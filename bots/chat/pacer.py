"""One pacer per chat: every write into a chat waits for that chat's turn.

Telegram and Discord both limit how often a bot may post or edit in one chat and answer
HTTP 429 with ``retry_after`` when it is exceeded. Every reply streaming into a chat shares
the chat's :class:`Pacer`, which spaces calls by the chat's interval (first come, first
served) and, after a 429, holds the whole chat for exactly ``retry_after`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Pacer:
    """Spaces the write calls into one chat; :meth:`hold` pauses it after a 429."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = asyncio.Lock()
        self._next = 0.0
        self._hold_until = 0.0

    async def turn(self, *, urgent: bool = False) -> None:
        """Wait for this chat's next slot. ``urgent`` skips the spacing, never a hold."""
        async with self._lock:  # FIFO: waiters are served in arrival order
            while True:
                target = self._hold_until if urgent else max(self._next, self._hold_until)
                delay = target - self._clock()
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            self._next = self._clock() + self.interval

    def hold(self, seconds: float) -> None:
        """Nothing is written into this chat for ``seconds`` from now."""
        self._hold_until = max(self._hold_until, self._clock() + seconds)


class Pacers:
    """The pacers of one bot, created on first use; the least recently used are dropped."""

    def __init__(self, interval: float, group_interval: float, *, max_chats: int = 4096) -> None:
        self.interval = interval
        self.group_interval = group_interval
        self._pacers: dict[str, Pacer] = {}
        self._max = max_chats

    def get(self, scope: str, *, group: bool) -> Pacer:
        pacer = self._pacers.pop(scope, None)
        if pacer is None:
            pacer = Pacer(self.group_interval if group else self.interval)
            if len(self._pacers) >= self._max:
                self._pacers.pop(next(iter(self._pacers)))
        self._pacers[scope] = pacer  # most recently used last
        return pacer
