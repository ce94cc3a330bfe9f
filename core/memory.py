"""Per-user conversation memory in one SQLite file (WAL), through aiosqlite.

A *key* names whose memory it is and always starts with the platform
(``telegram:chat:user``, ``discord:channel:user``, ``web:login``, ``cli:name``), because the
same numeric id on two platforms is two different people. Messages form a tree through
``parent_id``: a turn continues from its parent, so reply chains (and regenerated answers)
are branches rather than overwrites. A reset ends the active conversation but deletes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from core.backup import backup_database
from core.errors import FinechatError
from core.template import Role

log = logging.getLogger("finechat.memory")

_MIGRATIONS: list[str] = [
    # v1: conversations, messages (a tree through parent_id), per-key profiles.
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        platform TEXT NOT NULL,
        created_at REAL NOT NULL,
        ended_at REAL
    );
    CREATE INDEX conversations_key ON conversations(key, id);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        text TEXT NOT NULL,
        tokens INTEGER,
        parent_id INTEGER REFERENCES messages(id) ON DELETE SET NULL,
        platform_message_id TEXT,
        model TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX messages_conversation ON messages(conversation_id, id);
    CREATE INDEX messages_platform_id ON messages(platform_message_id);
    CREATE TABLE profiles (
        key TEXT PRIMARY KEY,
        persona TEXT,
        settings TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL
    );
    """,
    # v2: arena votes (web/arena.py): which of two answers to one prompt a visitor preferred.
    """
    CREATE TABLE votes (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        prompt TEXT NOT NULL,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        settings_a TEXT NOT NULL DEFAULT '{}',
        settings_b TEXT NOT NULL DEFAULT '{}',
        answer_a TEXT NOT NULL DEFAULT '',
        answer_b TEXT NOT NULL DEFAULT '',
        winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
        created_at REAL NOT NULL
    );
    CREATE INDEX votes_models ON votes(model_a, model_b);
    """,
    # v3: how long each answer took (``finechat stats`` shows the slowest).
    """
    ALTER TABLE messages ADD COLUMN latency REAL;
    CREATE INDEX messages_created ON messages(created_at);
    """,
    # v4: per-installation values (the log-hash salt) and per-person usage (core/limits.py).
    # ``person`` is a keyed hash of the person's id: the table says how much, never who.
    """
    CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        person TEXT NOT NULL,
        platform TEXT NOT NULL,
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        tokens INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX usage_person ON usage(person, kind, at);
    CREATE INDEX usage_at ON usage(at);
    """,
    # v5: conversation titles (NULL = automatic, from the first user message) and feedback on
    # answers (1 = thumbs up, -1 = thumbs down). Both live in rows that forget/prune delete.
    """
    ALTER TABLE conversations ADD COLUMN title TEXT;
    ALTER TABLE messages ADD COLUMN feedback INTEGER CHECK (feedback IN (-1, 1));
    CREATE INDEX messages_feedback ON messages(feedback) WHERE feedback IS NOT NULL;
    """,
    # v6: every platform message an answer was delivered as (a long answer is several
    # messages; a reply to any of them continues that turn). Earlier answers keep the one
    # id they had.
    """
    CREATE TABLE IF NOT EXISTS deliveries (
        message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        part INTEGER NOT NULL,
        platform_message_id TEXT NOT NULL,
        PRIMARY KEY (message_id, part)
    );
    CREATE INDEX IF NOT EXISTS deliveries_platform_id ON deliveries(platform_message_id);
    INSERT OR IGNORE INTO deliveries (message_id, part, platform_message_id)
        SELECT id, 0, platform_message_id FROM messages
        WHERE role = 'assistant' AND platform_message_id IS NOT NULL;
    """,
]

SCHEMA_VERSION = len(_MIGRATIONS)


class StoreError(FinechatError):
    """The memory database cannot be opened or used."""


@dataclass(frozen=True)
class Turn:
    """One stored message."""

    id: int
    conversation_id: int
    role: Role
    text: str
    tokens: int | None
    parent_id: int | None
    created_at: float
    platform_message_id: str | None = None
    model: str | None = None
    feedback: int | None = None
    """On an answer: 1 (thumbs up), -1 (thumbs down) or None."""


MAX_TITLE_CHARS = 100
AUTO_TITLE_CHARS = 60


