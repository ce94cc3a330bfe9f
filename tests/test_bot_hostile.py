"""Hostile model output through the real front-ends: every answer reaches the chat.

The scripted engine answers with what a model (or an OpenAI-compatible backend) can send
and no model sends on cue — 2,600 tildes, an unterminated fence over 4,096 characters,
3,000 emoji, lone surrogates, NUL and other controls, HTML-ish markup, 30,000 characters —
and each scenario checks, on Telegram and on Discord, that every message fits the platform
and that every visible character of the answer arrives, in order. While one such answer
streams slowly, other chats are answered and ``/healthz`` responds.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from bots.chat.live import wire_safe
from bots.telegram.chunks import utf16_len
from tests.harness.driver import ALICE, BOB, ChatDriver
from tests.harness.engine import HOSTILE, ScriptedEngine
from tests.harness.fixtures import chat

__all__ = ["chat"]

MARKUP = set("`*_~#>|[]()")
"""Markdown markup a renderer may consume; every other visible character must arrive."""
NOT_SHOWN = re.compile(r"\]\((https?://[^)\s]+)\)|^[ \t]*(`{3,}|~{3,})[^\n`]{0,32}$", re.MULTILINE)
"""Link targets and fence info strings (``python``): markup too, once rendered."""


def significant(text: str) -> list[str]:
    return [c for c in text if not c.isspace() and c not in MARKUP]


def in_order(expected: list[str], shown: list[str]) -> bool:
    """``expected`` is a subsequence of ``shown`` (renderers may add bullets, fence tags…)."""
    rest = iter(shown)
    return all(any(c == s for s in rest) for c in expected)


def fits(platform: str, text: str) -> bool:
    if platform == "telegram":
        return 0 < utf16_len(text) <= 4096
    return 0 < len(text) <= 2000


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_answer_is_delivered_in_full(chat: ChatDriver, name: str) -> None:
    reply = await chat.say(ALICE, f"hostile:{name}")
    assert reply.outcome in {"answered", "failed"}, reply.outcome
    assert reply.texts, "nothing reached the chat"
    assert all(fits(chat.platform, t) for t in reply.texts)
    answer = NOT_SHOWN.sub("]", wire_safe(HOSTILE[name]).strip())
    assert in_order(significant(answer), significant("".join(reply.texts)))
    after = await chat.say(BOB, "say: still here")
    assert after.text == "still here"


async def test_a_slow_huge_answer_holds_no_other_chat(chat: ChatDriver) -> None:
    """While 30,000 characters stream (and are re-cut at every edit), another person is
    answered and the web server's /healthz responds: nothing holds the event loop."""
    web_frontend = pytest.importorskip("web.frontend")
    from core.config import WebConfig

    prompt = "slow hostile:huge"
    engine = chat.engine
    assert isinstance(engine, ScriptedEngine) and chat.service is not None
    engine.piece, engine.slow_delay, engine.hold_after = 200, 0.002, 120
    stop, ready = asyncio.Event(), asyncio.Event()
    web = web_frontend.WebFrontend(WebConfig(host="127.0.0.1", port=0), chat.service)
    serving = asyncio.create_task(web.run(stop, ready))
    try:
        await asyncio.wait_for(ready.wait(), 120)
        engine.gate.clear()  # the huge answer pauses after 24,000 characters
        huge = await chat.send(ALICE, prompt)
        await chat.wait_sent(lambda sent: len(sent) >= 1)
        await engine.wait_running(1)
        other = await chat.say(BOB, "say: answered meanwhile")
        assert other.text == "answered meanwhile"
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{web.url}healthz")
        assert health.status_code == 200 and health.json()["ok"] is True
        assert huge.match not in chat.handled, "the huge answer was still streaming"
        engine.gate.set()
        reply = await huge.reply()
    finally:
        engine.gate.set()
        stop.set()
        await asyncio.wait_for(serving, 60)
    answer = wire_safe(HOSTILE["huge"]).strip()
    assert reply.outcome == "answered" and all(fits(chat.platform, t) for t in reply.texts)
    expected = significant(NOT_SHOWN.sub("]", answer))
    assert in_order(expected, significant("".join(reply.texts)))
