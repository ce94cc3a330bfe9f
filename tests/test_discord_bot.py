"""The real discord.py client, run by the Discord front-end, against a fake Discord on 127.0.0.1.

Every scenario drives the bot through the gateway (MESSAGE_CREATE / INTERACTION_CREATE) and
asserts on the REST calls the fake received, the messages it holds and the SQLite memory, with
the real bundled model answering greedily.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bots.discord_frontend import DiscordFrontend, DiscordStartError
from core.config import ChatConfig, DiscordConfig, GenerationConfig, Secret
from core.llama_engine import LlamaEngine
from core.memory import MemoryStore
from core.service import ChatService
from tests.fakes.discord_api import (
    ALICE,
    BOB,
    BOT_ID,
    CAROL,
    CHANNEL_ID,
    GUILD_ID,
    OTHER_BOT,
    OTHER_CHANNEL_ID,
    ROLE_ID,
    TOKEN,
    Call,
    FakeDiscord,
    allowed_mentions_pinging,
)

pytestmark = pytest.mark.slow

MENTION = f"<@{BOT_ID}>"
CREATE = r"/channels/\d+/messages"
EDIT = r"/channels/\d+/messages/\d+"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    f = FakeDiscord()
    await f.start()
    yield f
    await f.stop()


def config_for(fake: FakeDiscord, **overrides: Any) -> DiscordConfig:
    return replace(
        DiscordConfig(),
        token=Secret(TOKEN),
        api_base_url=fake.url,
        gateway_url=fake.gateway_url,
        guild_ids=(GUILD_ID,),
        **overrides,
    )


@asynccontextmanager
async def running(cfg: DiscordConfig, service: ChatService) -> AsyncIterator[DiscordFrontend]:
    frontend = DiscordFrontend(cfg, service, guild_ready_timeout=0.05)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(frontend.run(stop, ready))
    ready_wait = asyncio.create_task(ready.wait())
    await asyncio.wait({task, ready_wait}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    ready_wait.cancel()
    if task.done():
        task.result()  # raise the start error
    assert ready.is_set(), "the bot did not become ready"
    try:
        yield frontend
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def reply_in(bot: DiscordFrontend, store: MemoryStore, key: str, n_answers: int) -> str:
    """Wait until ``key`` has ``n_answers`` stored answers delivered to Discord (their message
    id recorded); return the newest answer's text."""
    chat = bot.client.chat

    async def settled() -> str | None:
        answers = [t for t in await store.all_messages(key) if t.role == "assistant"]
        if len(answers) < n_answers or answers[-1].platform_message_id is None:
            return None
        return answers[-1].text

    while True:
        seen = chat.delivered
        text = await settled()
        if text is not None:
            return text
        await chat.wait_delivered(seen + 1, limit=120)


def content_of(fake: FakeDiscord, message_id: str | None) -> str:
    assert message_id is not None
    return str(fake.messages[int(message_id)]["content"])


async def expected_reply(engine: LlamaEngine, tmp_path: Path, text: str, **gen: Any) -> str:
    """The model's greedy reply to ``text`` as a fresh conversation, from a separate store."""
    store = await MemoryStore.open(tmp_path / "reference.sqlite")
    try:
        svc = make_service(engine, store, **gen)
        return (await svc.ask("discord:1:1", text)).text
    finally:
        await store.aclose()


def make_service(engine: LlamaEngine, store: MemoryStore, **gen: Any) -> ChatService:
    return ChatService(
        engine,
        store,
        chat=ChatConfig(system_prompt="You are a helpful assistant.", max_input_chars=20000),
        generation=replace(GenerationConfig(temperature=0.0, max_tokens=24, seed=1), **gen),
    )


# -- scenarios --------------------------------------------------------------------------------


