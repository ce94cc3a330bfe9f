"""``finechat serve`` lifecycle: front-ends start together, stop together, failures exit non-zero."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from core.serve import run_frontends


@dataclass
class FakeFrontend:
    name: str
    fail_on_start: bool = False
    crash_after_start: bool = False
    events: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event, ready: asyncio.Event) -> None:
        self.events.append("start")
        if self.fail_on_start:
            raise RuntimeError("bad token")
        ready.set()
        self.started.set()
        try:
            if self.crash_after_start:
                await asyncio.sleep(0)
                raise RuntimeError("connection lost")
            await stop.wait()
        finally:
            self.events.append("stopped")


async def test_clean_stop_returns_zero() -> None:
    a, b = FakeFrontend("a"), FakeFrontend("b")
    stop = asyncio.Event()
    task = asyncio.create_task(run_frontends([a, b], stop))
    await asyncio.wait_for(asyncio.gather(a.started.wait(), b.started.wait()), 10)
    stop.set()
    assert await task == 0
    assert a.events == b.events == ["start", "stopped"]


async def test_one_failing_to_start_stops_all_and_returns_one() -> None:
    good, bad = FakeFrontend("good"), FakeFrontend("bad", fail_on_start=True)
    stop = asyncio.Event()
    assert await run_frontends([good, bad], stop, start_timeout=10) == 1
    assert stop.is_set()
    assert good.events[-1] == "stopped"


async def test_crash_after_start_stops_the_rest() -> None:
    good, bad = FakeFrontend("good"), FakeFrontend("bad", crash_after_start=True)
    assert await run_frontends([good, bad], asyncio.Event(), start_timeout=10) == 1
    assert good.events == ["start", "stopped"]
