"""Fenced code blocks (```` ``` ```` / ``~~~``), recognised the same way by everything that cuts
or renders model output: the splitter (:mod:`bots.chat.split`) and the Telegram renderer
(:mod:`bots.telegram.format`) must agree on where a block opens and closes, or a cut would
close a block the renderer never opened.

The rules are CommonMark's, loosened for chat: an opening line is any indentation, then three
or more backticks or tildes, then an optional info string (for backticks, one without a
backtick: ```` ```a`b ```` is inline code, not a fence). A block closes at a line holding only
the same character, at least as many times, or at the end of the text. Every function here is
linear in its input and total.
"""

from __future__ import annotations

from dataclasses import dataclass

_FENCE_CHARS = "`~"


@dataclass(frozen=True)
class Fence:
    """An open fenced block: its marker (``char`` × ``length``) and its info string."""

    char: str
    length: int
    info: str
    line: str = ""
    """The opening line as written, without its indentation."""

    @property
    def marker(self) -> str:
        return self.char * self.length

    @property
    def opener(self) -> str:
        """The line that reopens this block in a new message."""
        return self.line or self.marker + self.info

    def closed_by(self, line: str) -> bool:
        """Whether ``line`` closes this block."""
        stripped = line.strip()
        return (
            len(stripped) >= self.length
            and stripped[0] == self.char
            and not stripped.lstrip(self.char)
        )


def parse_opener(line: str) -> Fence | None:
    """The fence ``line`` opens, or None when it is not an opening fence line."""
    stripped = line.lstrip(" \t")
    if len(stripped) < 3 or stripped[0] not in _FENCE_CHARS:
        return None
    char = stripped[0]
    rest = stripped.lstrip(char)
    length = len(stripped) - len(rest)
    if length < 3:
        return None
    info = rest.strip()
    if char == "`" and "`" in info:
        return None
    return Fence(char, length, info, stripped.rstrip())


def open_fence_at_end(text: str) -> Fence | None:
    """The fence still open after the last line of ``text`` (None when all are closed)."""
    fence: Fence | None = None
    for line in text.split("\n"):
        if fence is None:
            fence = parse_opener(line)
        elif fence.closed_by(line):
            fence = None
    return fence
