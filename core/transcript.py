"""A person's conversations as files they can keep: Markdown to read, JSON to reuse.

Both keep every branch (regenerated answers, edited messages), not only the one on screen. In
Markdown the messages appear depth first, each numbered; a message that does not continue the
one just above says which message it branches from. Every text sits in a fenced block longer
than any run of backticks inside it, so nothing a person or the model wrote can turn into
formatting, links or HTML in a Markdown viewer, and the text reads back exactly as stored.
Keys (which carry platform user ids) are never written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from core.memory import ConversationSummary, Turn

ROLE_LABELS = {"user": "You", "assistant": "Assistant", "system": "System"}
FEEDBACK_MARKS = {1: "👍", -1: "👎"}
FEEDBACK_NAMES = {1: "up", -1: "down"}
JSON_FORMAT = "finechat.conversation.v1"
_BACKTICKS = re.compile(r"`+")


def stamp(t: float) -> str:
    """A Unix time as ``2026-11-03 14:02 UTC``."""
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return "unknown time"


def fenced(text: str) -> str:
    """``text`` in a fenced code block that nothing inside it can close."""
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def tree_order(turns: Sequence[Turn]) -> list[Turn]:
    """Messages depth first (children oldest first); orphans start new roots, in id order."""
    by_id = {t.id: t for t in turns}
    children: dict[int | None, list[Turn]] = {}
    for t in sorted(turns, key=lambda t: t.id):
        parent = t.parent_id if t.parent_id in by_id else None
        children.setdefault(parent, []).append(t)
    out: list[Turn] = []
    seen: set[int] = set()
    # Roots first; then anything a broken parent chain (a cycle) kept out of reach, by id.
    for start in [*children.get(None, []), *sorted(turns, key=lambda t: t.id)]:
        stack = [start]
        while stack:  # iterative: a long conversation must not hit the recursion limit
            t = stack.pop()
            if t.id in seen:
                continue
            seen.add(t.id)
            out.append(t)
            stack.extend(reversed(children.get(t.id, [])))
    return out


def branch_count(turns: Sequence[Turn]) -> int:
    """How many root-to-leaf paths the conversation has."""
    ids = {t.id for t in turns}
    parents = {t.parent_id for t in turns if t.parent_id in ids}
    return sum(1 for t in turns if t.id not in parents)


def conversation_markdown(
    summary: ConversationSummary, turns: Sequence[Turn], *, level: int = 1
) -> str:
    """One conversation, all branches, as Markdown (headings start at ``level``)."""
    h = "#" * max(1, min(level, 5))
    branches = branch_count(turns)
    lines = [
        f"{h} {_heading_text(summary.title)}",
        "",
        f"Started {stamp(summary.created_at)} · last message {stamp(summary.updated_at)} · "
        f"{len(turns)} message{'s' if len(turns) != 1 else ''}"
        + (f" · {branches} branches" if branches > 1 else ""),
        "",
    ]
    number: dict[int, int] = {}
    previous: int | None = None
    for n, turn in enumerate(tree_order(turns), 1):
        number[turn.id] = n
        parts = [f"{h}# {n} · {ROLE_LABELS.get(turn.role, turn.role)}"]
        if turn.role == "assistant" and turn.model:
            parts[0] += f" ({_heading_text(turn.model)})"
        parts.append(stamp(turn.created_at))
        if turn.feedback in FEEDBACK_MARKS:
            parts.append(FEEDBACK_MARKS[turn.feedback])
        if turn.parent_id in number and turn.parent_id != previous:
            parts.append(f"another branch, following message {number[turn.parent_id]}")
        elif turn.parent_id not in number and previous is not None:
            parts.append("another branch, from the start")
        lines += [" · ".join(parts), "", fenced(turn.text), ""]
        previous = turn.id
    return "\n".join(lines).rstrip() + "\n"


def conversations_markdown(
    items: Sequence[tuple[ConversationSummary, Sequence[Turn]]], *, title: str
) -> str:
    """Several conversations in one file (the bots' ``/export``), newest first."""
    lines = [
        f"# {_heading_text(title)}",
        "",
        f"{len(items)} conversation{'s' if len(items) != 1 else ''}, all branches. "
        "Exported " + stamp(datetime.now(UTC).timestamp()) + ".",
        "",
    ]
    if not items:
        lines += ["Nothing is stored for you.", ""]
    body = [conversation_markdown(s, t, level=2) for s, t in items]
    return "\n".join(lines) + "\n" + "\n".join(body)


def conversation_json(
    summary: ConversationSummary, turns: Sequence[Turn], current_leaf: int | None = None
) -> dict[str, Any]:
    """One conversation, all branches, as a JSON-ready dict (``parent_id`` links the tree)."""
    by_id = {t.id: t for t in turns}
    path: list[int] = []
    cur = current_leaf if current_leaf in by_id else (max(by_id) if by_id else None)
    while cur is not None and cur in by_id and len(path) <= len(by_id):
        path.append(cur)
        cur = by_id[cur].parent_id
    return {
        "format": JSON_FORMAT,
        "title": summary.title,
        "created_at": _iso(summary.created_at),
        "updated_at": _iso(summary.updated_at),
        "current_branch": list(reversed(path)),
        "messages": [
            {
                "id": t.id,
                "parent_id": t.parent_id if t.parent_id in by_id else None,
                "role": t.role,
                "content": t.text,
                "created_at": _iso(t.created_at),
                "model": t.model,
                "feedback": FEEDBACK_NAMES.get(t.feedback) if t.feedback is not None else None,
            }
            for t in sorted(turns, key=lambda t: t.id)
        ],
    }


def _iso(t: float) -> str | None:
    try:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


_HEADING_UNSAFE = re.compile(r"[\\`*_\[\]<>#|~&!]")


def _heading_text(text: str) -> str:
    """A title on one line with Markdown/HTML characters escaped (titles are user text)."""
    flat = " ".join(text.split()) or "Untitled"
    return _HEADING_UNSAFE.sub(lambda m: "\\" + m.group(0), flat)


def safe_filename(title: str, suffix: str, *, max_chars: int = 60) -> str:
    """A download file name from a title: letters, digits, ``-`` and ``_`` only."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-")[:max_chars].strip("-")
    return f"{stem or 'conversation'}{suffix}"
