"""The conversation layer's delivery rules on an in-memory outbox (no platform, no model).

Platform behaviour end to end is in tests/test_bot_scenarios.py; here the corner cases a
fake server rarely produces on cue: messages deleted mid-answer, edits refused, networks
failing, rate limits in the middle of the final text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from bots.chat.live import CURSOR, DeliveryFailed, LiveReply, wire_safe
from bots.chat.outbox import MessageGone, Rejected, RetryLater, Style
from bots.chat.pacer import Pacer
from bots.chat.refusals import RefusalThrottle


@dataclass
class MemOutbox:
    """Messages in a dict; ``faults`` are raised by the next matching calls."""

    limit: int = 20
    messages: dict[int, tuple[str, Style]] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)
    faults: list[tuple[str, Exception]] = field(default_factory=list)
    _next: int = 1

    async def split(self, text: str, *, suffix: str = "") -> list[str]:
        parts = [text[i : i + self.limit] for i in range(0, len(text), self.limit)]
        if parts and suffix:
            parts[-1] += suffix
        return parts

    def restyles(self, chunk: str) -> bool:
        return "*" in chunk

    def _fault(self, method: str) -> None:
        for i, (name, exc) in enumerate(self.faults):
            if name == method:
                del self.faults[i]
                raise exc

    async def send(self, text: str, style: Style) -> int:
        self._fault("send")
        handle, self._next = self._next, self._next + 1
        self.messages[handle] = (text, style)
        self.calls.append(("send", handle))
        return handle

    async def edit(self, handle: int, text: str, style: Style) -> int:
        self._fault("edit")
        if handle not in self.messages:
            raise MessageGone("gone")
        self.messages[handle] = (text, style)
        self.calls.append(("edit", handle))
        return handle

    async def delete(self, handle: int) -> None:
        self.messages.pop(handle, None)
        self.calls.append(("delete", handle))

    def message_id(self, handle: int) -> str:
        return str(handle)

    def shown(self) -> list[str]:
        return [self.messages[h][0] for h in sorted(self.messages)]


def reply_on(outbox: MemOutbox, **kw: float) -> LiveReply[int]:
    return LiveReply(outbox, Pacer(0.0), backoff=0.001, **kw)  # type: ignore[arg-type]


async def test_streams_with_a_cursor_and_ends_with_the_final_text() -> None:
    outbox = MemOutbox()
    reply = reply_on(outbox)
    reply.append("hello there")
    await _until(lambda: outbox.messages)
    assert outbox.shown() == ["hello there" + CURSOR]
    ids = await reply.finish("hello there, **friend**, and goodbye")
    assert outbox.shown() == ["hello there, **frien", "d**, and goodbye"]
    assert [s for _, s in outbox.messages.values()] == [Style.FINAL, Style.FINAL]
    assert ids == ["1", "2"]


async def test_a_deleted_message_is_posted_again_in_order() -> None:
    outbox = MemOutbox()
    reply = reply_on(outbox)
    reply.append("a" * 45)
    await _until(lambda: len(outbox.messages) == 3)
    del outbox.messages[1]  # a moderator deletes the first part mid-answer
    ids = await reply.finish("b" * 45)
    assert outbox.shown() == ["b" * 20, "b" * 20, "b" * 5]
    assert ids == sorted(ids, key=int) and "1" not in ids


async def test_a_refused_edit_is_replaced_by_a_new_message() -> None:
    outbox = MemOutbox()
    reply = reply_on(outbox)
    await reply.status("queued")
    outbox.faults.append(("edit", Rejected("no")))
    ids = await reply.finish("answer")
    assert outbox.shown() == ["answer"] and ids == ["2"]
    assert ("delete", 1) in outbox.calls


async def test_rate_limits_are_waited_out_and_not_counted_as_failures() -> None:
    outbox = MemOutbox()
    outbox.faults += [("send", RetryLater(0.2))] + [("send", OSError("net"))] * 2
    reply = reply_on(outbox, attempts=3)
    start = time.monotonic()
    assert await reply.finish("text") == ["1"]
    assert time.monotonic() - start >= 0.2 - 0.01  # held for retry_after, exactly as told


async def test_delivery_gives_up_with_a_clear_error() -> None:
    outbox = MemOutbox()
    outbox.faults += [("send", OSError("net"))] * 3
    with pytest.raises(DeliveryFailed):
        await reply_on(outbox, attempts=3).finish("text")
    outbox.faults.append(("send", Rejected("too long")))
    with pytest.raises(DeliveryFailed):
        await reply_on(outbox).finish("text")


async def test_final_text_shorter_than_the_stream_deletes_the_rest() -> None:
    outbox = MemOutbox()
    reply = reply_on(outbox)
    reply.append("x" * 50)
    await _until(lambda: len(outbox.messages) == 3)
    assert await reply.finish("short") == ["1"]
    assert outbox.shown() == ["short"]


async def test_unchanged_chunks_are_not_edited_unless_the_final_style_differs() -> None:
    outbox = MemOutbox()
    reply = reply_on(outbox)
    reply.append("p" * 20 + "q" * 10)
    await _until(lambda: len(outbox.messages) == 2)
    outbox.calls.clear()
    await reply.finish("p" * 20 + "q" * 10)
    assert outbox.calls == [("edit", 2)]  # only the part with the cursor
    reply2 = reply_on(outbox)
    reply2.append("*" * 20 + "r")
    await _until(lambda: len(outbox.messages) == 4)
    outbox.calls.clear()
    await reply2.finish("*" * 20 + "r")
    assert [c for c, _ in outbox.calls] == ["edit", "edit"]  # Markdown renders differently


def test_wire_safe_text() -> None:
    assert wire_safe("a\ud800b\udfffc") == "a\ufffdb\ufffdc"
    assert wire_safe("x\x00y\x07z\x1b[0m\r\n\tw\x7f") == "xyz[0m\n\tw"
    assert wire_safe("😀 fine") == "😀 fine"
    huge = "\x00" * 100_000 + "\ud800" * 100_000
    assert wire_safe(huge) == "\ufffd" * 100_000


def test_refusal_throttle_tells_once_per_quiet_period() -> None:
    now = [0.0]
    throttle = RefusalThrottle(600.0, lambda: now[0], max_entries=3)
    assert throttle.first("telegram:1:2")
    assert not throttle.first("telegram:1:2")
    now[0] = 601.0
    assert throttle.first("telegram:1:2")
    for i in range(5):  # bounded memory: old entries make room
        assert throttle.first(f"k{i}")
    assert len(throttle._last) <= 3


async def _until(condition: object) -> None:
    import asyncio

    for _ in range(10_000):  # a safety net against hanging, not a speed goal
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")
