"""What only Discord has: the real discord.py client against the fake gateway and REST API.

Shared behaviour (memory, access, commands, long answers, 429, threads…) is in
tests/test_bot_scenarios.py; here: the real model end to end (one smoke test), start-up
failures (bad token, missing intent), slash-command sync, mentions that never ping,
auto-threads, a half-streamed answer deleted by a moderator, rate limits from a bare proxy,
and replies found from memory when Discord's cache is cold.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bots.discord.frontend import DiscordFrontend, DiscordStartError
from core.config import Secret
from core.engine import Engine
from core.serve import run_frontends
from tests.fakes import discord_api as dc
from tests.fakes.discord_api import FakeDiscord, allowed_mentions_pinging
from tests.harness.discord_driver import DiscordDriver
from tests.harness.driver import ALICE, GROUP
from tests.harness.engine import ScriptedEngine

pytestmark = pytest.mark.slow

WRITE = r"/channels/\d+/messages(/\d+)?"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    f = FakeDiscord()
    await f.start()
    yield f
    await f.stop()


@pytest.fixture
async def dd(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[DiscordDriver]:
    driver = DiscordDriver(ScriptedEngine(), tmp_path / "memory.sqlite", fake=fake)
    await driver.start()
    yield driver
    await driver.stop()


async def test_real_model_answers_a_mention(
    fake: FakeDiscord, engine: Engine, tmp_path: Path
) -> None:
    """The one end-to-end run with the bundled model: streamed, remembered, mapped."""
    driver = DiscordDriver(engine, tmp_path / "memory.sqlite", fake=fake)
    await driver.start(edit_interval=0.25)
    try:
        assert driver.service is not None
        key = driver.key(ALICE, GROUP)
        await driver.service.update_settings(key, {"max_tokens": 60})
        reply = await driver.say(ALICE, "What is the capital of France?", GROUP)
        history = await driver.service.history(key)
    finally:
        await driver.stop()
    assert reply.outcome == "answered"
    assert [t.role for t in history] == ["user", "assistant"]
    assert "".join(reply.texts).split() == history[1].text.split()
    assert history[1].platform_message_id == reply.message_ids[-1]
    assert fake.find("POST", r"/channels/\d+/typing"), "typing while the model reads"


async def test_commands_are_synced_to_the_guild(dd: DiscordDriver, fake: FakeDiscord) -> None:
    names = {c["name"] for c in fake.commands[str(dc.GUILD_ID)]}
    assert names == {
        "help", "ask", "reset", "retry", "cancel", "persona", "stats", "forget", "model",
    }  # fmt: skip


async def test_model_output_pings_nobody(dd: DiscordDriver, fake: FakeDiscord) -> None:
    reply = await dd.say(ALICE, "say: @everyone the server is down <@102> <@&30>", GROUP)
    assert "everyone the server is down" in reply.text
    writes = [c for c in fake.calls if re.fullmatch(WRITE, c.path) and c.method != "DELETE"]
    assert writes and not any(allowed_mentions_pinging(c) for c in writes)


async def test_auto_thread_per_conversation(fake: FakeDiscord, tmp_path: Path) -> None:
    driver = DiscordDriver(ScriptedEngine(), tmp_path / "m.sqlite", fake=fake, auto_thread=True)
    await driver.start()
    try:
        reply = await driver.say(ALICE, "Plan a picnic for me.", GROUP)
        [thread] = [t for t in fake.threads if fake.threads[t]["owner_id"] == str(dc.BOT_ID)]
        assert fake.threads[thread]["name"] == "Plan a picnic for me."
        assert driver.threads(reply) == [thread]
        # Inside the bot's own thread no mention is needed; memory is the thread's.
        more = await fake.user_message(ALICE.discord_id, "recall", channel_id=thread)
        follow = await driver.wait(("", str(more)))
        assert follow.text == "You told me: Plan a picnic for me."
    finally:
        await driver.stop()


async def test_auto_thread_without_permission_answers_in_the_channel(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    fake.forbid_threads = True
    driver = DiscordDriver(ScriptedEngine(), tmp_path / "m.sqlite", fake=fake, auto_thread=True)
    await driver.start()
    try:
        reply = await driver.say(ALICE, "say: hi", GROUP)
    finally:
        await driver.stop()
    assert reply.text == "hi" and driver.threads(reply) == [None]


async def test_final_text_survives_a_deleted_message(dd: DiscordDriver, fake: FakeDiscord) -> None:
    engine = dd.engine
    assert isinstance(engine, ScriptedEngine)
    engine.hold_after = 5
    engine.gate.clear()
    pending = await dd.send(ALICE, "long:300", GROUP)
    await dd.wait_sent(lambda sent: len(sent) >= 1)
    for mid in [m for m, msg in fake.messages.items() if msg["author"]["id"] == str(dc.BOT_ID)]:
        del fake.messages[mid]  # a moderator deletes the half-streamed answer
    engine.gate.set()
    reply = await pending.reply()
    assert reply.text.split() == (await _answer(dd)).split()
    assert dd.service is not None
    stored = (await dd.service.history(dd.key(ALICE, GROUP)))[-1]
    assert stored.platform_message_id == reply.message_ids[-1]


async def _answer(dd: DiscordDriver) -> str:
    assert dd.service is not None
    return (await dd.service.history(dd.key(ALICE, GROUP)))[-1].text


async def test_rate_limit_from_a_bare_proxy_is_honoured(fake: FakeDiscord, tmp_path: Path) -> None:
    """A 429 without Discord's headers: discord.py raises, the layer waits ``retry_after``."""
    driver = DiscordDriver(
        ScriptedEngine(), tmp_path / "m.sqlite", fake=fake, like_discord_429=False
    )
    await driver.start(edit_interval=0.05)
    try:
        driver.limit_next_edit(0.3)
        reply = await driver.say(ALICE, "slow long:1500")
    finally:
        await driver.stop()
    edits = driver.edit_times()
    [limited] = [i for i, (_, status) in enumerate(edits) if status == 429]
    assert edits[limited + 1][0] - edits[limited][0] >= 0.3 - 0.01
    assert len(re.findall(r"word\d+", reply.text)) > 100


