"""Shared bot scenarios: each runs on Telegram and on Discord through the real clients.

The harness (tests/harness/) drives python-telegram-bot and discord.py against their fake
servers, with real SQLite memory and the scripted engine, and reads what a person would see.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from bots.chat import texts
from bots.chat.texts import REFUSALS, Refusal
from tests.harness.driver import ADA, ALICE, BOB, CAROL, GROUP, PRIVATE, ChatDriver, topic
from tests.harness.engine import ScriptedEngine, prose
from tests.harness.fixtures import chat

__all__ = ["chat"]

LIMITS = {"telegram": 4096, "discord": 2000}


def words(text: str) -> list[str]:
    return re.findall(r"word\d+", text)


def engine_of(chat: ChatDriver) -> ScriptedEngine:
    assert isinstance(chat.engine, ScriptedEngine)
    return chat.engine


# -- memory ------------------------------------------------------------------------------------


async def test_memory_is_per_person_and_per_place(chat: ChatDriver) -> None:
    assert (await chat.say(ALICE, "My name is Alice.", GROUP)).text == "echo: My name is Alice."
    await chat.say(BOB, "I am Bob.", GROUP)
    await chat.say(ALICE, "I like tea.", PRIVATE)
    in_group = await chat.say(ALICE, "recall", GROUP)
    assert in_group.outcome == "answered"
    assert in_group.text == "You told me: My name is Alice."
    assert (await chat.say(BOB, "recall", GROUP)).text == "You told me: I am Bob."
    assert (await chat.say(ALICE, "recall", PRIVATE)).text == "You told me: I like tea."
    assert chat.service is not None
    stored = await chat.service.history(chat.key(ALICE, GROUP))
    assert [t.text for t in stored if t.role == "user"] == ["My name is Alice.", "recall"]


async def test_restart_keeps_memory(chat: ChatDriver) -> None:
    await chat.say(ALICE, "My favourite colour is teal.")
    await chat.restart()
    assert (await chat.say(ALICE, "recall")).text == "You told me: My favourite colour is teal."


async def test_a_reply_to_any_part_of_a_long_answer_continues_it(chat: ChatDriver) -> None:
    long = await chat.say(ALICE, "long:9000", GROUP)
    assert len(long.message_ids) >= 3
    first_part = long.message_ids[0]  # not the last message: all of them map to the turn
    follow = await chat.say(ALICE, "recall", GROUP, reply_to=first_part, mention=False)
    assert follow.text == "You told me: long:9000"
    assert chat.service is not None
    history = await chat.service.history(chat.key(ALICE, GROUP))
    assert [t.role for t in history] == ["user", "assistant", "user", "assistant"]
    assert history[2].parent_id == history[1].id
    # Someone else replying to Alice's answer is quoted, in their own conversation.
    other = await chat.say(BOB, "and this?", GROUP, reply_to=long.message_ids[-1], mention=False)
    assert other.outcome == "answered"
    bob = await chat.service.history(chat.key(BOB, GROUP))
    assert bob[0].text.endswith("\n\nand this?") and " wrote:\n> " in bob[0].text


# -- long answers, pacing, rate limits ----------------------------------------------------------


async def test_long_answers_are_split_never_truncated(chat: ChatDriver) -> None:
    reply = await chat.say(ALICE, "long:9000")
    limit = LIMITS[chat.platform]
    assert len(reply.texts) == len(reply.message_ids) >= 9000 // limit + 1
    assert all(0 < len(t) <= limit for t in reply.texts)
    assert words(" ".join(reply.texts)) == words(prose(9000))


@pytest.mark.bot_settings(edit_interval=0.05)
async def test_rate_limit_retry_after_is_honoured(chat: ChatDriver) -> None:
    retry_after = 0.3
    chat.limit_next_edit(retry_after)
    reply = await chat.say(ALICE, "slow long:1500")
    assert words(reply.text) == words(prose(1500))
    edits = chat.edit_times()
    limited = [i for i, (_, status) in enumerate(edits) if status == 429]
    assert len(limited) == 1, edits
    at = edits[limited[0]][0]
    after = [t for t, _ in edits[limited[0] + 1 :]]
    assert after, "the edit was retried"
    assert after[0] - at >= retry_after - 0.01


async def test_queue_position_is_shown_and_replaced_by_the_answer(chat: ChatDriver) -> None:
    engine = engine_of(chat)
    engine.set_slots(1)
    engine.gate.clear()
    first = await chat.send(ALICE, "say: first")
    await engine.wait_running(1)
    second = await chat.send(BOB, "say: second")
    await chat.wait_sent(lambda sent: any("ahead of you" in s for s in sent))
    engine.gate.set()
    assert (await first.reply()).text == "first"
    answer = await second.reply()
    assert answer.texts == ["second"]  # the queue note became the answer
    assert texts.queue_note(1) in chat.sent_texts()


async def test_typing_is_shown_while_the_model_reads(chat: ChatDriver) -> None:
    engine = engine_of(chat)
    engine.gate.clear()
    pending = await chat.send(CAROL, "say: hello")
    await engine.wait_running(1)
    engine.gate.set()
    await pending.reply()
    assert chat.typing_count(PRIVATE, CAROL) >= 1


# -- access ------------------------------------------------------------------------------------


@pytest.mark.bot_settings(allowed_users=(ALICE,))
async def test_strangers_are_refused_once_per_quiet_period(chat: ChatDriver) -> None:
    refused = await chat.say(BOB, "hi", GROUP)
    assert refused.outcome == "refused"
    assert refused.texts == [REFUSALS[Refusal.USER_NOT_ALLOWED]]
    again = await chat.say(BOB, "hello??", GROUP)
    assert again.outcome == "refused" and again.texts == []
    assert (await chat.command(BOB, "stats", where=GROUP)).outcome == "refused"
    assert (await chat.say(ALICE, "hi", GROUP)).text == "echo: hi"
    assert (await chat.say(ADA, "hi", GROUP)).text == "echo: hi"  # admins always
    assert chat.service is not None
    assert await chat.service.history(chat.key(BOB, GROUP)) == []


@pytest.mark.bot_settings(allow_private=False)
async def test_private_messages_can_be_switched_off(chat: ChatDriver) -> None:
    refused = await chat.say(CAROL, "hi")
    assert refused.texts == [REFUSALS[Refusal.PRIVATE_DISABLED]]
    assert (await chat.say(ADA, "hi")).text == "echo: hi"


async def test_unaddressed_group_chatter_is_ignored(chat: ChatDriver) -> None:
    ignored = await chat.say(ALICE, "lunch at noon?", GROUP, mention=False)
    assert ignored.outcome == "ignored" and ignored.texts == []
    assert chat.service is not None
    assert await chat.service.history(chat.key(ALICE, GROUP)) == []


# -- what cannot be answered as asked ----------------------------------------------------------


async def test_attachments_are_never_silently_dropped(chat: ChatDriver) -> None:
    only_file = await chat.say(ALICE, "", attachment=True)
    assert only_file.texts == [texts.NOT_TEXT]
    with_text = await chat.say(ALICE, "what is this?", attachment=True)
    assert with_text.texts == [texts.ATTACHMENTS_NOT_READ, "echo: what is this?"]


async def test_failures_become_an_apology_without_internals(chat: ChatDriver) -> None:
    failed = await chat.say(ALICE, "fail")
    assert failed.outcome == "failed"
    assert failed.text.endswith(texts.APOLOGY)
    assert "secret" not in failed.text and "RuntimeError" not in failed.text
    after = await chat.say(ALICE, "still there?")  # the failed turn's message stays in memory
    assert after.outcome == "answered" and after.text.endswith("still there?")
    empty = await chat.say(ALICE, "empty")
    assert empty.texts == [texts.EMPTY_ANSWER]


async def test_a_second_message_while_answering_is_told_to_wait(chat: ChatDriver) -> None:
    engine = engine_of(chat)
    engine.gate.clear()
    first = await chat.send(ALICE, "say: one")
    await engine.wait_running(1)
    busy = await chat.say(ALICE, "two")
    assert busy.text.startswith("I'm still answering your previous message")
    engine.gate.set()
    assert (await first.reply()).text == "one"


@pytest.mark.bot_settings(reply_timeout=0.3)
async def test_reply_timeout_apologises_and_releases_the_conversation(chat: ChatDriver) -> None:
    engine = engine_of(chat)
    engine.gate.clear()
    reply = await chat.say(ALICE, "say: never")
    engine.gate.set()
    assert reply.outcome == "timeout"
    assert reply.texts == [texts.TIMEOUT]
    assert chat.service is not None and not chat.service.busy(chat.key(ALICE))
    assert (await chat.say(ALICE, "again")).outcome == "answered"


async def test_shutdown_mid_answer_says_so(chat: ChatDriver) -> None:
    engine = engine_of(chat)
    engine.gate.clear()
    pending = await chat.send(ALICE, "long:400")
    await engine.wait_running(1)
    stopping = asyncio.create_task(chat.stop())
    reply = await pending.reply()
    await stopping
    assert reply.outcome == "stopped"
    assert reply.texts == [texts.SHUTDOWN]


# -- forum topics and threads ------------------------------------------------------------------


async def test_topics_and_threads_keep_their_own_memory(chat: ChatDriver) -> None:
    one, two = topic(1), topic(2)
    first = await chat.say(ALICE, "Topic one here.", one)
    assert first.text == "echo: Topic one here."
    assert (await chat.say(ALICE, "recall", two)).text == "You told me nothing yet."
    assert (await chat.say(ALICE, "recall", one)).text == "You told me: Topic one here."
    assert (await chat.say(ALICE, "recall", GROUP)).text == "You told me nothing yet."
    assert chat.key(ALICE, one) != chat.key(ALICE, two)
    long = await chat.say(ALICE, "long:5000", one)
    threads = chat.threads(long)
    assert len(threads) >= 2 and len(set(threads)) == 1 and threads[0] is not None
    assert chat.typing_count(one, ALICE) >= 1
    note = await chat.command(ALICE, "stats", where=one)
    assert "Turns: 3" in note.text


# -- commands ----------------------------------------------------------------------------------


async def test_every_command(chat: ChatDriver) -> None:
    assert chat.service is not None
    key = chat.key(ALICE, GROUP)
    if chat.platform == "telegram":
        start = await chat.command(ALICE, "start", where=GROUP)
        assert start.text.startswith("Hi! I'm a chat bot running scripted")
        assert "/reset" in start.text
    helped = await chat.command(ALICE, "help", where=GROUP)
    assert helped.text.startswith("Commands:\n") and "/persona" in helped.text
    assert (await chat.command(ALICE, "ask", "say: asked", GROUP)).text == "asked"
    if chat.platform == "telegram":  # Discord requires the question option
        assert (await chat.command(ALICE, "ask", "", GROUP)).text == texts.ASK_WHAT
    retried = await chat.command(ALICE, "retry", where=GROUP)
    assert retried.text == "asked" and retried.outcome == "answered"
    assert len(await chat.service.history(key)) == 2  # a branch, not a new turn
    assert (await chat.command(ALICE, "cancel", where=GROUP)).text == texts.NOTHING_TO_CANCEL
    shown = await chat.command(ALICE, "persona", where=GROUP)
    assert "You are a test bot." in shown.text
    assert (await chat.command(ALICE, "persona", "Be a pirate.", GROUP)).text == texts.PERSONA_SET
    assert await chat.service.get_persona(key) == "Be a pirate."
    assert (await chat.command(ALICE, "persona", "reset", GROUP)).text == texts.PERSONA_RESET
    assert await chat.service.get_persona(key) == "You are a test bot."
    stats = await chat.command(ALICE, "stats", where=GROUP)
    assert stats.text.startswith("Turns: 2\nMessages: 3\n")
    refused = await chat.command(ALICE, "model", where=GROUP)
    assert refused.texts == [REFUSALS[Refusal.ADMIN_ONLY]]
    listing = await chat.command(ADA, "model", where=GROUP)
    assert listing.text == texts.models_listing(["scripted"], "scripted")
    assert (await chat.command(ADA, "model", "scripted", GROUP)).text == "Model set to scripted."
    unknown = await chat.command(ADA, "model", "nope", GROUP)
    assert unknown.text.startswith("Unknown model 'nope'")
    assert (await chat.command(ALICE, "reset", where=GROUP)).text == texts.RESET_DONE
    assert await chat.service.history(key) == []
    await chat.say(BOB, "Bob was here.", GROUP)
    bob_rows = await chat.service.store.all_messages(chat.key(BOB, GROUP))
    forgot = await chat.command(ALICE, "forget", where=GROUP)
    assert forgot.text == texts.forgotten(3)
    assert await chat.service.store.all_messages(key) == []
    assert await chat.service.store.all_messages(chat.key(BOB, GROUP)) == bob_rows


async def test_cancel_stops_the_answer_in_progress(chat: ChatDriver) -> None:
    engine = engine_of(chat)
    engine.gate.clear()
    pending = await chat.send(ALICE, "long:400", GROUP)
    await engine.wait_running(1)
    assert (await chat.command(ALICE, "cancel", where=GROUP)).text == texts.CANCELLING
    engine.gate.set()
    stopped = await pending.reply()
    assert stopped.outcome == "stopped" and stopped.text.endswith(texts.STOPPED)
    assert chat.service is not None
    history = await chat.service.history(chat.key(ALICE, GROUP))
    assert [t.role for t in history] == ["user"]  # no half answer stored


async def test_retry_with_nothing_to_retry_explains_itself(chat: ChatDriver) -> None:
    reply = await chat.command(CAROL, "retry", where=GROUP)
    assert reply.text == "There is nothing to retry yet."
