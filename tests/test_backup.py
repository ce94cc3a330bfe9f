"""``finechat backup`` and the copy kept before a schema upgrade: real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core import memory
from core.backup import backup_database
from core.cli import main
from core.errors import InvalidInput
from core.memory import MemoryStore


async def test_backup_while_the_store_is_open_holds_every_committed_turn(tmp_path: Path) -> None:
    db = tmp_path / "live.sqlite"
    store = await MemoryStore.open(db)
    try:
        for i in range(20):
            await store.add_message("cli:a", "user", f"turn {i}", tokens=2)
        info = backup_database(db, tmp_path / "copy.sqlite")  # the store keeps its connection
        await store.add_message("cli:a", "user", "after the backup", tokens=2)
    finally:
        await store.aclose()
    assert info.schema_version == memory.SCHEMA_VERSION
    copy = await MemoryStore.open(info.path)
    try:
        texts = [t.text for t in await copy.all_messages("cli:a")]
    finally:
        await copy.aclose()
    assert texts == [f"turn {i}" for i in range(20)]  # the snapshot, not the later write


def test_backup_refuses_to_overwrite_or_copy_onto_itself(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite"
    sqlite3.connect(db).close()
    target = tmp_path / "b.sqlite"
    target.write_text("precious")
    with pytest.raises(InvalidInput, match="--force"):
        backup_database(db, target)
    assert target.read_text() == "precious"
    with pytest.raises(InvalidInput):
        backup_database(db, db, overwrite=True)
    with pytest.raises(InvalidInput, match="no database"):
        backup_database(tmp_path / "missing.sqlite", tmp_path / "c.sqlite")


def test_backup_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "m.sqlite"
    assert (
        main(["ask", "x", "--user", "a", "--db", str(db), "--backend-url", "http://127.0.0.1:9"])
        == 1
    )
    assert main(["backup", str(tmp_path / "b.sqlite"), "--db", str(db)]) == 0
    assert "schema v" in capsys.readouterr().out
    assert main(["backup", str(tmp_path / "b.sqlite"), "--db", str(db)]) == 1
    assert "--force" in capsys.readouterr().err


async def test_an_upgrade_keeps_the_old_file(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:  # a database as the first release wrote it
        conn.executescript(memory._MIGRATIONS[0] + "\nPRAGMA user_version=1;")
        conn.execute(
            "INSERT INTO conversations (key, platform, created_at) VALUES ('cli:a', 'cli', 1)"
        )
    store = await MemoryStore.open(db)
    try:
        assert await store.schema_version() == memory.SCHEMA_VERSION
    finally:
        await store.aclose()
    kept = tmp_path / "old.sqlite.v1.bak"
    with sqlite3.connect(kept) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT key FROM conversations").fetchall() == [("cli:a",)]
