"""A full Telegram scenario with operator logging on: the real python-telegram-bot client
against the fake Bot API, the real model, JSON logs at DEBUG with the turn log and metrics.

The log must show the turns (hashed key, outcome, timings) and must contain neither the bot
token nor what people wrote or were answered.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator

import pytest

from core.config import LoggingConfig
from core.logs import TurnLogger, register_secret, setup_logging
from core.metrics import metrics_for
from core.service import ChatService
from tests.fakes.telegram_api import FakeBotAPI
from tests.test_telegram_bot import ALICE, BOB, TOKEN, reply_text, running

pytestmark = pytest.mark.slow


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    fake = FakeBotAPI(TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


async def test_logs_of_a_full_scenario_hold_no_token_and_no_text(
    api: FakeBotAPI, service: ChatService
) -> None:
    register_secret(TOKEN)  # what finechat serve does for the configured tokens
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging("debug", "json", stream=out)  # even at debug
    service.observers.append(TurnLogger(LoggingConfig()))
    metrics = metrics_for(service)
    secrets = ["my secret plan is pineapple", "the door code is 4711"]
    try:
        async with running(api, service) as bot:
            api.send_text(ALICE.id, ALICE, secrets[0])
            await reply_text(api, bot, ALICE.id, 1)
            api.send_text(BOB.id, BOB, secrets[1])
            await reply_text(api, bot, BOB.id, 2)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        service.observers.remove(metrics)
        service.observers.pop()
    text = out.getvalue()
    answers = [
        t.text
        for key in (f"telegram:{ALICE.id}:{ALICE.id}", f"telegram:{BOB.id}:{BOB.id}")
        for t in await service.history(key)
        if t.role == "assistant"
    ]
    assert len(answers) == 2
    assert TOKEN not in text and TOKEN.split(":")[1] not in text
    for private in [*secrets, *answers]:
        assert private not in text
    assert "pineapple" not in text and "4711" not in text
    turns = [json.loads(line) for line in text.splitlines() if '"event": "turn"' in line]
    assert len(turns) == 2 and {t["platform"] for t in turns} == {"telegram"}
    assert all(str(ALICE.id) not in t["conv"] and t["ttft_s"] is not None for t in turns)
    rendered = metrics.render().decode()
    assert 'finechat_requests_total{frontend="telegram",kind="reply"} 2.0' in rendered
