"""Export the bot's own conversations from the core's SQLite memory as training rows.

This closes the loop for a community: chat with the bot, export what it said (or what people
liked), fine-tune on it. It is opt-in twice over: nothing is exported unless platforms are
named, and only those platforms' conversations are read. Keys (which carry chat and user ids)
are dropped; a row keeps only its messages and platform name. Messages form a tree through
``parent_id`` (reply chains, regenerated answers, edited messages). System messages (personas
may be personal) are left out. Three kinds of rows:

* all (default): every root→leaf path that ends with an assistant reply, cut after its last
  reply, as ``{"messages": [...]}``;
* ``feedback``: only paths that end at an answer marked 👍 (with ``{"messages": [...]}``); a
  path whose earlier answers include a 👎 is left out, and a path that is the start of a longer
  👍 path is covered by it;
* ``preferences``: ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` pairs in TRL's
  conversational preference layout (``prompt`` the messages before the answer, ``chosen`` and
  ``rejected`` one assistant message each) from arena votes (winner against loser; ties and
  "both bad" say nothing) and from sibling answers to one message where one has 👍 and another
  👎 (regenerated answers).

The file is opened read-only, so exporting from a running bot's database is safe (WAL).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from training.data import Conversation
from training.errors import DataError

KNOWN_PLATFORMS = ("cli", "web", "telegram", "discord")
Mode = Literal["all", "feedback", "preferences"]
#: One stored message: (id, parent_id, role, text, feedback).
_Msg = tuple[int, int | None, str, str, int | None]


@dataclass(frozen=True)
class ExportedChats:
    rows: list[tuple[str, Conversation]]  # (platform, messages)

    def per_platform(self) -> dict[str, int]:
        return _count(p for p, _ in self.rows)


@dataclass(frozen=True)
class Preference:
    """One chosen/rejected pair in TRL's conversational layout."""

    prompt: Conversation
    chosen: str
    rejected: str

    def row(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


@dataclass(frozen=True)
class ExportedPreferences:
    rows: list[tuple[str, Preference]]  # (platform, pair)
    from_votes: int
    from_feedback: int

    def per_platform(self) -> dict[str, int]:
        return _count(p for p, _ in self.rows)


def _count(platforms: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for platform in platforms:
        counts[platform] = counts.get(platform, 0) + 1
    return counts


def _check_platforms(platforms: list[str]) -> list[str]:
    wanted = [p.strip() for p in platforms if p.strip()]
    if not wanted:
        raise DataError("name the platforms to export (e.g. --platform telegram); none is implied")
    unknown = sorted(set(wanted) - set(KNOWN_PLATFORMS))
    if unknown:
        raise DataError(
            f"unknown platform(s) {', '.join(unknown)} (known: {', '.join(KNOWN_PLATFORMS)})"
        )
    return wanted


def _open(db_path: str | Path) -> tuple[sqlite3.Connection, str]:
    path = Path(db_path)
    if not path.is_file():
        raise DataError(f"no memory database at {path}")
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True), path.name
    except sqlite3.Error as exc:
        raise DataError(f"cannot open {path.name}: {exc}") from None


def _has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in db.execute(f"PRAGMA table_info({table})"))


def _conversations(db: sqlite3.Connection, wanted: list[str]) -> Iterator[tuple[str, list[_Msg]]]:
    """(platform, messages in id order) per conversation of the wanted platforms."""
    feedback = "feedback" if _has_column(db, "messages", "feedback") else "NULL"
    marks = ",".join("?" * len(wanted))
    convs = db.execute(
        f"SELECT id, platform FROM conversations WHERE platform IN ({marks}) ORDER BY id",
        wanted,
    ).fetchall()
    for conv_id, platform in convs:
        msgs = db.execute(
            f"SELECT id, parent_id, role, text, {feedback} FROM messages"
            " WHERE conversation_id = ? ORDER BY id",
            (conv_id,),
        ).fetchall()
        yield str(platform), _linked(msgs)


def export_chats(
    db_path: str | Path,
    platforms: list[str],
    *,
    min_turns: int = 2,
    feedback: bool = False,
) -> ExportedChats:
    """Conversations of the named platforms as message lists, without any key or user id.

    With ``feedback``, only paths that end at an answer marked 👍.
    """
    wanted = _check_platforms(platforms)
    db, name = _open(db_path)
    try:
        rows: list[tuple[str, Conversation]] = []
        for platform, msgs in _conversations(db, wanted):
            paths = _liked_paths(msgs) if feedback else _paths(msgs)
            rows += [(platform, conv) for conv in paths if len(conv) >= min_turns]
    except sqlite3.Error as exc:
        raise DataError(f"cannot read {name}: {exc}") from None
    finally:
        db.close()
    return ExportedChats(rows)


def export_preferences(db_path: str | Path, platforms: list[str]) -> ExportedPreferences:
    """Chosen/rejected pairs from arena votes and from 👍/👎 sibling answers."""
    wanted = _check_platforms(platforms)
    db, name = _open(db_path)
    try:
        rows: list[tuple[str, Preference]] = []
        for platform, msgs in _conversations(db, wanted):
            rows += [(platform, pair) for pair in _sibling_pairs(msgs)]
        from_feedback = len(rows)
        rows += list(_vote_pairs(db, wanted))
    except sqlite3.Error as exc:
        raise DataError(f"cannot read {name}: {exc}") from None
    finally:
        db.close()
    return ExportedPreferences(rows, len(rows) - from_feedback, from_feedback)


