"""Split a long reply into platform-sized messages without breaking meaning.

Cuts prefer a paragraph break, then a line break, then a sentence end, then a space, and only
hard-cut inside a word as a last resort. A cut inside a fenced code block closes the fence at
the end of one message and reopens it (same language tag) at the start of the next, so each
message renders on its own. Nothing is ever dropped.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^\s*(```+|~~~+)(.*)$")
_SENTENCE_END = re.compile(r"[.!?…](?:[\"')\]]*)\s")


def _open_fence(text: str) -> str | None:
    """The opening fence line still open at the end of ``text`` (None if all are closed)."""
    opener: str | None = None
    marker = ""
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if not m:
            continue
        if opener is None:
            opener, marker = line.strip(), m.group(1)
        elif m.group(1).startswith(marker[:3]) and not m.group(2).strip():
            opener, marker = None, ""
    return opener


def _best_cut(text: str, limit: int) -> int:
    """Index (≤ limit) where to end the first chunk."""
    window = text[:limit]
    floor = limit // 3  # never make absurdly short chunks just to hit a boundary
    for sep in ("\n\n", "\n"):
        pos = window.rfind(sep)
        if pos >= floor:
            return pos + len(sep)
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] >= floor:
        return ends[-1]
    pos = window.rfind(" ")
    if pos >= floor:
        return pos + 1
    return limit


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters (see module docstring)."""
    if limit < 40:
        raise ValueError("limit too small to split sensibly")
    chunks: list[str] = []
    rest = text
    reopen = ""
    while rest:
        rest = reopen + rest
        if len(rest) <= limit:
            if rest.strip():
                chunks.append(rest.rstrip())
            break
        # Leave room for a closing fence line if we cut inside a code block.
        budget = limit - 4
        cut = _best_cut(rest, budget)
        head, tail = rest[:cut], rest[cut:]
        opener = _open_fence(head)
        if opener is not None:
            head = head.rstrip("\n") + "\n```"
            reopen = opener + "\n"
            if len(head) > limit:  # pragma: no cover - budget keeps room for the fence
                head = head[:limit]
        else:
            reopen = ""
        head = head.rstrip() if opener is None else head
        if head.strip():
            chunks.append(head)
        rest = tail.lstrip("\n") if opener is None else tail
        if reopen and not rest:
            break
    return chunks
