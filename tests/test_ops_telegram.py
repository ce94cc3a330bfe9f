"""A full Telegram scenario with operator logging on: the real python-telegram-bot client
against the fake Bot API, the scripted engine (it echoes the secrets back, so they are in
the answers too), JSON logs at DEBUG with the turn log and metrics.

The log must show the turns (hashed key, outcome, timings) and must contain neither the bot
token nor what people wrote or were answered.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.config import LoggingConfig
from core.logs import TurnLogger, register_secret, setup_logging
from core.metrics import metrics_for
from tests.fakes.telegram_api import FakeBotAPI
from tests.harness.driver import ALICE, BOB
from tests.harness.engine import ScriptedEngine
from tests.harness.telegram_driver import TOKEN, TelegramDriver

pytestmark = pytest.mark.slow


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    fake = FakeBotAPI(TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


async def test_logs_of_a_full_scenario_hold_no_token_and_no_text(
    api: FakeBotAPI, tmp_path: Path
) -> None:
    register_secret(TOKEN)  # what finechat serve does for the configured tokens
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging("debug", "json", stream=out)  # even at debug
    secrets = ["my secret plan is pineapple", "the door code is 4711"]
    driver = TelegramDriver(ScriptedEngine(), tmp_path / "memory.sqlite", api=api)
    try:
        await driver.start()
        service = driver.service
        assert service is not None
        service.observers.append(TurnLogger(LoggingConfig()))
        metrics = metrics_for(service)
        await driver.say(ALICE, secrets[0])
        await driver.say(BOB, secrets[1])
        answers = [
            t.text
            for person in (ALICE, BOB)
            for t in await service.history(driver.key(person))
            if t.role == "assistant"
        ]
    finally:
        await driver.stop()
        root.removeHandler(handler)
        root.setLevel(level)
    text = out.getvalue()
    assert len(answers) == 2 and all("pineapple" in a or "4711" in a for a in answers)
    assert TOKEN not in text and TOKEN.split(":")[1] not in text
    for private in [*secrets, *answers]:
        assert private not in text
    assert "pineapple" not in text and "4711" not in text
    turns = [json.loads(line) for line in text.splitlines() if '"event": "turn"' in line]
    assert len(turns) == 2 and {t["platform"] for t in turns} == {"telegram"}
    assert all(str(ALICE.telegram_id) not in t["conv"] and t["ttft_s"] is not None for t in turns)
    rendered = metrics.render().decode()
    assert 'finechat_requests_total{frontend="telegram",kind="reply"} 2.0' in rendered
