"""Which platform messages an answer went out as, and conversation keys with forum topics."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from core.keys import user_key
from core.memory import _MIGRATIONS, SCHEMA_VERSION, MemoryStore, platform_of
from core.service import ChatService
from tests.harness.engine import ScriptedEngine

KEY = "telegram:-100:7"
TOPIC_KEY = "telegram:-100/42:7"


async def _answer(store: MemoryStore, key: str) -> int:
    user = await store.add_message(key, "user", "hi", platform_message_id="1")
    turn = await store.add_message(key, "assistant", "hello", parent_id=user.id)
    return turn.id


async def test_every_message_of_an_answer_leads_back_to_it(tmp_path: Path) -> None:
    store = await MemoryStore.open(tmp_path / "m.sqlite")
    try:
        service = ChatService(ScriptedEngine(), store)
        turn = await _answer(store, KEY)
        await service.record_delivery(turn, ["10", "11", "12"])
        assert await store.deliveries(turn) == ["10", "11", "12"]
        assert (await store.get_message(turn)).platform_message_id == "12"  # type: ignore[union-attr]
        for part in ("10", "11", "12"):
            assert await service.parent_turn(KEY, part) == turn
        assert await service.parent_turn("telegram:-100:8", "11") is None  # someone else's
        assert await service.parent_turn(TOPIC_KEY, "11") is None  # another topic
        assert await service.delivered_as("telegram:", "10")
        assert not await service.delivered_as("discord:", "10")
        await service.record_delivery(turn, ["13"])  # delivered again: replaces the record
        assert await service.parent_turn(KEY, "10") is None
        assert await service.parent_turn(KEY, "13") == turn
        await service.forget(KEY)
        assert await service.parent_turn(KEY, "13") is None
        assert await store.deliveries(turn) == []
    finally:
        await store.aclose()


async def test_answers_stored_before_v6_keep_their_message(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    for version, script in enumerate(_MIGRATIONS[:3], start=1):
        con.executescript(script + f"\nPRAGMA user_version={version};")
    con.execute(
        "INSERT INTO conversations (key, platform, created_at) VALUES (?, 'telegram', 0)", (KEY,)
    )
    con.execute(
        "INSERT INTO messages (conversation_id, role, text, created_at, platform_message_id)"
        " VALUES (1, 'assistant', 'old answer', 0, '77')"
    )
    con.commit()
    con.close()
    store = await MemoryStore.open(db)
    try:
        assert await store.schema_version() == SCHEMA_VERSION
        found = await store.find_delivery("77", key=KEY)
        assert found is not None and found.text == "old answer"
    finally:
        await store.aclose()


async def test_forum_topic_keys_are_their_own_conversations(tmp_path: Path) -> None:
    assert platform_of(TOPIC_KEY) == "telegram"
    assert user_key(TOPIC_KEY) == TOPIC_KEY  # finechat forget --user telegram:CHAT/TOPIC:USER
    store = await MemoryStore.open(tmp_path / "m.sqlite")
    try:
        await _answer(store, KEY)
        await _answer(store, TOPIC_KEY)
        assert await store.forget(TOPIC_KEY) == 2
        assert len(await store.all_messages(KEY)) == 2  # the chat's General topic untouched
        await _answer(store, TOPIC_KEY)
        assert await store.forget(KEY) == 2
        assert len(await store.all_messages(TOPIC_KEY)) == 2
    finally:
        await store.aclose()