async def test_mention_streams_the_greedy_reply_fast(
    fake: FakeDiscord, service: ChatService, store: MemoryStore, engine: LlamaEngine, tmp_path: Path
) -> None:
    question = "What is the capital of France?"
    want = await expected_reply(engine, tmp_path, question)
    async with running(config_for(fake), service) as bot:
        mid = await fake.user_message(ALICE, f"{MENTION} {question}", mentions=[BOT_ID])
        key = f"discord:{CHANNEL_ID}:{ALICE}"
        got = await reply_in(bot, store, key, 1)
    assert got == want
    answer = next(t for t in await store.all_messages(key) if t.role == "assistant")
    assert content_of(fake, answer.platform_message_id) == want
    user_turn = next(t for t in await store.all_messages(key) if t.role == "user")
    assert user_turn.text == question and user_turn.platform_message_id == str(mid)
    creates = fake.find("POST", CREATE)
    assert len(creates) == 1
    ref = creates[0].body["message_reference"]
    assert str(ref["message_id"]) == str(mid)
    assert fake.find("POST", r"/channels/\d+/typing"), "no typing indicator"
    assert fake.commands[str(GUILD_ID)], "slash commands were not synced to the guild"
    assert {c["name"] for c in fake.commands[str(GUILD_ID)]} == {
        "reset",
        "retry",
        "cancel",
        "forget",
        "persona",
        "stats",
        "model",
    }
    latency = creates[0].at - fake.dispatched_at[mid]
    print(f"\nMESSAGE_CREATE -> first create-message: {latency * 1000:.1f} ms")


