"""Operator commands: ``finechat stats``, ``finechat prune --older-than 90d``, ``finechat forget``.

They work on the memory database directly, so they also run while ``finechat serve`` is up
(SQLite WAL allows a second writer process; deletes wait on the busy timeout). ``forget`` and
``prune`` exist because users ask for their data to be deleted: rows are removed, freed pages
are zeroed and the WAL is truncated so the text does not linger in the file. A running server
also keeps conversation state in RAM (KV cache); the bots' ``/forget`` goes through
``ChatService.forget``, which clears that too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from core.config import Config
from core.errors import InvalidInput
from core.keys import user_key
from core.memory import MemoryStore

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``2w``, ``45s`` (a bare number means days) → seconds."""
    m = _DURATION.match(text)
    if not m:
        raise InvalidInput(
            f"--older-than: {text!r} is not a duration (examples: 90d, 12h, 2w, 30m)"
        )
    seconds = float(m[1]) * _UNITS[(m[2] or "d").lower()]
    if seconds <= 0:
        raise InvalidInput("--older-than: must be more than zero")
    return seconds


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the admin subcommands on the ``finechat`` parser."""
    p = sub.add_parser("stats", help="users, turns, tokens and latency per platform")
    common(p)
    p.add_argument("--top", type=int, default=5, help="how many slowest replies to list")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("prune", help="delete conversations with no activity for a while")
    common(p)
    p.add_argument("--older-than", required=True, help="e.g. 90d, 12w, 36h")

    p = sub.add_parser("forget", help="delete everything stored about one user")
    common(p)
    p.add_argument("--user", required=True, help="a name (cli:NAME) or a full platform key")


async def cmd_stats(config: Config, args: argparse.Namespace) -> int:
    store = await MemoryStore.open(config.database.path)
    try:
        platforms = await store.platform_stats()
        slowest = await store.slowest_replies(max(0, args.top))
    finally:
        await store.aclose()
    if args.json:
        print(json.dumps({"platforms": platforms, "slowest": slowest}, indent=2))
        return 0
    if not platforms:
        print("no conversations yet")
        return 0
    header = ("platform", "users", "convs", "turns", "replies", "tokens", "avg s", "max s")
    rows = [
        (
            p["platform"],
            p["users"],
            p["conversations"],
            p["turns"],
            p["replies"],
            p["tokens"],
            _secs(p["avg_latency"]),
            _secs(p["max_latency"]),
        )
        for p in platforms
    ]
    _table(header, rows)
    if slowest:
        print("\nslowest replies:")
        _table(
            ("platform", "model", "tokens", "seconds", "when"),
            [
                (
                    s["platform"],
                    s["model"] or "?",
                    s["tokens"] or 0,
                    _secs(s["latency"]),
                    datetime.fromtimestamp(s["created_at"]).strftime("%Y-%m-%d %H:%M"),
                )
                for s in slowest
            ],
        )
    return 0


async def cmd_prune(config: Config, args: argparse.Namespace) -> int:
    age = parse_duration(args.older_than)
    store = await MemoryStore.open(config.database.path)
    try:
        conversations, messages = await store.prune(time.time() - age)
    finally:
        await store.aclose()
    print(
        f"deleted {conversations} conversations ({messages} messages) older than {args.older_than}"
    )
    return 0


async def cmd_forget(config: Config, args: argparse.Namespace) -> int:
    key = user_key(args.user)
    store = await MemoryStore.open(config.database.path)
    try:
        removed = await store.forget(key)
    finally:
        await store.aclose()
    print(f"{key}: deleted {removed} messages, settings and persona")
    if not removed:
        print(f"(nothing was stored for {key})", file=sys.stderr)
    return 0


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cells = [header, *[tuple(str(c) for c in r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