async def test_a_reply_is_recognised_from_memory_when_the_cache_is_cold(
    dd: DiscordDriver, fake: FakeDiscord
) -> None:
    first = await dd.say(ALICE, "Remember banana.", GROUP)
    await dd.restart()  # a new process: discord.py's message cache is empty
    fake.messages.pop(int(first.message_ids[0]))  # and Discord does not resolve it either
    mid = await fake.user_message(ALICE.discord_id, "recall", reply_to=int(first.message_ids[0]))
    follow = await dd.wait(("", str(mid)))
    assert follow.text == "You told me: Remember banana."


async def test_serve_exits_nonzero_on_a_bad_token(dd: DiscordDriver) -> None:
    assert dd.service is not None
    frontend = DiscordFrontend(replace(dd.config(), token=Secret("nope")), dd.service)
    code = await asyncio.wait_for(run_frontends([frontend], asyncio.Event(), start_timeout=20), 20)
    assert code == 1


async def test_bad_token_fails_fast_without_echoing_it(dd: DiscordDriver) -> None:
    assert dd.service is not None
    secret = "wrong-token-SECRET"
    frontend = DiscordFrontend(replace(dd.config(), token=Secret(secret)), dd.service)
    with pytest.raises(DiscordStartError) as err:
        await asyncio.wait_for(frontend.run(asyncio.Event(), asyncio.Event()), 10)
    assert "token was rejected" in str(err.value) and secret not in str(err.value)


async def test_missing_message_content_intent_is_explained(
    fake: FakeDiscord, tmp_path: Path
) -> None:
    fake.message_content_enabled = False
    driver = DiscordDriver(ScriptedEngine(), tmp_path / "m.sqlite", fake=fake)
    with pytest.raises(DiscordStartError, match="MESSAGE CONTENT INTENT"):
        await driver.start()