async def test_latency_vs_ttft(fake: FakeDiscord, service: ChatService, store: MemoryStore) -> None:
    """First create-message arrives within the model's TTFT + 50 ms of MESSAGE_CREATE."""
    from core.service import Done

    async with running(config_for(fake), service) as bot:
        # Warm-up turn (connection pools, first-call costs), then five measured turns.
        results: list[tuple[float, float]] = []
        for i in range(6):
            key = f"discord:{CHANNEL_ID}:{ALICE}"
            await service.reset(key)
            n_before = len(fake.find("POST", CREATE))
            mid = await fake.user_message(
                ALICE, f"{MENTION} Tell me a fact about the number {i}.", mentions=[BOT_ID]
            )
            await reply_in(bot, store, key, i + 1)
            first = fake.find("POST", CREATE)[n_before]
            latency = first.at - fake.dispatched_at[mid]
            done: Done | None = bot.client.chat.last_done
            assert done is not None
            assert done.ttft_seconds is not None
            if i:
                results.append((latency, done.ttft_seconds))
    for latency, ttft in results:
        print(f"\nMESSAGE_CREATE->create {latency * 1000:.1f} ms, TTFT {ttft * 1000:.1f} ms")
    median_over = sorted(lat - ttft for lat, ttft in results)[len(results) // 2]
    assert median_over <= 0.050, results


async def test_unmentioned_and_bot_messages_are_ignored(
    fake: FakeDiscord, service: ChatService, store: MemoryStore
) -> None:
    async with running(config_for(fake), service) as bot:
        await fake.user_message(ALICE, "just chatting with friends")
        await fake.user_message(OTHER_BOT, f"{MENTION} hello bot", mentions=[BOT_ID])
        await fake.user_message(ALICE, f"{MENTION} Say hi.", mentions=[BOT_ID])
        await reply_in(bot, store, f"discord:{CHANNEL_ID}:{ALICE}", 1)
    turns = await store.all_messages(f"discord:{CHANNEL_ID}:{ALICE}")
    assert [t.text for t in turns if t.role == "user"] == ["Say hi."]
    assert await store.all_messages(f"discord:{CHANNEL_ID}:{OTHER_BOT}") == []
    assert len(fake.find("POST", CREATE)) == 1


async def test_reply_chain_branches_from_an_older_answer(
    fake: FakeDiscord, service: ChatService, store: MemoryStore
) -> None:
    key = f"discord:{CHANNEL_ID}:{ALICE}"
    async with running(config_for(fake), service) as bot:
        await fake.user_message(ALICE, f"{MENTION} My favourite colour is blue.", mentions=[BOT_ID])
        await reply_in(bot, store, key, 1)
        await fake.user_message(ALICE, f"{MENTION} I also like cats.", mentions=[BOT_ID])
        await reply_in(bot, store, key, 2)
        first_answer = next(t for t in await store.all_messages(key) if t.role == "assistant")
        assert first_answer.platform_message_id is not None
        # A reply (no mention) to the first answer continues from there: a branch.
        await fake.user_message(
            ALICE, "What colour did I say?", reply_to=int(first_answer.platform_message_id)
        )
        await reply_in(bot, store, key, 3)
    newest = [t for t in await store.all_messages(key) if t.role == "assistant"][-1]
    chain = [t.text for t in await store.chain(newest.id)]
    assert chain[0] == "My favourite colour is blue."
    assert chain[1] == first_answer.text
    assert chain[2] == "What colour did I say?"
    assert "I also like cats." not in chain


async def test_direct_messages_and_allow_dms(
    fake: FakeDiscord, service: ChatService, store: MemoryStore
) -> None:
    dm = await fake.open_dm(BOB)
    async with running(config_for(fake), service) as bot:
        await fake.user_message(BOB, "Hello there, who are you?", channel_id=dm, guild=False)
        await reply_in(bot, store, f"discord:{dm}:{BOB}", 1)
    assert len(fake.bot_messages(dm)) == 1
    # With DMs off, one short refusal and no model call.
    async with running(config_for(fake, allow_dms=False), service) as bot:
        await fake.user_message(CAROL, "Hi!", channel_id=dm + 1, guild=False)
        refusal = await fake.wait_for(lambda _: fake.bot_messages(dm + 1))
    assert "direct messages" in refusal[0]["content"]
    assert await store.all_messages(f"discord:{dm + 1}:{CAROL}") == []


async def test_thread_the_bot_joined_needs_no_mention(
    fake: FakeDiscord, service: ChatService, store: MemoryStore
) -> None:
    async with running(config_for(fake), service) as bot:
        joined = await fake.create_thread(joined=True)
        other = await fake.create_thread(joined=False)
        await fake.user_message(BOB, "Name a fruit.", channel_id=other)
        await fake.user_message(BOB, "Name a fruit.", channel_id=joined)
        await reply_in(bot, store, f"discord:{joined}:{BOB}", 1)
    assert fake.bot_messages(joined) and not fake.bot_messages(other)
    assert await store.all_messages(f"discord:{other}:{BOB}") == []


async def test_two_users_in_one_channel_have_separate_memory(
    fake: FakeDiscord, service: ChatService, store: MemoryStore
) -> None:
    async with running(config_for(fake), service) as bot:
        await asyncio.gather(
            fake.user_message(ALICE, f"{MENTION} My name is Alice.", mentions=[BOT_ID]),
            fake.user_message(BOB, f"{MENTION} My name is Bob.", mentions=[BOT_ID]),
        )
        await reply_in(bot, store, f"discord:{CHANNEL_ID}:{ALICE}", 1)
        await reply_in(bot, store, f"discord:{CHANNEL_ID}:{BOB}", 1)
    alice = [t.text for t in await store.history(f"discord:{CHANNEL_ID}:{ALICE}")]
    bob = [t.text for t in await store.history(f"discord:{CHANNEL_ID}:{BOB}")]
    assert alice[0] == "My name is Alice." and "My name is Bob." not in alice
    assert bob[0] == "My name is Bob." and "My name is Alice." not in bob


async def test_long_answer_is_split_in_three_keeping_code_fences(
    fake: FakeDiscord, engine: LlamaEngine, store: MemoryStore
) -> None:
    # This prompt makes SmolLM2 write deeply indented JSON; indentation tokens are long, so
    # ~950 tokens give over 4,000 characters inside one never-closed ```json block.
    service = make_service(engine, store, max_tokens=975, repeat_penalty=1.0)
    key = f"discord:{CHANNEL_ID}:{ALICE}"
    async with running(config_for(fake), service) as bot:
        await fake.user_message(
            ALICE,
            f"{MENTION} Write a deeply nested JSON document in a code block.",
            mentions=[BOT_ID],
        )
        answer = await reply_in(bot, store, key, 1)
    assert len(answer) > 4000
    chunks = [m["content"] for m in fake.bot_messages(CHANNEL_ID)]
    assert len(chunks) == 3
    for chunk in chunks:
        assert len(chunk) <= 2000
        fences = [ln for ln in chunk.split("\n") if ln.strip().startswith("```")]
        assert len(fences) % 2 == 0, "a message leaves a code block open"
    assert chunks[1].startswith("```json") and chunks[2].startswith("```json")
    squash = lambda s: re.sub(r"```(json)?|\s", "", s)  # noqa: E731
    assert squash("".join(chunks)) == squash(answer)


@pytest.mark.parametrize("like_discord", [True, False], ids=["discord-429", "bare-proxy-429"])
async def test_rate_limit_mid_stream_honours_retry_after(
    fake: FakeDiscord, engine: LlamaEngine, store: MemoryStore, like_discord: bool
) -> None:
    service = make_service(engine, store, max_tokens=200)
    key = f"discord:{CHANNEL_ID}:{ALICE}"
    fake.rate_limit_next("PATCH", EDIT, retry_after=0.6, like_discord=like_discord)
    async with running(config_for(fake, edit_interval=0.2), service) as bot:
        await fake.user_message(
            ALICE, f"{MENTION} Write a short story about a lighthouse keeper.", mentions=[BOT_ID]
        )
        answer = await reply_in(bot, store, key, 1)
    edits = [c for c in fake.calls if c.method == "PATCH"]
    limited = [c for c in edits if c.status == 429]
    assert len(limited) == 1
    retried = next(c for c in edits if c.at > limited[0].at and c.path == limited[0].path)
    assert 0.6 - 0.005 <= retried.at - limited[0].at <= 0.6 + 0.15  # retry_after, exactly
    ok = [c for c in edits if c.status == 200]
    gaps = [b.at - a.at for a, b in itertools.pairwise(ok)]
    assert all(g >= 0.19 for g in gaps), gaps  # the pacer spaced every edit
    (message,) = fake.bot_messages(CHANNEL_ID)
    assert message["content"] == answer  # the final text was not lost


async def test_final_text_survives_a_deleted_message(
    fake: FakeDiscord, engine: LlamaEngine, store: MemoryStore
) -> None:
    service = make_service(engine, store, max_tokens=120)
    key = f"discord:{CHANNEL_ID}:{ALICE}"
    async with running(config_for(fake, edit_interval=0.2), service) as bot:
        await fake.user_message(ALICE, f"{MENTION} Describe a sunset at sea.", mentions=[BOT_ID])
        await fake.wait_for(lambda _: fake.find("POST", CREATE))
        fake.messages.clear()  # a moderator deletes the half-streamed answer
        answer = await reply_in(bot, store, key, 1)
    assert any(c.status == 404 for c in fake.calls if c.method == "PATCH")
    (message,) = fake.bot_messages(CHANNEL_ID)
    assert message["content"] == answer
    stored = next(t for t in await store.all_messages(key) if t.role == "assistant")
    assert stored.platform_message_id == message["id"]


async def test_everyone_in_model_output_pings_nobody(
    fake: FakeDiscord, service: ChatService, store: MemoryStore
) -> None:
    key = f"discord:{CHANNEL_ID}:{ALICE}"
    async with running(config_for(fake), service) as bot:
        await fake.user_message(
            ALICE, f"{MENTION} Repeat exactly: @everyone the server is down", mentions=[BOT_ID]
        )
        answer = await reply_in(bot, store, key, 1)
    assert "@everyone" in answer
    writes = [c for c in fake.calls if re.fullmatch(f"{CREATE}|{EDIT}", c.path)]
    assert writes and not any(allowed_mentions_pinging(c) for c in writes)
    assert all(c.body["allowed_mentions"]["parse"] == [] for c in writes)


async def test_slash_commands(fake: FakeDiscord, service: ChatService, store: MemoryStore) -> None:
    key = f"discord:{CHANNEL_ID}:{ALICE}"
    cfg = config_for(fake, admin_ids=(BOB,))

    def callbacks(token: str) -> list[Call]:
        return [c for c in fake.calls if f"/{token}/callback" in c.path]

    async def answer_of(token: str) -> dict[str, Any]:
        calls = await fake.wait_for(lambda _: callbacks(token))
        return dict(calls[0].body)

    async with running(cfg, service) as bot:
        # /retry with nothing to retry: the service's explanation, in the deferred response.
        token = await fake.interaction(CAROL, "retry")
        await bot.client.chat.wait_delivered(1)
        original = next(m for m in fake.messages.values() if m.get("interaction_token") == token)
        assert "nothing to retry" in original["content"]

        await fake.user_message(ALICE, f"{MENTION} Say hello.", mentions=[BOT_ID])
        first = await reply_in(bot, store, key, 1)

        # /retry: deferred, then the new answer streams into the original response.
        token = await fake.interaction(ALICE, "retry")
        assert (await answer_of(token))["type"] == 5
        await reply_in(bot, store, key, 2)
        answers = [t for t in await store.all_messages(key) if t.role == "assistant"]
        assert answers[0].text == first and answers[1].parent_id == answers[0].parent_id
        assert content_of(fake, answers[1].platform_message_id) == answers[1].text

        # /persona set, then show (ephemeral).
        token = await fake.interaction(ALICE, "persona", {"text": "You are a pirate."})
        body = await answer_of(token)
        assert body["data"]["flags"] & 64 and "Persona set" in body["data"]["content"]
        assert await service.get_persona(key) == "You are a pirate."
        token = await fake.interaction(ALICE, "persona")
        assert "You are a pirate." in (await answer_of(token))["data"]["content"]

        # /stats
        token = await fake.interaction(ALICE, "stats")
        stats = (await answer_of(token))["data"]
        assert stats["flags"] & 64 and "Messages: 3" in stats["content"]

        # /cancel with nothing running
        token = await fake.interaction(ALICE, "cancel")
        assert "not writing" in (await answer_of(token))["data"]["content"]

        # /model: refused for a non-admin, works for an admin.
        token = await fake.interaction(ALICE, "model", {"name": service.model_name})
        assert "admins" in (await answer_of(token))["data"]["content"]
        token = await fake.interaction(BOB, "model", {"name": service.model_name})
        assert "Model set" in (await answer_of(token))["data"]["content"]
        bob_key = f"discord:{CHANNEL_ID}:{BOB}"
        assert (await store.get_profile(bob_key)).settings["model"] == service.model_name
        token = await fake.interaction(BOB, "model", {"name": "nope"})
        assert "Unknown model" in (await answer_of(token))["data"]["content"]

        # /reset: a new conversation.
        token = await fake.interaction(ALICE, "reset")
        assert "New conversation" in (await answer_of(token))["data"]["content"]
        assert await store.history(key) == []

        # /forget: the user's rows in this channel are gone, Bob's are not.
        assert await store.all_messages(key)
        bob_rows = await store.all_messages(bob_key)
        token = await fake.interaction(ALICE, "forget")
        assert "Deleted" in (await answer_of(token))["data"]["content"]
        assert await store.all_messages(key) == []
        assert await store.get_profile(key) == (await store.get_profile("discord:0:0"))
        assert await store.all_messages(bob_key) == bob_rows


async def test_cancel_stops_a_running_answer(
    fake: FakeDiscord, engine: LlamaEngine, store: MemoryStore
) -> None:
    service = make_service(engine, store, max_tokens=400)
    key = f"discord:{CHANNEL_ID}:{ALICE}"
    async with running(config_for(fake), service):
        await fake.user_message(
            ALICE, f"{MENTION} Write a long essay about rivers.", mentions=[BOT_ID]
        )
        await fake.wait_for(lambda _: fake.find("POST", CREATE))  # streaming has started
        token = await fake.interaction(ALICE, "cancel")
        calls = await fake.wait_for(lambda _: [c for c in fake.calls if token in c.path])
        assert "Stopped" in calls[0].body["data"]["content"]
        final = await fake.wait_for(
            lambda _: [m for m in fake.bot_messages(CHANNEL_ID) if "(stopped)" in m["content"]]
        )
    assert final
    assert [t for t in await store.all_messages(key) if t.role == "assistant"] == []


async def test_access_refusal(fake: FakeDiscord, service: ChatService, store: MemoryStore) -> None:
    cfg = config_for(fake, allowed_roles=(ROLE_ID,), blocked_channels=(OTHER_CHANNEL_ID,))
    async with running(cfg, service):
        await fake.user_message(BOB, f"{MENTION} hi", mentions=[BOT_ID])  # BOB lacks the role
        refused = await fake.wait_for(lambda _: fake.bot_messages(CHANNEL_ID))
        await fake.user_message(BOB, f"{MENTION} hi again", mentions=[BOT_ID])  # no 2nd note
        await fake.user_message(
            ALICE, f"{MENTION} hi", mentions=[BOT_ID], channel_id=OTHER_CHANNEL_ID
        )
        refused_channel = await fake.wait_for(lambda _: fake.bot_messages(OTHER_CHANNEL_ID))
        token = await fake.interaction(BOB, "stats")
        calls = await fake.wait_for(lambda _: [c for c in fake.calls if token in c.path])
    assert len(refused) == 1 and "not allowed" in refused[0]["content"]
    assert len(fake.bot_messages(CHANNEL_ID)) == 2  # one refusal for BOB + the /stats answer
    assert "channel" in refused_channel[0]["content"]
    assert calls[0].body["data"]["flags"] & 64 and "not allowed" in calls[0].body["data"]["content"]
    assert await store.all_messages(f"discord:{CHANNEL_ID}:{BOB}") == []
    assert await store.all_messages(f"discord:{OTHER_CHANNEL_ID}:{ALICE}") == []


async def test_restart_keeps_memory_and_branches(
    fake: FakeDiscord, engine: LlamaEngine, tmp_path: Path
) -> None:
    db = tmp_path / "restart.sqlite"
    key = f"discord:{CHANNEL_ID}:{ALICE}"
    store = await MemoryStore.open(db)
    try:
        async with running(config_for(fake), make_service(engine, store)) as bot:
            await fake.user_message(
                ALICE, f"{MENTION} Remember the word: banana.", mentions=[BOT_ID]
            )
            await reply_in(bot, store, key, 1)
            await fake.user_message(ALICE, f"{MENTION} Now say goodbye.", mentions=[BOT_ID])
            await reply_in(bot, store, key, 2)
    finally:
        await store.aclose()
    store = await MemoryStore.open(db)  # a new process would do exactly this
    try:
        first = next(t for t in await store.all_messages(key) if t.role == "assistant")
        assert first.platform_message_id is not None
        fake.messages.pop(int(first.platform_message_id))  # Discord's cache is cold too
        async with running(config_for(fake), make_service(engine, store)) as bot:
            await fake.user_message(ALICE, "Which word?", reply_to=int(first.platform_message_id))
            await reply_in(bot, store, key, 3)
        newest = [t for t in await store.all_messages(key) if t.role == "assistant"][-1]
        chain = [t.text for t in await store.chain(newest.id)]
    finally:
        await store.aclose()
    assert chain[:3] == ["Remember the word: banana.", first.text, "Which word?"]
    assert fake.identify_count == 2


async def test_queue_position_shown_while_the_engine_is_full(
    fake: FakeDiscord, engine: LlamaEngine, store: MemoryStore
) -> None:
    service = make_service(engine, store, max_tokens=200, repeat_penalty=1.0)
    busy = "Write a deeply nested JSON document in a code block."
    slots = getattr(engine, "n_slots", 1)
    fillers = [(u, c) for u in (ALICE, BOB) for c in (CHANNEL_ID, OTHER_CHANNEL_ID)][:slots]
    assert len(fillers) == slots, "the test engine has more slots than this test fills"
    async with running(config_for(fake), service) as bot:
        for user_id, channel_id in fillers:
            await fake.user_message(
                user_id, f"{MENTION} {busy}", mentions=[BOT_ID], channel_id=channel_id
            )
        # Every slot is generating once each filler's first message is out.
        await fake.wait_for(lambda _: len(fake.find("POST", CREATE)) >= slots)
        mid = await fake.user_message(CAROL, f"{MENTION} Say hi.", mentions=[BOT_ID])
        first = await fake.wait_for(
            lambda _: [
                c
                for c in fake.find("POST", CREATE)[slots:]
                if str(c.body.get("message_reference", {}).get("message_id")) == str(mid)
            ]
        )
        await reply_in(bot, store, f"discord:{CHANNEL_ID}:{CAROL}", 1)
    assert "ahead of you" in first[0].body["content"]
    answer = next(
        t
        for t in await store.all_messages(f"discord:{CHANNEL_ID}:{CAROL}")
        if t.role == "assistant"
    )
    assert content_of(fake, answer.platform_message_id) == answer.text


async def test_auto_thread_per_conversation(
    fake: FakeDiscord, service: ChatService, store: MemoryStore
) -> None:
    async with running(config_for(fake, auto_thread=True), service) as bot:
        mid = await fake.user_message(ALICE, f"{MENTION} Plan a picnic for me.", mentions=[BOT_ID])
        made = await fake.wait_for(
            lambda _: fake.find("POST", rf"/channels/\d+/messages/{mid}/threads")
        )
        assert made[0].body["name"] == "Plan a picnic for me."
        thread_id = max(fake.threads)
        key = f"discord:{thread_id}:{ALICE}"
        await reply_in(bot, store, key, 1)
        # Inside the bot's own thread no mention is needed.
        await fake.user_message(ALICE, "Add sandwiches.", channel_id=thread_id)
        await reply_in(bot, store, key, 2)
    assert len(fake.bot_messages(thread_id)) == 2 and not fake.bot_messages(CHANNEL_ID)
    assert [t.text for t in await store.history(key) if t.role == "user"] == [
        "Plan a picnic for me.",
        "Add sandwiches.",
    ]


async def test_auto_thread_without_permission_answers_in_the_channel(
    fake: FakeDiscord, service: ChatService, store: MemoryStore
) -> None:
    fake.forbid_threads = True
    async with running(config_for(fake, auto_thread=True), service) as bot:
        await fake.user_message(ALICE, f"{MENTION} Say hi.", mentions=[BOT_ID])
        answer = await reply_in(bot, store, f"discord:{CHANNEL_ID}:{ALICE}", 1)
    assert [m["content"] for m in fake.bot_messages(CHANNEL_ID)] == [answer]


async def test_errors_become_short_messages_and_lose_nothing(
    fake: FakeDiscord, engine: LlamaEngine, store: MemoryStore, tmp_path: Path
) -> None:
    service = ChatService(
        engine,
        store,
        chat=ChatConfig(max_input_chars=40),
        generation=GenerationConfig(temperature=0.0, max_tokens=300),
    )
    key = f"discord:{CHANNEL_ID}:{ALICE}"
    async with running(config_for(fake), service) as bot:
        # Too long: the service's own clear message, nothing stored.
        await fake.user_message(ALICE, f"{MENTION} {'word ' * 20}", mentions=[BOT_ID])
        await bot.client.chat.wait_delivered(1)
        assert "too long" in fake.bot_messages(CHANNEL_ID)[-1]["content"]
        assert await store.all_messages(key) == []
        # Busy: a second message while the first is answered gets the "still answering" note.
        await fake.user_message(ALICE, f"{MENTION} Tell me a long story.", mentions=[BOT_ID])
        await fake.wait_for(lambda _: len(fake.find("POST", CREATE)) >= 2)
        await fake.user_message(ALICE, f"{MENTION} Hello?", mentions=[BOT_ID])
        await bot.client.chat.wait_delivered(3)
        notes = [m["content"] for m in fake.bot_messages(CHANNEL_ID)]
        assert any("still answering" in n for n in notes)
    # An internal failure (the database is gone) becomes an apology, never a traceback.
    broken = await MemoryStore.open(tmp_path / "broken.sqlite")
    await broken.aclose()
    async with running(config_for(fake), make_service(engine, broken)) as bot:
        await fake.user_message(BOB, f"{MENTION} hi", mentions=[BOT_ID])
        await bot.client.chat.wait_delivered(1)
    last = fake.bot_messages(CHANNEL_ID)[-1]["content"]
    assert last.startswith("Sorry") and "Traceback" not in last and "Error" not in last


async def test_serve_exits_nonzero_on_a_bad_token(fake: FakeDiscord, service: ChatService) -> None:
    from core.serve import run_frontends

    frontend = DiscordFrontend(replace(config_for(fake), token=Secret("nope")), service)
    code = await asyncio.wait_for(run_frontends([frontend], asyncio.Event(), start_timeout=20), 20)
    assert code == 1


async def test_bad_token_fails_fast_without_echoing_it(
    fake: FakeDiscord, service: ChatService
) -> None:
    secret = "wrong-token-SECRET"
    cfg = replace(config_for(fake), token=Secret(secret))
    frontend = DiscordFrontend(cfg, service)
    with pytest.raises(DiscordStartError) as err:
        await asyncio.wait_for(frontend.run(asyncio.Event(), asyncio.Event()), 10)
    assert "token was rejected" in str(err.value) and secret not in str(err.value)


async def test_missing_message_content_intent_is_explained(
    fake: FakeDiscord, service: ChatService
) -> None:
    fake.message_content_enabled = False
    frontend = DiscordFrontend(config_for(fake), service, guild_ready_timeout=0.05)
    with pytest.raises(DiscordStartError, match="MESSAGE CONTENT INTENT"):
        await asyncio.wait_for(frontend.run(asyncio.Event(), asyncio.Event()), 20)