def auto_title(first_user_text: str | None) -> str:
    """A conversation's automatic title: its first user message on one line, cut short."""
    text = " ".join((first_user_text or "").split())
    if not text:
        return "New conversation"
    if len(text) <= AUTO_TITLE_CHARS:
        return text
    cut = text[:AUTO_TITLE_CHARS].rsplit(" ", 1)[0] if " " in text[:AUTO_TITLE_CHARS] else ""
    return (cut if len(cut) >= AUTO_TITLE_CHARS // 2 else text[:AUTO_TITLE_CHARS]) + "…"


@dataclass(frozen=True)
class ConversationSummary:
    """One conversation in a person's list (newest activity first)."""

    id: int
    key: str
    custom_title: str | None
    """The title the person gave it, or None for the automatic one."""
    first_user_text: str
    """The start of its first user message (at most 200 characters)."""
    created_at: float
    updated_at: float
    """When its newest message was written."""
    messages: int
    active: bool
    """The conversation new messages go to."""

    @property
    def title(self) -> str:
        return self.custom_title or auto_title(self.first_user_text)


@dataclass(frozen=True)
class Vote:
    """One arena verdict: two answers to ``prompt`` and which one the visitor preferred.

    ``settings_*`` are the generation settings each side used (with one model, the arena
    compares settings such as temperature), so a contender is ``(model, settings)``.
    """

    key: str
    prompt: str
    model_a: str
    model_b: str
    winner: Literal["a", "b", "tie", "both_bad"]
    settings_a: Mapping[str, Any] = field(default_factory=dict)
    settings_b: Mapping[str, Any] = field(default_factory=dict)
    answer_a: str = ""
    answer_b: str = ""


@dataclass(frozen=True)
class Tally:
    """Arena results of one contender (a model with its settings, as JSON)."""

    model: str
    settings: dict[str, Any]
    wins: int
    losses: int
    ties: int

    @property
    def games(self) -> int:
        return self.wins + self.losses + self.ties


@dataclass(frozen=True)
class Profile:
    persona: str | None
    settings: dict[str, Any]


@dataclass(frozen=True)
class Deletion:
    """What ``forget``/``prune`` removed, and whether the WAL file was emptied afterwards.

    ``wal_truncated`` is False when another connection (a reader in another process) kept the
    checkpoint from finishing: the deleted text may then linger in the ``-wal`` file until a
    later checkpoint (the store retries on its next deletion and when it closes).
    """

    conversations: int
    messages: int
    profiles: int
    votes: int
    wal_truncated: bool


def platform_of(key: str) -> str:
    platform, sep, rest = key.partition(":")
    if not sep or not platform or not rest:
        raise ValueError(f"conversation key {key!r} must look like 'platform:id'")
    return platform


def _turn(row: Iterable[Any]) -> Turn:
    return Turn(*row)


_TURN_COLUMNS = (
    "id, conversation_id, role, text, tokens, parent_id, created_at, platform_message_id, model,"
    " feedback"
)

_M_TURN_COLUMNS = ", ".join("m." + c.strip() for c in _TURN_COLUMNS.split(","))


class MemoryStore:
    """The SQLite store. Open with ``await MemoryStore.open(path)``; close with ``aclose``."""

    #: How long a post-deletion checkpoint waits for other connections' readers.
    checkpoint_wait_s = 2.0

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self.path = path
        self._wal_dirty = False
        """A checkpoint after a deletion did not finish: retry on the next one and at close."""

    @classmethod
    async def open(cls, path: str | Path) -> MemoryStore:
        path = str(path)
        db: aiosqlite.Connection | None = None
        try:
            if path != ":memory:":
                await asyncio.to_thread(_ensure_parent, path)
            db = await aiosqlite.connect(path)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("PRAGMA synchronous=NORMAL")
            # Deleted rows (forget, prune) are zeroed on disk, not left in free pages.
            await db.execute("PRAGMA secure_delete=ON")
            store = cls(db, path)
            await store._migrate()
        except Exception as exc:  # sqlite3.DatabaseError and OSError alike
            if db is not None:
                await db.close()  # its worker thread would otherwise keep the process alive
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open memory database {path!r}: {exc}") from None
        return store

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema v{version} is newer than this finechat (v{SCHEMA_VERSION})"
            )
        if 0 < version < SCHEMA_VERSION and self.path != ":memory:":
            # An upgrade is one-way: keep the file as it was, next to it, before changing it.
            kept = f"{self.path}.v{version}.bak"
            await asyncio.to_thread(backup_database, self.path, kept, overwrite=True)
            log.warning(
                "upgrading %s from schema v%d to v%d; the old file is kept as %s",
                self.path,
                version,
                SCHEMA_VERSION,
                kept,
            )
        for target in range(version, SCHEMA_VERSION):
            await self._db.executescript(
                "BEGIN;\n" + _MIGRATIONS[target] + f"\nPRAGMA user_version={target + 1};\nCOMMIT;"
            )
        await self._repair_v5()

    async def _repair_v5(self) -> None:
        """Add v5's columns where a build with an empty v5 placeholder skipped them.

        Databases upgraded while v5 was reserved (an empty migration) are at v6 without the
        title and feedback columns; they get them here, once, with nothing else changed.
        """
        missing: list[str] = []
        for table, column, ddl in (
            ("conversations", "title", "ALTER TABLE conversations ADD COLUMN title TEXT"),
            (
                "messages",
                "feedback",
                "ALTER TABLE messages ADD COLUMN feedback INTEGER CHECK (feedback IN (-1, 1))",
            ),
        ):
            async with self._db.execute(f"PRAGMA table_info({table})") as cur:
                if column not in {str(r[1]) for r in await cur.fetchall()}:
                    missing.append(ddl + ";")
        if missing:
            log.warning("adding the conversation title and feedback columns (schema v5)")
            await self._db.executescript(
                "BEGIN;\n" + "\n".join(missing) + "\nCREATE INDEX IF NOT EXISTS messages_feedback"
                " ON messages(feedback) WHERE feedback IS NOT NULL;\nCOMMIT;"
            )

    async def aclose(self) -> None:
        if self._wal_dirty:
            await self._checkpoint()
        await self._db.close()

    # -- per-installation values -----------------------------------------------------------

    async def installation_salt(self) -> str:
        """A random secret made once per database (the log-hash salt when none is configured).

        Keyed hashes of chat ids with a public (empty) key can be reversed by hashing every
        plausible id; with this salt they cannot, and they stay stable across restarts.
        """
        async with self._db.execute("SELECT value FROM meta WHERE name = 'key_salt'") as cur:
            row = await cur.fetchone()
        if row:
            return str(row[0])
        await self._db.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES ('key_salt', ?)",
            (secrets.token_hex(32),),
        )
        await self._db.commit()
        async with self._db.execute("SELECT value FROM meta WHERE name = 'key_salt'") as cur:
            row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    # -- per-person usage (core/limits.py) -------------------------------------------------

    async def usage_add(
        self, person: str, platform: str, kind: str, at: float, tokens: int = 0
    ) -> int:
        cur = await self._db.execute(
            "INSERT INTO usage (person, platform, kind, at, tokens) VALUES (?, ?, ?, ?, ?)",
            (person, platform, kind, at, tokens),
        )
        await self._db.commit()
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    async def usage_set_tokens(self, usage_id: int, tokens: int) -> None:
        await self._db.execute("UPDATE usage SET tokens = ? WHERE id = ?", (tokens, usage_id))
        await self._db.commit()

    async def usage_delete(self, usage_id: int) -> None:
        await self._db.execute("DELETE FROM usage WHERE id = ?", (usage_id,))
        await self._db.commit()

    async def usage_events(self, person: str, kind: str, since: float) -> list[tuple[float, int]]:
        """(time, tokens) of ``person``'s events of ``kind`` after ``since``, oldest first."""
        async with self._db.execute(
            "SELECT at, tokens FROM usage WHERE person = ? AND kind = ? AND at > ? ORDER BY at",
            (person, kind, since),
        ) as cur:
            rows = await cur.fetchall()
        return [(float(r[0]), int(r[1])) for r in rows]

    async def usage_prune(self, before: float) -> None:
        await self._db.execute("DELETE FROM usage WHERE at < ?", (before,))
        await self._db.commit()

    async def usage_summary(self, since: float) -> list[dict[str, Any]]:
        """Per platform and kind since ``since``: events, people, completion tokens."""
        async with self._db.execute(
            "SELECT platform, kind, COUNT(*), COUNT(DISTINCT person), COALESCE(SUM(tokens), 0)"
            " FROM usage WHERE at > ? GROUP BY platform, kind ORDER BY platform, kind",
            (since,),
        ) as cur:
            rows = await cur.fetchall()
        names = ("platform", "kind", "events", "people", "tokens")
        return [dict(zip(names, r, strict=True)) for r in rows]

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- conversations ---------------------------------------------------------------------

    async def active_conversation(self, key: str, *, create: bool = True) -> int | None:
        """The id of ``key``'s current conversation (created on first use)."""
        platform = platform_of(key)
        async with self._db.execute(
            "SELECT id FROM conversations WHERE key = ? AND ended_at IS NULL"
            " ORDER BY id DESC LIMIT 1",
            (key,),
        ) as cur:
            row = await cur.fetchone()
        if row:
            return int(row[0])
        if not create:
            return None
        cur2 = await self._db.execute(
            "INSERT INTO conversations (key, platform, created_at) VALUES (?, ?, ?)",
            (key, platform, time.time()),
        )
        await self._db.commit()
        assert cur2.lastrowid is not None
        return int(cur2.lastrowid)

    async def reset(self, key: str) -> bool:
        """End the active conversation; history stays on disk. True if one was active."""
        cur = await self._db.execute(
            "UPDATE conversations SET ended_at = ? WHERE key = ? AND ended_at IS NULL",
            (time.time(), key),
        )
        await self._db.commit()
        return (cur.rowcount or 0) > 0

    async def conversation_key(self, conversation_id: int) -> str | None:
        async with self._db.execute(
            "SELECT key FROM conversations WHERE id = ?", (conversation_id,)
        ) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    # -- messages --------------------------------------------------------------------------

    async def add_message(
        self,
        key: str,
        role: Role,
        text: str,
        *,
        tokens: int | None = None,
        parent_id: int | None = None,
        conversation_id: int | None = None,
        platform_message_id: str | None = None,
        model: str | None = None,
        latency: float | None = None,
    ) -> Turn:
        """Append one message, committed before returning (``latency``: seconds to answer)."""
        if conversation_id is None:
            conversation_id = await self.active_conversation(key)
        now = time.time()
        cur = await self._db.execute(
            "INSERT INTO messages (conversation_id, role, text, tokens, parent_id,"
            " platform_message_id, model, created_at, latency)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conversation_id,
                role,
                text,
                tokens,
                parent_id,
                platform_message_id,
                model,
                now,
                latency,
            ),
        )
        await self._db.commit()
        assert cur.lastrowid is not None and conversation_id is not None
        return Turn(
            int(cur.lastrowid),
            conversation_id,
            role,
            text,
            tokens,
            parent_id,
            now,
            platform_message_id,
            model,
        )

    async def delete_message(self, message_id: int) -> None:
        await self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        await self._db.commit()

    async def get_message(self, message_id: int) -> Turn | None:
        async with self._db.execute(
            f"SELECT {_TURN_COLUMNS} FROM messages WHERE id = ?", (message_id,)
        ) as cur:
            row = await cur.fetchone()
        return _turn(row) if row else None

    async def find_by_platform_id(self, key_prefix: str, platform_message_id: str) -> Turn | None:
        """A message by its platform id, limited to conversations whose key starts with the prefix."""
        async with self._db.execute(
            f"SELECT {_M_TURN_COLUMNS} "
            "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE m.platform_message_id = ? AND c.key LIKE ? ESCAPE '\\' ORDER BY m.id DESC LIMIT 1",
            (platform_message_id, _like_prefix(key_prefix)),
        ) as cur:
            row = await cur.fetchone()
        return _turn(row) if row else None

    async def set_platform_message_id(self, message_id: int, platform_message_id: str) -> None:
        await self._db.execute(
            "UPDATE messages SET platform_message_id = ? WHERE id = ?",
            (platform_message_id, message_id),
        )
        await self._db.commit()

    async def set_deliveries(self, message_id: int, platform_message_ids: list[str]) -> None:
        """Record the platform messages an answer was delivered as, in order (replacing any
        earlier record); the last one is also the message's ``platform_message_id``."""
        await self._db.execute("DELETE FROM deliveries WHERE message_id = ?", (message_id,))
        await self._db.executemany(
            "INSERT INTO deliveries (message_id, part, platform_message_id) VALUES (?, ?, ?)",
            [(message_id, part, pid) for part, pid in enumerate(platform_message_ids)],
        )
        if platform_message_ids:
            await self._db.execute(
                "UPDATE messages SET platform_message_id = ? WHERE id = ?",
                (platform_message_ids[-1], message_id),
            )
        await self._db.commit()

    async def deliveries(self, message_id: int) -> list[str]:
        async with self._db.execute(
            "SELECT platform_message_id FROM deliveries WHERE message_id = ? ORDER BY part",
            (message_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]

    async def find_delivery(
        self, platform_message_id: str, *, key: str | None = None, key_prefix: str | None = None
    ) -> Turn | None:
        """The answer delivered as ``platform_message_id``, in conversation ``key`` or in
        conversations whose key starts with ``key_prefix`` (platform ids are not unique)."""
        if key is not None:
            where, arg = "c.key = ?", key
        elif key_prefix is not None:
            where, arg = "c.key LIKE ? ESCAPE '\\'", _like_prefix(key_prefix)
        else:
            raise ValueError("find_delivery needs key or key_prefix")
        async with self._db.execute(
            f"SELECT {_M_TURN_COLUMNS} FROM deliveries d"
            " JOIN messages m ON m.id = d.message_id"
            " JOIN conversations c ON c.id = m.conversation_id"
            f" WHERE d.platform_message_id = ? AND {where} ORDER BY m.id DESC LIMIT 1",
            (platform_message_id, arg),
        ) as cur:
            row = await cur.fetchone()
        return _turn(row) if row else None

    async def leaf(self, conversation_id: int) -> Turn | None:
        """The newest message of a conversation: where the next turn continues by default."""
        async with self._db.execute(
            f"SELECT {_TURN_COLUMNS} FROM messages WHERE conversation_id = ?"
            " ORDER BY id DESC LIMIT 1",
            (conversation_id,),
        ) as cur:
            row = await cur.fetchone()
        return _turn(row) if row else None

    async def chain(self, message_id: int, limit: int = 1000) -> list[Turn]:
        """The path from the root to ``message_id`` (oldest first), at most ``limit`` messages."""
        sql = f"""
            WITH RECURSIVE path(id, depth) AS (
                SELECT id, 0 FROM messages WHERE id = ?
                UNION ALL
                SELECT m.parent_id, p.depth + 1 FROM messages m JOIN path p ON m.id = p.id
                WHERE m.parent_id IS NOT NULL AND p.depth + 1 < ?
            )
            SELECT {_M_TURN_COLUMNS}
            FROM path JOIN messages m ON m.id = path.id ORDER BY path.depth DESC
        """
        async with self._db.execute(sql, (message_id, limit)) as cur:
            rows = await cur.fetchall()
        return [_turn(r) for r in rows]

    async def history(self, key: str, limit: int = 1000) -> list[Turn]:
        """The active conversation of ``key`` along its current branch, oldest first."""
        conv = await self.active_conversation(key, create=False)
        if conv is None:
            return []
        leaf = await self.leaf(conv)
        return [] if leaf is None else await self.chain(leaf.id, limit)

    async def all_messages(self, key: str) -> list[Turn]:
        """Every stored message of ``key`` across all its conversations (for export and audits)."""
        async with self._db.execute(
            f"SELECT {_M_TURN_COLUMNS} "
            "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.key = ? ORDER BY m.id",
            (key,),
        ) as cur:
            rows = await cur.fetchall()
        return [_turn(r) for r in rows]

    async def stats(self, key: str) -> dict[str, int]:
        async with self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(m.tokens), 0), "
            "COALESCE(SUM(m.role = 'assistant'), 0) FROM messages m "
            "JOIN conversations c ON c.id = m.conversation_id WHERE c.key = ?",
            (key,),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return {"messages": int(row[0]), "tokens": int(row[1]), "replies": int(row[2])}

    # -- a person's conversation list (web sidebar, /export) -------------------------------

    async def list_conversations(
        self, key: str, limit: int = 200, *, only: int | None = None
    ) -> list[ConversationSummary]:
        """``key``'s conversations that have messages, newest activity first."""
        active = await self.active_conversation(key, create=False)
        sql = f"""
            SELECT c.id, c.key, c.title,
                   (SELECT substr(u.text, 1, 200) FROM messages u
                    WHERE u.conversation_id = c.id AND u.role = 'user' ORDER BY u.id LIMIT 1),
                   c.created_at, MAX(m.created_at), COUNT(m.id)
            FROM conversations c JOIN messages m ON m.conversation_id = c.id
            WHERE c.key = ? {"AND c.id = ?" if only is not None else ""}
            GROUP BY c.id ORDER BY MAX(m.created_at) DESC, c.id DESC LIMIT ?
        """
        params = (key, only, max(0, limit)) if only is not None else (key, max(0, limit))
        async with self._db.execute(sql, params) as cur:
            rows = await cur.fetchall()
        return [
            ConversationSummary(
                id=int(r[0]),
                key=str(r[1]),
                custom_title=r[2],
                first_user_text=r[3] or "",
                created_at=float(r[4]),
                updated_at=float(r[5]),
                messages=int(r[6]),
                active=int(r[0]) == active,
            )
            for r in rows
        ]

    async def conversation_summary(
        self, key: str, conversation_id: int
    ) -> ConversationSummary | None:
        """One of ``key``'s conversations (None when it is not theirs or has no messages)."""
        found = await self.list_conversations(key, limit=1, only=conversation_id)
        return found[0] if found else None

    async def owns(self, key: str, conversation_id: int) -> bool:
        async with self._db.execute(
            "SELECT 1 FROM conversations WHERE id = ? AND key = ?", (conversation_id, key)
        ) as cur:
            return await cur.fetchone() is not None

    async def conversation_turns(self, key: str, conversation_id: int) -> list[Turn] | None:
        """Every message of one of ``key``'s conversations, all branches, oldest first."""
        if not await self.owns(key, conversation_id):
            return None
        async with self._db.execute(
            f"SELECT {_TURN_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [_turn(r) for r in rows]

    async def resume(self, key: str, conversation_id: int) -> bool:
        """Make one of ``key``'s conversations the active one again (False: not theirs)."""
        if not await self.owns(key, conversation_id):
            return False
        await self._db.execute(
            "UPDATE conversations SET ended_at = ? WHERE key = ? AND ended_at IS NULL AND id != ?",
            (time.time(), key, conversation_id),
        )
        await self._db.execute(
            "UPDATE conversations SET ended_at = NULL WHERE id = ?", (conversation_id,)
        )
        await self._db.commit()
        return True

    async def rename(self, key: str, conversation_id: int, title: str | None) -> bool:
        """Set a conversation's title (None: back to the automatic one); False: not theirs."""
        cur = await self._db.execute(
            "UPDATE conversations SET title = ? WHERE id = ? AND key = ?",
            (title, conversation_id, key),
        )
        await self._db.commit()
        return (cur.rowcount or 0) > 0

    async def delete_conversation(self, key: str, conversation_id: int) -> int | None:
        """Delete one of ``key``'s conversations with its messages; None when not theirs.

        Returns the number of messages deleted; pages are zeroed and the WAL truncated, as
        for :meth:`forget`.
        """
        if not await self.owns(key, conversation_id):
            return None
        cur = await self._db.execute(
            "DELETE FROM messages WHERE conversation_id = ?", (conversation_id,)
        )
        removed = cur.rowcount or 0
        await self._db.execute(
            "DELETE FROM conversations WHERE id = ? AND key = ?", (conversation_id, key)
        )
        await self._db.commit()
        await self._checkpoint()
        return removed

    async def set_feedback(self, key: str, message_id: int, value: int | None) -> bool:
        """Store 👍 (1), 👎 (-1) or nothing (None) on one of ``key``'s answers."""
        if value not in (1, -1, None):
            raise ValueError(f"feedback must be 1, -1 or None, not {value!r}")
        cur = await self._db.execute(
            "UPDATE messages SET feedback = ? WHERE id = ? AND role = 'assistant'"
            " AND conversation_id IN (SELECT id FROM conversations WHERE key = ?)",
            (value, message_id, key),
        )
        await self._db.commit()
        return (cur.rowcount or 0) > 0

    async def person_keys(self, platform: str, user_id: str) -> list[str]:
        """Keys of one person on one platform: ``platform:user`` and ``platform:PLACE:user``.

        Telegram and Discord keys are ``platform:chat:user``, one per chat, so a person's data
        spreads over several keys (their private chat and every group).
        """
        async with self._db.execute(
            "SELECT DISTINCT key FROM conversations WHERE key = ? OR key LIKE ? ESCAPE '\\'"
            " ORDER BY key",
            (f"{platform}:{user_id}", _like_prefix(platform + ":") + _like_escape(":" + user_id)),
        ) as cur:
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows if str(r[0]).rsplit(":", 1)[-1] == user_id]

    # -- profiles --------------------------------------------------------------------------

    async def get_profile(self, key: str) -> Profile:
        async with self._db.execute(
            "SELECT persona, settings FROM profiles WHERE key = ?", (key,)
        ) as cur:
            row = await cur.fetchone()
        if not row:
            return Profile(None, {})
        return Profile(row[0], json.loads(row[1] or "{}"))

    async def set_persona(self, key: str, persona: str | None) -> None:
        platform_of(key)
        await self._db.execute(
            "INSERT INTO profiles (key, persona, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET persona = excluded.persona,"
            " updated_at = excluded.updated_at",
            (key, persona, time.time()),
        )
        await self._db.commit()

    async def update_settings(self, key: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``settings`` into the key's generation settings (``None`` removes a setting)."""
        platform_of(key)
        current = (await self.get_profile(key)).settings
        merged = {k: v for k, v in {**current, **settings}.items() if v is not None}
        await self._db.execute(
            "INSERT INTO profiles (key, settings, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET settings = excluded.settings,"
            " updated_at = excluded.updated_at",
            (key, json.dumps(merged), time.time()),
        )
        await self._db.commit()
        return merged

    # -- data deletion and operator statistics (finechat forget / prune / stats) -------------

    async def forget(self, key: str) -> int:
        """Delete all of ``key``'s data; the number of messages deleted (see :meth:`forget_report`)."""
        return (await self.forget_report(key)).messages

    async def forget_report(self, key: str) -> Deletion:
        """Delete all of ``key``'s data: conversations (with their titles), messages (with their
        👍/👎), profile, arena votes.

        Sub-conversations named ``key#...`` (the web arena's ``key#arena-a``) go too. Deleted
        pages are zeroed (``secure_delete``) and the WAL is truncated, so the text does not
        linger in the file; ``wal_truncated`` says whether that last step finished.
        """
        platform_of(key)
        mine = "(key = ? OR key LIKE ? ESCAPE '\\')"
        keys = (key, _like_prefix(key + "#"))
        async with self._db.execute(
            f"SELECT (SELECT COUNT(*) FROM conversations WHERE {mine}),"
            " (SELECT COUNT(*) FROM messages WHERE conversation_id IN"
            f" (SELECT id FROM conversations WHERE {mine})),"
            f" (SELECT COUNT(*) FROM profiles WHERE {mine}),"
            f" (SELECT COUNT(*) FROM votes WHERE {mine})",
            keys * 4,
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        await self._db.execute(
            "DELETE FROM messages WHERE conversation_id IN"
            f" (SELECT id FROM conversations WHERE {mine})",
            keys,
        )
        await self._db.execute(f"DELETE FROM conversations WHERE {mine}", keys)
        await self._db.execute(f"DELETE FROM profiles WHERE {mine}", keys)
        await self._db.execute(f"DELETE FROM votes WHERE {mine}", keys)
        await self._db.commit()
        truncated = await self._checkpoint()
        return Deletion(int(row[0]), int(row[1]), int(row[2]), int(row[3]), truncated)

    async def sub_keys(self, key: str) -> list[str]:
        """``key`` and its sub-conversation keys (``key#...``) that have stored conversations."""
        async with self._db.execute(
            "SELECT DISTINCT key FROM conversations WHERE key = ? OR key LIKE ? ESCAPE '\\'",
            (key, _like_prefix(key + "#")),
        ) as cur:
            rows = await cur.fetchall()
        return sorted({key, *(str(r[0]) for r in rows)})

    async def adopt_key(self, old: str, new: str) -> bool:
        """Move ``old``'s data (and its ``old#...`` sub-keys) to ``new`` if ``new`` has none.

        For a key format change: the data stays reachable under the new key. True if moved.
        """
        platform_of(old)
        platform_of(new)
        async with self._db.execute(
            "SELECT (SELECT COUNT(*) FROM conversations WHERE key = ? OR key LIKE ? ESCAPE '\\'),"
            " (SELECT COUNT(*) FROM conversations WHERE key = ? OR key LIKE ? ESCAPE '\\'),"
            " (SELECT COUNT(*) FROM profiles WHERE key = ?)",
            (old, _like_prefix(old + "#"), new, _like_prefix(new + "#"), new),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        if not row[0] or row[1] or row[2]:
            return False
        n = len(old)
        for table in ("conversations", "profiles", "votes"):
            await self._db.execute(
                f"UPDATE {table} SET key = ? || substr(key, ?)"
                " WHERE key = ? OR key LIKE ? ESCAPE '\\'",
                (new, n + 1, old, _like_prefix(old + "#")),
            )
        await self._db.commit()
        return True

    async def prune(self, before: float) -> tuple[int, int]:
        """Delete what has been idle since ``before``; (conversations, messages) deleted."""
        report = await self.prune_report(before)
        return report.conversations, report.messages

    async def prune_report(self, before: float) -> Deletion:
        """Delete conversations with no activity since ``before`` (a Unix time), and with them
        the profiles (persona, settings) of keys left without any conversation and arena votes
        older than ``before``.

        A conversation's activity is its newest message (or its creation when empty); its title
        and the feedback on its answers go with it. A profile changed since ``before`` is kept.
        """
        old = (
            "SELECT c.id FROM conversations c WHERE COALESCE("
            "(SELECT MAX(m.created_at) FROM messages m WHERE m.conversation_id = c.id),"
            " c.created_at) < ?"
        )
        async with self._db.execute(
            f"SELECT COUNT(*), (SELECT COUNT(*) FROM messages WHERE conversation_id IN ({old}))"
            f" FROM ({old})",
            (before, before),
        ) as cur:
            row = await cur.fetchone()
        await self._db.execute(f"DELETE FROM messages WHERE conversation_id IN ({old})", (before,))
        await self._db.execute(
            "DELETE FROM conversations WHERE id NOT IN (SELECT conversation_id FROM messages)"
            " AND created_at < ?",
            (before,),
        )
        profiles = await self._db.execute(
            "DELETE FROM profiles WHERE updated_at < ?"
            " AND key NOT IN (SELECT key FROM conversations)",
            (before,),
        )
        votes = await self._db.execute("DELETE FROM votes WHERE created_at < ?", (before,))
        await self._db.commit()
        truncated = await self._checkpoint()
        return Deletion(
            int(row[0]) if row else 0,
            int(row[1]) if row else 0,
            max(0, profiles.rowcount or 0),
            max(0, votes.rowcount or 0),
            truncated,
        )

    async def _checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it; False if a reader kept it busy.

        ``wal_checkpoint(TRUNCATE)`` answers (busy, log frames, checkpointed frames): busy = 1
        means another connection's read transaction still needs old frames, so the WAL (and
        any deleted text in it) stays. That is reported and retried later, never ignored.
        """
        wait_ms = max(0, int(self.checkpoint_wait_s * 1000))
        row: Any = None
        try:
            await self._db.execute(f"PRAGMA busy_timeout={wait_ms}")
            async with self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
                row = await cur.fetchone()
        except sqlite3.OperationalError as exc:
            log.warning("WAL checkpoint after a deletion failed: %s", exc)
        finally:
            await self._db.execute("PRAGMA busy_timeout=5000")
        ok = row is not None and int(row[0]) == 0
        self._wal_dirty = not ok
        if not ok:
            log.warning(
                "deleted rows are gone from the database, but another connection is reading: "
                "the WAL file keeps old pages until the next checkpoint (retried later)"
            )
        return ok

    async def platform_stats(self) -> list[dict[str, Any]]:
        """Per platform: users, conversations, user turns, replies, tokens, reply latency."""
        sql = """
            SELECT c.platform, COUNT(DISTINCT c.key), COUNT(DISTINCT c.id),
                   COALESCE(SUM(m.role = 'user'), 0), COALESCE(SUM(m.role = 'assistant'), 0),
                   COALESCE(SUM(m.tokens), 0), AVG(m.latency), MAX(m.latency)
            FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
            GROUP BY c.platform ORDER BY c.platform
        """
        async with self._db.execute(sql) as cur:
            rows = await cur.fetchall()
        names = ("platform", "users", "conversations", "turns", "replies", "tokens")
        return [
            {**dict(zip(names, r[:6], strict=True)), "avg_latency": r[6], "max_latency": r[7]}
            for r in rows
        ]

    async def slowest_replies(self, limit: int = 5) -> list[dict[str, Any]]:
        """The replies that took longest (platform, model, tokens, seconds, when)."""
        sql = """
            SELECT c.platform, m.model, m.tokens, m.latency, m.created_at
            FROM messages m JOIN conversations c ON c.id = m.conversation_id
            WHERE m.latency IS NOT NULL ORDER BY m.latency DESC LIMIT ?
        """
        async with self._db.execute(sql, (limit,)) as cur:
            rows = await cur.fetchall()
        names = ("platform", "model", "tokens", "latency", "created_at")
        return [dict(zip(names, r, strict=True)) for r in rows]

    # -- arena votes -----------------------------------------------------------------------

    async def add_vote(self, vote: Vote) -> int:
        """Store one arena vote (committed before returning); returns its id."""
        platform_of(vote.key)
        cur = await self._db.execute(
            "INSERT INTO votes (key, prompt, model_a, model_b, settings_a, settings_b,"
            " answer_a, answer_b, winner, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                vote.key,
                vote.prompt,
                vote.model_a,
                vote.model_b,
                json.dumps(dict(vote.settings_a), sort_keys=True),
                json.dumps(dict(vote.settings_b), sort_keys=True),
                vote.answer_a,
                vote.answer_b,
                vote.winner,
                time.time(),
            ),
        )
        await self._db.commit()
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    async def vote_tally(self) -> list[Tally]:
        """Wins, losses and ties per contender over all votes ("both bad" counts as a tie)."""
        sql = """
            WITH sides(model, settings, result) AS (
                SELECT model_a, settings_a, CASE winner WHEN 'a' THEN 'w' WHEN 'b' THEN 'l'
                       ELSE 't' END FROM votes
                UNION ALL
                SELECT model_b, settings_b, CASE winner WHEN 'b' THEN 'w' WHEN 'a' THEN 'l'
                       ELSE 't' END FROM votes
            )
            SELECT model, settings, SUM(result = 'w'), SUM(result = 'l'), SUM(result = 't')
            FROM sides GROUP BY model, settings
        """
        async with self._db.execute(sql) as cur:
            rows = await cur.fetchall()
        return [
            Tally(str(r[0]), json.loads(r[1] or "{}"), int(r[2]), int(r[3]), int(r[4]))
            for r in rows
        ]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like_prefix(prefix: str) -> str:
    return _like_escape(prefix) + "%"


def _ensure_parent(path: str) -> None:
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
