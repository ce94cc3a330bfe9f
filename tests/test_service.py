"""The chat service end to end on the real model and a real SQLite file."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import ConversationBusy, InvalidInput
from core.service import ChatService, Delta, Done, Started


async def test_turns_are_stored_and_history_is_per_user(service: ChatService) -> None:
    done = await service.ask("cli:a", "Hello, who are you?")
    assert done.text and done.message_id is not None
    assert done.finish_reason in {"stop", "length"}
    hist = await service.history("cli:a")
    assert [(t.role, t.text) for t in hist] == [
        ("user", "Hello, who are you?"),
        ("assistant", done.text),
    ]
    assert await service.history("cli:b") == []


async def test_second_turn_reuses_the_kv_prefix(service: ChatService) -> None:
    first = await service.ask("cli:kv", "My name is Ada. Remember it.")
    second = await service.ask("cli:kv", "What is my name?")
    assert second.prompt_tokens > first.prompt_tokens
    # the whole first turn was already in the KV cache
    assert second.cached_tokens >= first.prompt_tokens


async def test_stream_events_in_order(service: ChatService) -> None:
    events = [e async for e in service.reply("cli:s", "Say something nice.")]
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Done)
    deltas = [e.text for e in events if isinstance(e, Delta)]
    assert deltas
    assert "".join(deltas).strip() == events[-1].text


async def test_second_message_while_answering_is_refused(service: ChatService) -> None:
    gen = service.reply("cli:busy", "Count from one to fifty in words.")
    first = await gen.__anext__()
    assert isinstance(first, Started)
    with pytest.raises(ConversationBusy, match="/cancel"):
        await service.ask("cli:busy", "hello?")
    # other users are not blocked by it
    other = asyncio.create_task(service.ask("cli:other", "hi"))
    rest = [e async for e in gen]
    assert isinstance(rest[-1], Done)
    assert (await other).text
    # and afterwards the first user can talk again
    assert (await service.ask("cli:busy", "thanks")).text


async def test_cancel_leaves_no_half_turn(service: ChatService) -> None:
    key = "cli:cancel"
    events = []
    async for event in service.reply(key, "Count from one to one hundred in words."):
        events.append(event)
        if sum(isinstance(e, Delta) for e in events) == 2:
            assert service.cancel(key)
    done = events[-1]
    assert isinstance(done, Done)
    assert done.finish_reason == "cancelled"
    assert done.message_id is None
    hist = await service.history(key)
    assert [t.role for t in hist] == ["user"]
    assert not service.busy(key)


async def test_killed_task_leaves_no_half_turn(service: ChatService) -> None:
    key = "cli:killed"
    got_delta = asyncio.Event()

    async def consume() -> None:
        async for event in service.reply(key, "Count from one to one hundred in words."):
            if isinstance(event, Delta):
                got_delta.set()

    task = asyncio.create_task(consume())
    await got_delta.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [t.role for t in await service.history(key)] == ["user"]
    assert not service.busy(key)
    # the next turn works and both user turns are in the prompt (merged, not lost)
    done = await service.ask(key, "Just say OK.")
    assert done.text
    assert [t.role for t in await service.history(key)] == ["user", "user", "assistant"]


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("\x00\x01\x02", "empty"),
        ("x" * 1_000_000, "too long"),
        (b"\xff\xfe\xfa bad bytes", "UTF-8"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_stored(
    service: ChatService, payload: str | bytes, match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        await service.ask("cli:bad", payload)
    assert await service.history("cli:bad") == []
    assert not service.busy("cli:bad")
    assert (await service.ask("cli:bad", "still there?")).text


async def test_control_characters_are_removed_not_fatal(service: ChatService) -> None:
    done = await service.ask("cli:ctl", "he\x00llo\x07 there")
    assert done.text
    assert (await service.history("cli:ctl"))[0].text == "hello there"


async def test_too_long_for_context_is_a_clear_error(service: ChatService) -> None:
    # fits the character limit but not the 1024-token test context
    with pytest.raises(InvalidInput, match="too long for this model"):
        await service.ask("cli:ctx", "word " * 3000)
    assert await service.history("cli:ctx") == []  # the refused message is not kept


async def test_old_turns_are_dropped_and_reported(service: ChatService) -> None:
    key = "cli:long"
    filler = "The quick brown fox jumps over the lazy dog. " * 20  # ~200 tokens
    dropped = 0
    for i in range(6):
        events = [e async for e in service.reply(key, f"{i}: {filler}")]
        started = events[0]
        assert isinstance(started, Started)
        dropped = started.dropped_turns
        assert started.prompt_tokens <= 1024 - 24
    assert dropped > 0
    # whole turns only: the prompt never starts with an assistant message
    assert len(await service.history(key)) == 12


async def test_persona_changes_the_system_prompt(service: ChatService) -> None:
    key = "cli:persona"
    assert await service.get_persona(key) == "You are a helpful assistant."
    await service.set_persona(key, "You are a pirate. Always say Arr.")
    assert await service.get_persona(key) == "You are a pirate. Always say Arr."
    a = await service.ask(key, "Greet me.")
    b = await service.ask("cli:nopersona", "Greet me.")
    assert a.prompt_tokens > b.prompt_tokens
    await service.set_persona(key, "")
    assert await service.get_persona(key) == "You are a helpful assistant."


async def test_retry_makes_a_branch(service: ChatService) -> None:
    key = "cli:retry"
    first = await service.ask(key, "Tell me a fun fact.")
    events = [e async for e in service.retry(key, settings={"temperature": 1.2, "seed": 5})]
    done = events[-1]
    assert isinstance(done, Done) and done.message_id != first.message_id
    hist = await service.history(key)
    assert [t.role for t in hist] == ["user", "assistant"]
    assert hist[-1].id == done.message_id


async def test_settings_validation(service: ChatService) -> None:
    with pytest.raises(InvalidInput, match="temperature"):
        await service.update_settings("cli:set", {"temperature": 99})
    with pytest.raises(InvalidInput, match="Unknown setting"):
        await service.update_settings("cli:set", {"bogus": 1})
    assert await service.update_settings("cli:set", {"max_tokens": 8}) == {"max_tokens": 8}
    done = await service.ask("cli:set", "Count from one to one hundred in words.")
    assert done.completion_tokens <= 8


async def test_bad_key_is_refused(service: ChatService) -> None:
    with pytest.raises(InvalidInput, match="platform"):
        await service.ask("no-platform", "hi")
