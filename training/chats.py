"""Export the bot's own conversations from the core's SQLite memory as training rows.

This closes the loop for a community: chat with the bot, export what it said, fine-tune on it.
It is opt-in twice over: nothing is exported unless platforms are named, and only those
platforms' conversations are read. Keys (which carry chat and user ids) are dropped; a row keeps
only its messages and platform name. Messages form a tree through ``parent_id`` (reply chains,
regenerated answers); every root→leaf path that ends with an assistant reply becomes one row, cut
after its last assistant reply. System messages (personas may be personal) are left out.

The file is opened read-only, so exporting from a running bot's database is safe (WAL).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from training.data import Conversation
from training.errors import DataError

KNOWN_PLATFORMS = ("cli", "web", "telegram", "discord")


@dataclass(frozen=True)
class ExportedChats:
    rows: list[tuple[str, Conversation]]  # (platform, messages)

    def per_platform(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for platform, _ in self.rows:
            counts[platform] = counts.get(platform, 0) + 1
        return counts


def export_chats(db_path: str | Path, platforms: list[str], *, min_turns: int = 2) -> ExportedChats:
    """Conversations of the named platforms as message lists, without any key or user id."""
    wanted = [p.strip() for p in platforms if p.strip()]
    if not wanted:
        raise DataError("name the platforms to export (e.g. --platform telegram); none is implied")
    unknown = sorted(set(wanted) - set(KNOWN_PLATFORMS))
    if unknown:
        raise DataError(
            f"unknown platform(s) {', '.join(unknown)} (known: {', '.join(KNOWN_PLATFORMS)})"
        )
    path = Path(db_path)
    if not path.is_file():
        raise DataError(f"no memory database at {path}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DataError(f"cannot open {path.name}: {exc}") from None
    try:
        marks = ",".join("?" * len(wanted))
        convs = db.execute(
            f"SELECT id, platform FROM conversations WHERE platform IN ({marks}) ORDER BY id",
            wanted,
        ).fetchall()
        rows: list[tuple[str, Conversation]] = []
        for conv_id, platform in convs:
            msgs = db.execute(
                "SELECT id, parent_id, role, text FROM messages WHERE conversation_id = ? "
                "ORDER BY id",
                (conv_id,),
            ).fetchall()
            for conv in _paths(msgs):
                if len(conv) >= min_turns:
                    rows.append((str(platform), conv))
    except sqlite3.Error as exc:
        raise DataError(f"cannot read {path.name}: {exc}") from None
    finally:
        db.close()
    return ExportedChats(rows)


def _paths(msgs: list[tuple[int, int | None, str, str]]) -> list[Conversation]:
    # A message without a parent that is not the conversation's first continues the one
    # before it (stores written without reply chains are plain lists).
    msgs = [
        (m[0], msgs[i - 1][0] if m[1] is None and i > 0 else m[1], m[2], m[3])
        for i, m in enumerate(msgs)
    ]
    by_id = {m[0]: m for m in msgs}
    has_child = {m[1] for m in msgs if m[1] is not None}
    seen: set[tuple[int, ...]] = set()
    out: list[Conversation] = []
    for mid, *_ in msgs:
        if mid in has_child:
            continue
        chain: list[tuple[int, int | None, str, str]] = []
        cur: int | None = mid
        while cur is not None and cur in by_id and len(chain) <= len(msgs):
            chain.append(by_id[cur])
            cur = by_id[cur][1]
        chain.reverse()
        chain = [m for m in chain if m[2] in ("user", "assistant") and m[3].strip()]
        while chain and chain[-1][2] != "assistant":
            chain.pop()
        ids = tuple(m[0] for m in chain)
        if not chain or ids in seen:
            continue
        seen.add(ids)
        out.append([{"role": m[2], "content": m[3]} for m in chain])
    return out
