"""Event-loop lag watchdog: notice when something holds the loop every front-end shares.

Discord, Telegram, the web chat and ``/healthz`` all run in one event loop, so one blocking
call (a slow render, a synchronous file read, a runaway regex) stalls every chat at once. The
watchdog is a task that sleeps a short interval and measures how much later than asked it
woke up: that oversleep is the time the loop could not run anything. Every measurement goes
into the histogram ``finechat_event_loop_lag_seconds``; a stall over ``warn_after`` (250 ms)
is also logged as a WARNING, with how long it lasted, so a stall that users felt shows up in
the log next to what they did.

Start it with :func:`watch_loop` around the serving code (``finechat serve`` and
``finechat api`` do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger("finechat.loop")

METRIC = "finechat_event_loop_lag_seconds"
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INTERVAL = 0.1
"""Seconds between checks: frequent enough to see a 250 ms stall, cheap enough to ignore."""
WARN_AFTER = 0.25
_HELP = "Event loop lag: how much later than asked a short sleep woke up."

_HISTOGRAMS: weakref.WeakKeyDictionary[CollectorRegistry, Histogram] = weakref.WeakKeyDictionary()


def lag_histogram(registry: CollectorRegistry | None) -> Histogram:
    """The lag histogram registered in ``registry`` (one per registry; unregistered if None)."""
    if registry is None:
        return Histogram(METRIC, _HELP, buckets=LAG_BUCKETS, registry=None)
    histogram = _HISTOGRAMS.get(registry)
    if histogram is None:
        histogram = Histogram(METRIC, _HELP, buckets=LAG_BUCKETS, registry=registry)
        _HISTOGRAMS[registry] = histogram
    return histogram


class LoopWatch:
    """Measures the running loop's lag until cancelled (see module docstring)."""

    def __init__(
        self,
        histogram: Histogram,
        *,
        interval: float = INTERVAL,
        warn_after: float = WARN_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.histogram = histogram
        self.interval = interval
        self.warn_after = warn_after
        self._clock = clock
        self.stalls = 0
        """Stalls over ``warn_after`` seen so far."""
        self.worst = 0.0
        """The longest lag seen, in seconds."""
        self.stalled = asyncio.Event()
        """Set at the first stall over ``warn_after``."""

    async def run(self) -> None:
        while True:
            asked = self._clock()
            await asyncio.sleep(self.interval)
            lag = max(0.0, self._clock() - asked - self.interval)
            self.histogram.observe(lag)
            self.worst = max(self.worst, lag)
            if lag > self.warn_after:
                self.stalls += 1
                self.stalled.set()
                log.warning(
                    "event loop blocked for %.2f s: every chat and web request waited "
                    "(something ran on the loop thread instead of awaiting)",
                    lag,
                )


@contextlib.asynccontextmanager
async def watch_loop(
    registry: CollectorRegistry | None = None,
    *,
    interval: float = INTERVAL,
    warn_after: float = WARN_AFTER,
) -> AsyncIterator[LoopWatch]:
    """Run a :class:`LoopWatch` on the current loop for the duration of the block."""
    watch = LoopWatch(lag_histogram(registry), interval=interval, warn_after=warn_after)
    task = asyncio.create_task(watch.run(), name="finechat-loopwatch")
    try:
        yield watch
    finally:
        task.cancel()
        await asyncio.wait([task])  # never raises; a cancellation of ours still propagates