def _linked(msgs: list[Any]) -> list[_Msg]:
    """Messages with their effective parents.

    In a store written without reply chains (every ``parent_id`` empty) each message continues
    the one before it. Where any message has a parent, an empty one is a real root (an edited
    first message starts a second tree in the same conversation).
    """
    flat = all(m[1] is None for m in msgs)
    return [
        (
            int(m[0]),
            msgs[i - 1][0] if flat and i > 0 else m[1],
            str(m[2]),
            str(m[3]),
            m[4] if m[4] in (1, -1) else None,
        )
        for i, m in enumerate(msgs)
    ]


def _chain(by_id: dict[int, _Msg], leaf: int) -> list[_Msg]:
    chain: list[_Msg] = []
    cur: int | None = leaf
    while cur is not None and cur in by_id and len(chain) <= len(by_id):
        chain.append(by_id[cur])
        cur = by_id[cur][1]
    chain.reverse()
    return [m for m in chain if m[2] in ("user", "assistant") and m[3].strip()]


def _messages(chain: list[_Msg]) -> Conversation:
    return [{"role": m[2], "content": m[3]} for m in chain]


def _paths(msgs: list[_Msg]) -> list[Conversation]:
    by_id = {m[0]: m for m in msgs}
    has_child = {m[1] for m in msgs if m[1] is not None}
    seen: set[tuple[int, ...]] = set()
    out: list[Conversation] = []
    for mid, *_ in msgs:
        if mid in has_child:
            continue
        chain = _chain(by_id, mid)
        while chain and chain[-1][2] != "assistant":
            chain.pop()
        ids = tuple(m[0] for m in chain)
        if not chain or ids in seen:
            continue
        seen.add(ids)
        out.append(_messages(chain))
    return out


def _liked_paths(msgs: list[_Msg]) -> list[Conversation]:
    """Paths ending at a 👍 answer, without 👎 answers, not the start of a longer one."""
    by_id = {m[0]: m for m in msgs}
    chains = []
    for m in msgs:
        if m[2] != "assistant" or m[4] != 1 or not m[3].strip():
            continue
        chain = _chain(by_id, m[0])
        if any(c[2] == "assistant" and c[4] == -1 for c in chain):
            continue
        chains.append(tuple(c[0] for c in chain))
    covered = {i for ids in chains for i in ids[:-1]}  # earlier messages of some liked path
    return [_messages([by_id[i] for i in ids]) for ids in chains if ids[-1] not in covered]


def _sibling_pairs(msgs: list[_Msg]) -> Iterator[Preference]:
    """Every 👍 answer against every 👎 answer to the same message."""
    by_id = {m[0]: m for m in msgs}
    answers: dict[int, list[_Msg]] = {}
    for m in msgs:
        if m[2] == "assistant" and m[4] is not None and m[1] is not None and m[3].strip():
            answers.setdefault(m[1], []).append(m)
    for parent, siblings in answers.items():
        liked = [a for a in siblings if a[4] == 1]
        disliked = [a for a in siblings if a[4] == -1]
        if not liked or not disliked:
            continue
        prompt = _messages(_chain(by_id, parent))
        if not prompt or prompt[-1]["role"] != "user":
            continue
        for good in liked:
            for bad in disliked:
                if good[3].strip() != bad[3].strip():
                    yield Preference(prompt, good[3], bad[3])


def _vote_pairs(db: sqlite3.Connection, wanted: list[str]) -> Iterator[tuple[str, Preference]]:
    """Arena votes with a winner: the winning answer is chosen, the other rejected."""
    rows = db.execute(
        "SELECT key, prompt, answer_a, answer_b, winner FROM votes"
        " WHERE winner IN ('a', 'b') ORDER BY id"
    ).fetchall()
    for key, prompt, answer_a, answer_b, winner in rows:
        platform = str(key).partition(":")[0]
        if platform not in wanted:
            continue
        chosen, rejected = (answer_a, answer_b) if winner == "a" else (answer_b, answer_a)
        if not (str(prompt).strip() and str(chosen).strip() and str(rejected).strip()):
            continue
        if str(chosen).strip() == str(rejected).strip():
            continue
        yield platform, Preference([{"role": "user", "content": str(prompt)}], chosen, rejected)


# -- the command (``finechat export-chats``) ----------------------------------------------


def add_mode_options(p: argparse.ArgumentParser) -> None:
    """``--feedback`` / ``--preferences`` on the ``export-chats`` parser."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--feedback",
        action="store_true",
        help="only conversations ending at an answer marked 👍 ({messages: [...]} per line)",
    )
    mode.add_argument(
        "--preferences",
        action="store_true",
        help="chosen/rejected pairs from arena votes and 👍/👎 sibling answers "
        "(TRL's conversational preference layout: prompt, chosen, rejected)",
    )


def run_export(args: argparse.Namespace) -> int:
    """Write the rows the arguments ask for; print what was written."""
    platforms = args.platform.split(",")
    if getattr(args, "preferences", False):
        prefs = export_preferences(args.db, platforms)
        n = _write_rows(args.out, (pair.row() for _, pair in prefs.rows))
        counts = ", ".join(f"{k} {v}" for k, v in prefs.per_platform().items()) or "none"
        print(
            f"wrote {n} preference pairs to {args.out} ({prefs.from_votes} from arena votes, "
            f"{prefs.from_feedback} from 👍/👎 answers; {counts}); keys and user ids dropped"
        )
        return 0
    feedback = bool(getattr(args, "feedback", False))
    exported = export_chats(args.db, platforms, min_turns=args.min_turns, feedback=feedback)
    n = _write_rows(args.out, ({"messages": conv} for _, conv in exported.rows))
    counts = ", ".join(f"{k} {v}" for k, v in exported.per_platform().items()) or "none"
    what = "conversations ending at a 👍 answer" if feedback else "conversations"
    print(f"wrote {n} {what} to {args.out} ({counts}); keys and user ids dropped")
    return 0


def _write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
