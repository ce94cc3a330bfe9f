"""Conversation memory on real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from core.memory import SCHEMA_VERSION, MemoryStore, StoreError


async def test_survives_close_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite"
    s = await MemoryStore.open(db)
    u = await s.add_message("telegram:1:2", "user", "hello", tokens=2)
    await s.add_message("telegram:1:2", "assistant", "hi there", parent_id=u.id)
    await s.set_persona("telegram:1:2", "a pirate")
    await s.aclose()

    s2 = await MemoryStore.open(db)
    turns = await s2.history("telegram:1:2")
    assert [(t.role, t.text) for t in turns] == [("user", "hello"), ("assistant", "hi there")]
    assert (await s2.get_profile("telegram:1:2")).persona == "a pirate"
    assert await s2.schema_version() == SCHEMA_VERSION
    await s2.aclose()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_fifty_interleaved_users_stay_isolated(store: MemoryStore) -> None:
    keys = [f"discord:chan{i % 5}:user{i}" for i in range(50)]

    async def converse(key: str) -> None:
        parent = None
        for n in range(4):
            t = await store.add_message(key, "user", f"{key} says {n}", parent_id=parent)
            a = await store.add_message(key, "assistant", f"reply to {key} {n}", parent_id=t.id)
            parent = a.id
            await asyncio.sleep(0)

    await asyncio.gather(*(converse(k) for k in keys))
    for key in keys:
        turns = await store.history(key)
        assert len(turns) == 8
        assert all(key in t.text for t in turns), key


async def test_platform_is_part_of_the_key(store: MemoryStore) -> None:
    await store.add_message("telegram:5:5", "user", "tg")
    await store.add_message("discord:5:5", "user", "dc")
    assert [t.text for t in await store.history("telegram:5:5")] == ["tg"]
    assert [t.text for t in await store.history("discord:5:5")] == ["dc"]
    with pytest.raises(ValueError):
        await store.add_message("nokey", "user", "x")


async def test_reset_keeps_history_on_disk(store: MemoryStore) -> None:
    key = "web:alice"
    await store.add_message(key, "user", "first")
    assert await store.reset(key)
    assert await store.history(key) == []
    await store.add_message(key, "user", "second")
    assert [t.text for t in await store.history(key)] == ["second"]
    assert [t.text for t in await store.all_messages(key)] == ["first", "second"]


async def test_reply_chains_branch(store: MemoryStore) -> None:
    key = "discord:c:u"
    u1 = await store.add_message(key, "user", "q1")
    a1 = await store.add_message(key, "assistant", "a1", parent_id=u1.id)
    u2 = await store.add_message(key, "user", "q2", parent_id=a1.id)
    await store.add_message(key, "assistant", "a2", parent_id=u2.id)
    # a reply to the older answer a1 branches off
    u3 = await store.add_message(key, "user", "q3", parent_id=a1.id)
    chain = await store.chain(u3.id)
    assert [t.text for t in chain] == ["q1", "a1", "q3"]


async def test_migrates_an_empty_file_and_refuses_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer"):
        await MemoryStore.open(db)


async def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "junk.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open memory database"):
        await MemoryStore.open(db)


async def test_settings_merge(store: MemoryStore) -> None:
    key = "cli:x"
    assert await store.update_settings(key, {"temperature": 0.2}) == {"temperature": 0.2}
    assert await store.update_settings(key, {"max_tokens": 9}) == {
        "temperature": 0.2,
        "max_tokens": 9,
    }
    assert await store.update_settings(key, {"temperature": None}) == {"max_tokens": 9}
