"""The event-loop lag watchdog: a deliberate blocking call is logged and measured.

No wall-clock upper bounds: the assertions are that a stall *is* seen (a warning and a
histogram observation at least as long as the warning threshold), never that anything is fast.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

import core.serve
from core.config import Config
from core.loopwatch import METRIC, WARN_AFTER, lag_histogram, watch_loop
from core.metrics import metrics_for

BLOCK = WARN_AFTER + 0.25


def observations(histogram: Histogram) -> Iterator[tuple[str, float]]:
    for metric in histogram.collect():
        for sample in metric.samples:
            yield sample.name, sample.value


def count_over(histogram: Histogram, bound: str) -> float:
    """Observations above the ``bound`` bucket (total count minus that bucket's count)."""
    values = dict(observations(histogram))
    samples = [s for m in histogram.collect() for s in m.samples]
    le = next(s.value for s in samples if s.name.endswith("_bucket") and s.labels["le"] == bound)
    return values[METRIC + "_count"] - le


async def test_blocking_call_warns_and_is_observed(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    caplog.set_level(logging.WARNING, logger="finechat.loop")
    async with watch_loop(registry, interval=0.02) as watch:
        await asyncio.sleep(0.05)  # the watchdog is running
        time.sleep(BLOCK)  # noqa: ASYNC251 - a deliberate blocking call on the loop thread
        await asyncio.wait_for(watch.stalled.wait(), 30)
    assert watch.worst >= WARN_AFTER
    assert any("event loop blocked" in r.getMessage() for r in caplog.records)
    histogram = lag_histogram(registry)
    assert count_over(histogram, "0.25") >= 1
    assert METRIC in generate_latest(registry).decode()


async def test_an_idle_loop_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    caplog.set_level(logging.WARNING, logger="finechat.loop")
    async with watch_loop(registry, interval=0.01, warn_after=3600) as watch:
        for _ in range(3000):  # a few observations (the bound only guards termination)
            if dict(observations(lag_histogram(registry)))[METRIC + "_count"] >= 3:
                break
            await asyncio.sleep(0.01)
    assert watch.stalls == 0
    assert not [r for r in caplog.records if r.name == "finechat.loop"]


class _Service:
    """Just enough of a ChatService for metrics_for (an observers list, weak-referenceable)."""

    def __init__(self) -> None:
        self.observers: list[Any] = []


class _BlockingFrontend:
    name = "blocker"

    async def run(self, stop: asyncio.Event, ready: asyncio.Event) -> None:
        ready.set()
        await asyncio.sleep(0.3)  # the watchdog has started
        time.sleep(BLOCK)  # noqa: ASYNC251 - the stall under test
        await asyncio.sleep(0.3)  # it wakes up late and reports
        stop.set()


async def test_serve_runs_the_watchdog_into_the_service_metrics(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    service = _Service()

    @asynccontextmanager
    async def fake_open_service(config: Config) -> AsyncIterator[Any]:
        yield service

    monkeypatch.setattr(core.serve, "open_service", fake_open_service)
    monkeypatch.setattr(core.serve, "build_frontends", lambda *a: [_BlockingFrontend()])
    caplog.set_level(logging.WARNING, logger="finechat.loop")
    assert await core.serve.serve(Config()) == 0
    assert any("event loop blocked" in r.getMessage() for r in caplog.records)
    histogram = lag_histogram(metrics_for(service).registry)  # type: ignore[arg-type]
    assert count_over(histogram, "0.25") >= 1
