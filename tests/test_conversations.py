"""A person's conversation list, edits, 👍/👎 and exports, on real SQLite (and the real model).

These are the core methods the web chat's sidebar and the bots' ``/export`` call; the page
itself is driven in tests/test_web_conversations.py and tests/test_web_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ConversationBusy, InvalidInput
from core.memory import SCHEMA_VERSION, MemoryStore, Turn, auto_title
from core.service import ChatService, Delta, Done
from core.transcript import conversation_markdown, fenced, safe_filename, tree_order

KEY = "web:anon-" + "x" * 22


def _file_bytes(path: str) -> bytes:
    """The database file and its WAL, as bytes (to prove deleted text is gone from disk)."""
    return b"".join(
        Path(f"{path}{s}").read_bytes() for s in ("", "-wal") if Path(f"{path}{s}").exists()
    )


async def _talk(store: MemoryStore, key: str, *pairs: str) -> list[Turn]:
    """Store user/assistant pairs as the service would (each continuing the previous)."""
    turns: list[Turn] = []
    parent = None
    for i, text in enumerate(pairs):
        turn = await store.add_message(
            key, "user" if i % 2 == 0 else "assistant", text, parent_id=parent
        )
        parent = turn.id
        turns.append(turn)
    return turns


async def test_migration_v5_adds_titles_and_feedback(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # a database from before this version (schema v3)
        db.executescript(
            "CREATE TABLE conversations (id INTEGER PRIMARY KEY, key TEXT NOT NULL,"
            " platform TEXT NOT NULL, created_at REAL NOT NULL, ended_at REAL);"
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL,"
            " role TEXT NOT NULL, text TEXT NOT NULL, tokens INTEGER, parent_id INTEGER,"
            " platform_message_id TEXT, model TEXT, created_at REAL NOT NULL, latency REAL);"
            "CREATE TABLE profiles (key TEXT PRIMARY KEY, persona TEXT,"
            " settings TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL);"
            "CREATE TABLE votes (id INTEGER PRIMARY KEY, key TEXT, prompt TEXT, model_a TEXT,"
            " model_b TEXT, settings_a TEXT, settings_b TEXT, answer_a TEXT, answer_b TEXT,"
            " winner TEXT, created_at REAL);"
            "INSERT INTO conversations VALUES (1, 'cli:old', 'cli', 1.0, NULL);"
            "INSERT INTO messages VALUES (1, 1, 'user', 'kept text', 2, NULL, NULL, NULL, 1.0,"
            " NULL);"
            "PRAGMA user_version = 3;"
        )
    store = await MemoryStore.open(path)
    try:
        assert await store.schema_version() == SCHEMA_VERSION >= 5
        (summary,) = await store.list_conversations("cli:old")
        assert summary.title == "kept text" and summary.custom_title is None
        assert (await store.get_message(1)) == Turn(1, 1, "user", "kept text", 2, None, 1.0)
    finally:
        await store.aclose()
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE messages SET feedback = 7 WHERE id = 1")


async def test_a_database_that_skipped_v5_gets_its_columns(tmp_path: Path) -> None:
    """Built while v5 was an empty placeholder: at v6 without titles and feedback."""
    path = tmp_path / "skipped.sqlite"
    store = await MemoryStore.open(path)
    await store.add_message("cli:a", "user", "hello")
    await store.aclose()
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX messages_feedback")
        db.execute("ALTER TABLE messages DROP COLUMN feedback")
        db.execute("ALTER TABLE conversations DROP COLUMN title")
    store = await MemoryStore.open(path)
    try:
        (conv,) = await store.list_conversations("cli:a")
        assert await store.rename("cli:a", conv.id, "kept") and conv.title == "hello"
        assert [t.text for t in await store.history("cli:a")] == ["hello"]
    finally:
        await store.aclose()


async def test_the_list_is_newest_first_with_titles_and_one_active(store: MemoryStore) -> None:
    await _talk(store, KEY, "Plan a trip to Lisbon", "Sure.")
    await store.reset(KEY)
    await _talk(store, KEY, "  What is\n a   monad? " + "really " * 20, "A monoid...")
    await store.add_message("web:someone-else", "user", "not mine")
    first, second = await store.list_conversations(KEY)
    assert first.title.startswith("What is a monad? really") and first.title.endswith("…")
    assert len(first.title) <= 61 and first.active and not second.active
    assert second.title == "Plan a trip to Lisbon" and second.messages == 2

    # Resuming the older one makes it active; new messages go there and it moves to the top.
    assert await store.resume(KEY, second.id)
    await store.add_message(KEY, "user", "And Porto?")
    top, _ = await store.list_conversations(KEY)
    assert top.id == second.id and top.active and top.messages == 3

    assert await store.rename(KEY, second.id, "Portugal")
    assert (await store.list_conversations(KEY))[0].title == "Portugal"
    assert await store.rename(KEY, second.id, None)  # back to automatic
    assert (await store.list_conversations(KEY))[0].title == "Plan a trip to Lisbon"


async def test_nobody_reaches_another_persons_conversation(store: MemoryStore) -> None:
    mine = await _talk(store, KEY, "secret plans", "ok")
    other = "web:anon-" + "y" * 22
    conv = mine[0].conversation_id
    assert not await store.resume(other, conv)
    assert not await store.rename(other, conv, "pwned")
    assert await store.delete_conversation(other, conv) is None
    assert await store.conversation_turns(other, conv) is None
    assert not await store.set_feedback(other, mine[1].id, 1)
    assert not await store.set_feedback(KEY, mine[0].id, 1)  # only answers take feedback
    assert (await store.list_conversations(KEY))[0].title == "secret plans"
    assert len(await store.all_messages(KEY)) == 2


async def test_delete_removes_the_text_from_the_file(store: MemoryStore) -> None:
    keep = await _talk(store, KEY, "keep the gooseberry", "fine")
    await store.reset(KEY)
    gone = await _talk(store, KEY, "forget the quokkaplan", "done")
    await store.rename(KEY, gone[0].conversation_id, "quokkatitle")
    assert await store.delete_conversation(KEY, gone[0].conversation_id) == 2
    assert [c.id for c in await store.list_conversations(KEY)] == [keep[0].conversation_id]
    raw = await asyncio.to_thread(_file_bytes, store.path)
    assert b"quokka" not in raw and b"gooseberry" in raw
    # The next message starts a fresh conversation (the deleted one was active).
    turn = await store.add_message(KEY, "user", "hello again")
    assert turn.conversation_id != keep[0].conversation_id
    assert [t.text for t in await store.history(KEY)] == ["hello again"]


async def test_forget_and_prune_take_titles_feedback_and_votes(store: MemoryStore) -> None:
    from core.memory import Vote

    turns = await _talk(store, KEY, "old words", "old answer")
    await store.rename(KEY, turns[0].conversation_id, "oldtitle")
    await store.set_feedback(KEY, turns[1].id, 1)
    await store.add_vote(Vote(KEY, "arena prompt", "m", "m", "a", answer_a="x", answer_b="y"))
    later = await _talk(store, "web:other", "new words", "new answer")
    await store.set_feedback("web:other", later[1].id, -1)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE messages SET created_at = 1 WHERE conversation_id = ?",
                   (turns[0].conversation_id,))  # fmt: skip
        db.execute("UPDATE conversations SET created_at = 1 WHERE key = ?", (KEY,))
        db.execute("UPDATE votes SET created_at = 1")
    report = await store.prune_report(time.time() - 3600)
    assert (report.conversations, report.messages, report.votes) == (1, 2, 1)
    with sqlite3.connect(store.path) as db:
        assert db.execute(
            "SELECT COUNT(*) FROM conversations WHERE title IS NOT NULL"
        ).fetchone() == (0,)
        assert db.execute(
            "SELECT feedback FROM messages WHERE feedback IS NOT NULL"
        ).fetchall() == [(-1,)]
        assert db.execute("SELECT COUNT(*) FROM votes").fetchone() == (0,)

    await store.rename("web:other", later[0].conversation_id, "othertitle")
    assert await store.forget("web:other") == 2
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM conversations").fetchone() == (0,)


async def test_person_keys_cover_every_chat_of_one_person(store: MemoryStore) -> None:
    for key in ("telegram:42:42", "telegram:-100:42", "telegram:-100:420", "discord:5:42",
                "telegram:%:42", "telegram:_:4_2"):  # fmt: skip
        await store.add_message(key, "user", "hi")
    assert await store.person_keys("telegram", "42") == [
        "telegram:%:42",
        "telegram:-100:42",
        "telegram:42:42",
    ]
    assert await store.person_keys("telegram", "4_2") == ["telegram:_:4_2"]
    assert await store.person_keys("telegram", "%") == []


def test_auto_titles() -> None:
    assert auto_title(None) == "New conversation"
    assert auto_title(" \n\t ") == "New conversation"
    assert auto_title("Hi\nthere") == "Hi there"
    word = "x" * 100
    assert auto_title(word) == "x" * 60 + "…"


async def test_edit_makes_a_branch_and_feedback_sticks(service: ChatService) -> None:
    key = "cli:editor"
    first = await service.ask(key, "Name a fruit.")
    second = await service.ask(key, "Name a colour.")
    assert first.message_id and second.message_id

    events = [e async for e in service.edit(key, "Name an animal.", settings={"max_tokens": 8})]
    done = events[-1]
    assert isinstance(done, Done) and done.message_id and any(isinstance(e, Delta) for e in events)
    history = await service.history(key)
    assert [t.text for t in history if t.role == "user"] == ["Name a fruit.", "Name an animal."]
    everything = await service.store.all_messages(key)
    assert [t.text for t in everything if t.role == "user"] == [
        "Name a fruit.",
        "Name a colour.",
        "Name an animal.",
    ]  # the old message and its answer stay, as another branch
    edited = next(t for t in everything if t.text == "Name an animal.")
    old = next(t for t in everything if t.text == "Name a colour.")
    assert edited.parent_id == old.parent_id == first.message_id

    # Editing the very first message starts a second tree in the same conversation.
    async for _ in service.edit(key, "Name a planet.", message_id=history[0].id):
        pass
    assert (await service.history(key))[0].text == "Name a planet."

    await service.set_feedback(key, second.message_id, 1)
    await service.set_feedback(key, first.message_id, -1)
    stored = {t.id: t.feedback for t in await service.store.all_messages(key)}
    assert stored[second.message_id] == 1 and stored[first.message_id] == -1
    await service.set_feedback(key, first.message_id, None)
    assert (await service.store.get_message(first.message_id)).feedback is None  # type: ignore[union-attr]
    with pytest.raises(InvalidInput):
        await service.set_feedback(key, first.message_id, 5)
    with pytest.raises(InvalidInput):
        await service.set_feedback("cli:someone", second.message_id, 1)
    with pytest.raises(InvalidInput, match="another conversation"):
        async for _ in service.edit("cli:someone", "x", message_id=old.id):
            pass
    with pytest.raises(InvalidInput, match="nothing|no message"):
        async for _ in service.edit("cli:empty", "x"):
            pass


async def test_deleting_while_answering_is_refused(service: ChatService) -> None:
    key = "cli:busy"
    await service.ask(key, "Hi.")
    (conv,) = await service.conversations(key)
    stream = service.reply(key, "Tell me a long story.", settings={"max_tokens": 200})
    await anext(stream)
    try:
        with pytest.raises(ConversationBusy):
            await service.delete_conversation(key, conv.id)
    finally:
        await stream.aclose()
    assert await service.delete_conversation(key, conv.id) >= 2
    with pytest.raises(InvalidInput, match="no longer here"):
        await service.open_conversation(key, conv.id)


async def test_titles_are_one_clean_line_and_limited(service: ChatService) -> None:
    key = "cli:titles"
    await service.ask(key, "Hello there.")
    (conv,) = await service.conversations(key)
    assert await service.rename_conversation(key, conv.id, " My\n\x00 <b>trip</b> \t") == (
        "My <b>trip</b>"
    )
    assert await service.rename_conversation(key, conv.id, "x\ud800y") == "x\ufffdy"
    assert await service.rename_conversation(key, conv.id, "   ") == "Hello there."
    with pytest.raises(InvalidInput, match="too long"):
        await service.rename_conversation(key, conv.id, "t" * 101)
    with pytest.raises(InvalidInput, match="no longer here"):
        await service.rename_conversation(key, conv.id + 999, "x")


async def test_exports_keep_every_branch_and_no_key(service: ChatService) -> None:
    key = "telegram:77:77"
    await service.ask(key, "Say `hi` <script>x</script> # not a heading")
    async for _ in service.retry(key, settings={"temperature": 1.5, "max_tokens": 8}):
        pass
    answers = [t for t in await service.store.all_messages(key) if t.role == "assistant"]
    await service.set_feedback(key, answers[0].id, 1)
    await service.set_feedback(key, answers[1].id, -1)
    await service.reset(key)
    await service.ask("telegram:-100:77", "In a group: ```fence``` escape?")
    await service.ask("telegram:-100:78", "someone else")

    keys = await service.person_keys("telegram", 77)
    assert keys == ["telegram:-100:77", "telegram:77:77"]
    md = await service.export_markdown(keys)
    assert "telegram" not in md and ":77" not in md and "-100" not in md  # no key, no ids
    assert "someone else" not in md
    assert md.count("### 1 · You") == 2  # two conversations, each numbered from 1
    assert "👍" in md and "👎" in md and "another branch, following message 1" in md
    assert "```text\nSay `hi` <script>x</script> # not a heading\n```" in md
    assert "````text\nIn a group: ```fence``` escape?\n````" in md

    (conv, *_) = await service.conversations(key)
    data = await service.conversation_json(key, conv.id)
    assert data["format"] == "finechat.conversation.v1"
    roles = [m["role"] for m in data["messages"]]
    assert roles == ["user", "assistant", "assistant"]
    assert [m["feedback"] for m in data["messages"]] == [None, "up", "down"]
    assert data["current_branch"] == [data["messages"][0]["id"], data["messages"][2]["id"]]
    assert json.loads(json.dumps(data)) == data
    single = await service.conversation_markdown(key, conv.id)
    assert single.startswith("# Say \\`hi\\` \\<script\\>x\\</script\\> \\# not a heading\n")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_fenced_text_can_never_close_its_fence(text: str) -> None:
    block = fenced(text)
    fence = block.split("text\n", 1)[0]
    body = block[len(fence) + 5 : -len(fence) - 1]
    assert body == text
    assert not re.search(rf"(^|\n)[ ]{{0,3}}{fence}", body)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["user", "assistant"])), max_size=40))
def test_markdown_of_any_tree_lists_every_message_once(shape: list[tuple[int, str]]) -> None:
    from core.memory import ConversationSummary

    turns = [
        Turn(i + 1, 1, role, f"m{i + 1}", None, parent or None, 1.0)  # parents may dangle
        for i, (parent, role) in enumerate(shape)
    ]
    ordered = tree_order(turns)
    assert sorted(t.id for t in ordered) == [t.id for t in turns]
    md = conversation_markdown(
        ConversationSummary(1, "k", None, "", 1.0, 1.0, len(turns), True), turns
    )
    for t in turns:
        assert md.count(f"\n{t.text}\n") == 1


def test_download_names_are_plain() -> None:
    assert safe_filename("Trip to Lisbon!", ".md") == "Trip-to-Lisbon.md"
    assert safe_filename("../../etc/passwd", ".json") == "etc-passwd.json"
    assert safe_filename("🙂", ".md") == "conversation.md"


async def test_renames_deletions_and_feedback_count_as_settings_changes(
    store: MemoryStore,
) -> None:
    from core.config import ChatConfig, GenerationConfig, LimitsConfig
    from core.errors import LimitExceeded
    from tests.fakes.scripted_engine import ScriptedEngine

    limited = ChatService(
        ScriptedEngine("Fine."),
        store,
        chat=ChatConfig(system_prompt="Be brief."),
        generation=GenerationConfig(max_tokens=16),
        limits=LimitsConfig(settings_per_minute=2, replies_per_minute=0),
    )
    key = "web:anon-" + "l" * 22
    done = await limited.ask(key, "Hello.")
    (conv,) = await limited.conversations(key)
    assert done.message_id is not None
    await limited.set_feedback(key, done.message_id, 1)
    await limited.rename_conversation(key, conv.id, "Mine")
    with pytest.raises(LimitExceeded):
        await limited.delete_conversation(key, conv.id)
    with pytest.raises(LimitExceeded):
        await limited.rename_conversation(key, conv.id, "Other")
    assert (await limited.conversations(key))[0].title == "Mine"  # nothing changed
