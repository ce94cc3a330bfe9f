"""The ``chat`` fixture: one running bot per platform, on the scripted engine.

Import it into a test module (``from tests.harness.fixtures import chat``) and every test
that takes ``chat`` runs once on Telegram and once on Discord. ``@pytest.mark.bot_settings
(...)`` starts the bot with other :class:`~tests.harness.driver.Settings`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.discord_api import FakeDiscord
from tests.fakes.telegram_api import FakeBotAPI
from tests.harness.discord_driver import DiscordDriver
from tests.harness.driver import ChatDriver
from tests.harness.engine import ScriptedEngine
from tests.harness.telegram_driver import TOKEN, TelegramDriver

PLATFORMS = ("telegram", "discord")


@pytest.fixture(params=PLATFORMS)
async def chat(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChatDriver]:
    marker = request.node.get_closest_marker("bot_settings")
    settings = dict(marker.kwargs) if marker is not None else {}
    engine = ScriptedEngine()
    db = tmp_path / "memory.sqlite"
    driver: ChatDriver
    if request.param == "telegram":
        api = FakeBotAPI(TOKEN)
        await api.start()
        driver = TelegramDriver(engine, db, api=api)
        stop = api.stop
    else:
        fake = FakeDiscord()
        await fake.start()
        driver = DiscordDriver(engine, db, fake=fake)
        stop = fake.stop
    try:
        await driver.start(**settings)
        yield driver
    finally:
        engine.gate.set()
        await driver.stop()
        await stop()
