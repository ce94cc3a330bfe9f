"""What only Telegram has: the real python-telegram-bot client against the fake Bot API.

Shared behaviour (memory, access, commands, long answers, 429, topics…) is in
tests/test_bot_scenarios.py; here: the real model end to end (one smoke test), the token
kept out of logs and errors, start-up failures, the command menu, HTML that Telegram
refuses, and ``finechat serve`` finding the bot through its entry point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bots.chat.texts import COMMAND_NAMES
from bots.telegram.format import markdown_to_html
from bots.telegram.frontend import TelegramStartError, create
from core.config import Config, Secret
from core.engine import Engine
from core.memory import MemoryStore
from core.serve import build_frontends, run_frontends
from core.service import ChatService
from tests.fakes.telegram_api import FakeBotAPI, visible_text
from tests.harness.driver import ALICE, GROUP, PRIVATE, topic
from tests.harness.engine import ScriptedEngine
from tests.harness.telegram_driver import FORUM_ID, GROUP_ID, TOKEN, TelegramDriver, tg_user

pytestmark = pytest.mark.slow


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    fake = FakeBotAPI(TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def tg(api: FakeBotAPI, tmp_path: Path) -> AsyncIterator[TelegramDriver]:
    driver = TelegramDriver(ScriptedEngine(), tmp_path / "memory.sqlite", api=api)
    await driver.start()
    yield driver
    await driver.stop()


async def test_real_model_answers_in_a_private_chat(
    api: FakeBotAPI, engine: Engine, tmp_path: Path
) -> None:
    """The one end-to-end run with the bundled model: streamed, rendered, remembered."""
    driver = TelegramDriver(engine, tmp_path / "memory.sqlite", api=api)
    await driver.start(edit_interval=0.25)
    try:
        assert driver.service is not None
        await driver.service.update_settings(driver.key(ALICE), {"max_tokens": 60})
        reply = await driver.say(ALICE, "Tell me about the moon in two sentences.")
        history = await driver.service.history(driver.key(ALICE))
    finally:
        await driver.stop()
    assert reply.outcome == "answered"
    assert [t.role for t in history] == ["user", "assistant"]
    assert reply.texts == [visible_text(markdown_to_html(history[1].text))]
    assert history[1].platform_message_id == reply.message_ids[-1]
    assert api.calls_to("sendChatAction", ALICE.telegram_id), "typing while the model reads"


async def test_command_menu_and_group_quotes(tg: TelegramDriver, api: FakeBotAPI) -> None:
    assert [c["command"] for c in api.commands] == list(COMMAND_NAMES)
    reply = await tg.say(ALICE, "hello", GROUP)
    [message] = [m for m in api.bot_messages(GROUP_ID) if str(m.message_id) in reply.message_ids]
    assert message.reply_to is not None  # groups: the answer quotes the question
    private = await tg.say(ALICE, "hello", PRIVATE)
    assert all(m.reply_to is None for m in api.bot_messages(ALICE.telegram_id))
    assert private.text == "echo: hello"


async def test_forum_topic_sends_carry_the_topic(tg: TelegramDriver, api: FakeBotAPI) -> None:
    reply = await tg.say(ALICE, "long:5000", topic(3))
    sends = [c for c in api.calls_to("sendMessage", FORUM_ID)]
    assert sends and all(c.params.get("message_thread_id") == 103 for c in sends)
    assert set(tg.threads(reply)) == {103}
    assert tg.key(ALICE, topic(3)) == f"telegram:{FORUM_ID}/103:{ALICE.telegram_id}"
    refusal = await tg.command(ALICE, "model", where=topic(3))  # notes too
    assert tg.threads(refusal) == [103]
    # The General topic and ordinary supergroups keep the plain key.
    assert tg.key(ALICE, GROUP) == f"telegram:{GROUP_ID}:{ALICE.telegram_id}"


async def test_rejected_entities_fall_back_to_plain_text(
    tg: TelegramDriver, api: FakeBotAPI
) -> None:
    html = lambda p: p.get("parse_mode") == "HTML"  # noqa: E731
    api.fail("editMessageText", "bad_entities", times=5, when=html)
    api.fail("sendMessage", "bad_entities", times=5, when=html)
    reply = await tg.say(ALICE, "say: a **bold** word and `code`")
    assert reply.texts == ["a **bold** word and `code`"]


async def test_command_menu_failure_does_not_stop_the_bot(api: FakeBotAPI, tmp_path: Path) -> None:
    api.fail("setMyCommands", "bad_entities")
    driver = TelegramDriver(ScriptedEngine(), tmp_path / "m.sqlite", api=api)
    await driver.start()
    try:
        assert (await driver.say(ALICE, "hi")).text == "echo: hi"
    finally:
        await driver.stop()
    assert api.calls_to("setMyCommands")[0].status == 400


async def test_token_never_logged_and_start_errors_are_clear(
    api: FakeBotAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    driver = TelegramDriver(ScriptedEngine(), tmp_path / "m.sqlite", api=api)
    await driver.start()
    try:
        await driver.say(ALICE, "Hi")
        service = driver.service
        assert service is not None
        config = driver.config()
    finally:
        await driver.stop()
    assert any("sendMessage" in r.getMessage() for r in caplog.records), "httpx logs the URLs"
    assert TOKEN not in caplog.text

    wrong = create(Config(telegram=replace(config, token=Secret("1:wrong"))), service)
    assert wrong is not None
    with pytest.raises(TelegramStartError) as info:
        await wrong.run(asyncio.Event(), asyncio.Event())
    assert "rejected the token" in str(info.value) and "1:wrong" not in str(info.value)

    port = api.port
    await api.stop()  # nothing listens there any more
    gone = create(Config(telegram=config), service)
    assert gone is not None
    with pytest.raises(TelegramStartError) as unreachable:
        await gone.run(asyncio.Event(), asyncio.Event())
    assert f"cannot reach the Bot API at http://127.0.0.1:{port}" in str(unreachable.value)
    assert TOKEN not in str(unreachable.value)


async def test_runs_inside_finechat_serve(api: FakeBotAPI, tmp_path: Path) -> None:
    """Found through the entry point and run by serve's own loop, stopped by its stop event."""
    store = await MemoryStore.open(tmp_path / "serve.sqlite")
    try:
        service = ChatService(ScriptedEngine(), store)
        config = TelegramDriver(ScriptedEngine(), tmp_path / "unused", api=api).config()
        [frontend] = build_frontends(Config(telegram=config), service, {"telegram"})
        assert frontend.name == "telegram"
        stop = asyncio.Event()
        serving = asyncio.create_task(run_frontends([frontend], stop, start_timeout=30))
        api.send_text(ALICE.telegram_id, tg_user(ALICE), "say: served")
        await api.wait_for(lambda: api.bot_messages(ALICE.telegram_id), 30)
        stop.set()
        assert await asyncio.wait_for(serving, 30) == 0
    finally:
        await store.aclose()
    assert [m.text for m in api.bot_messages(ALICE.telegram_id)] == ["served"]
