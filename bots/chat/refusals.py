"""One polite refusal per person and chat per quiet period: no spam, no ping-pong.

A stranger who writes a private bot ten times gets one answer, not ten, and two bots that
refuse each other cannot loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

QUIET_S = 600.0


class RefusalThrottle:
    def __init__(
        self,
        quiet_s: float = QUIET_S,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_entries: int = 10_000,
    ) -> None:
        self.quiet_s = quiet_s
        self._clock = clock
        self._max = max_entries
        self._last: dict[str, float] = {}

    def first(self, scope: str) -> bool:
        """True when ``scope`` (a person in a chat) should be told now, and remembers it."""
        now = self._clock()
        last = self._last.get(scope)
        if last is not None and now - last < self.quiet_s:
            return False
        if len(self._last) >= self._max:
            self._last = {k: t for k, t in self._last.items() if now - t < self.quiet_s}
            if len(self._last) >= self._max:
                self._last.clear()
        self._last[scope] = now
        return True
