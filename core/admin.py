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
import dataclasses
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
        usage = await store.usage_summary(time.time() - 86400)
    finally:
        await store.aclose()
    limits = dataclasses.asdict(config.limits)
    if args.json:
        print(
            json.dumps(
                {
                    "platforms": platforms,
                    "slowest": slowest,
                    "usage_24h": usage,
                    "limits": limits,
                },
                indent=2,
            )
        )
        return 0
    if not platforms:
        print("no conversations yet")
    _print_usage(usage, limits)
    if not platforms:
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


def _print_usage(usage: list[dict[str, Any]], limits: dict[str, int]) -> None:
    """Per-person limit counters of the last 24 hours (``[limits]``)."""
    shown = ", ".join(f"{k} {v or 'off'}" for k, v in limits.items())
    print(f"limits: {shown}")
    if not usage:
        print("usage (24 h): nothing counted yet\n")
        return
    table: dict[str, dict[str, int]] = {}
    for row in usage:
        cell = table.setdefault(row["platform"], {"replies": 0, "tokens": 0, "people": 0})
        if row["kind"] == "reply":
            cell.update(replies=row["events"], tokens=row["tokens"], people=row["people"])
        elif row["kind"] == "refused":
            cell["refused"] = row["events"]
        elif row["kind"] == "write":
            cell["changes"] = row["events"]
    print("usage in the last 24 h:")
    _table(
        ("platform", "people", "replies", "tokens", "refused", "changes"),
        [
            (p, c["people"], c["replies"], c["tokens"], c.get("refused", 0), c.get("changes", 0))
            for p, c in sorted(table.items())
        ],
    )
    print()


def _wal_note(truncated: bool) -> None:
    if not truncated:
        print(
            "note: another process is reading the database, so the deleted rows may still be in "
            "its -wal file; they are overwritten at the next checkpoint (run this again, or stop "
            "finechat serve briefly)",
            file=sys.stderr,
        )


async def cmd_prune(config: Config, args: argparse.Namespace) -> int:
    age = parse_duration(args.older_than)
    store = await MemoryStore.open(config.database.path)
    try:
        report = await store.prune_report(time.time() - age)
    finally:
        await store.aclose()
    print(
        f"deleted {report.conversations} conversations ({report.messages} messages), "
        f"{report.profiles} personas/settings and {report.votes} arena votes "
        f"older than {args.older_than} (titles and 👍/👎 went with their conversations)"
    )
    _wal_note(report.wal_truncated)
    return 0


async def cmd_forget(config: Config, args: argparse.Namespace) -> int:
    key = user_key(args.user)
    store = await MemoryStore.open(config.database.path)
    try:
        report = await store.forget_report(key)
    finally:
        await store.aclose()
    removed = report.messages
    print(
        f"{key}: deleted {removed} messages (with their 👍/👎), conversation titles, "
        f"settings and persona, {report.votes} arena votes"
    )
    if not (removed or report.conversations or report.profiles or report.votes):
        print(f"(nothing was stored for {key})", file=sys.stderr)
    _wal_note(report.wal_truncated)
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
