"""Cut a long answer into platform-sized messages without breaking its meaning — on any text.

Cuts prefer a paragraph break, then a line break, then a sentence end, then a space, and only
as a last resort fall inside a word (never between a character and the combining mark,
variation selector or zero-width joiner that goes with it). A cut inside a fenced code block
closes the block at the end of one message and reopens it, with the same info string, at the
start of the next, so every message renders on its own; a block left open at the end of the
answer is closed too. Nothing but whitespace at the cuts is ever dropped.

Sizes are whatever ``measure`` says: ``len`` for Discord (characters), UTF-16 code units for
Telegram (:func:`bots.telegram.chunks.utf16_len`). ``measure`` must be additive (the size of a
string is the sum of the sizes of its characters) and give every character a size of at least
1; both do. Every chunk, *including* the fence lines added at the cuts and the ``suffix``, is at
most ``limit``. ``limit`` must be at least :data:`MIN_LIMIT`. A fence is only carried across a
cut when its reopening and closing lines together take at most a quarter of ``limit``; a
longer one (a fence with a 3,000-character info string, say) is cut like plain text.

Total and linear: the text is cleaned (:func:`core.textcheck.clean_model_text`), measured
once into prefix sums, and every chunk is chosen by searching only its own window, so the work
is proportional to the length of the text whatever it holds. Fence balancing is exact when
cuts fall on line boundaries, which they do unless one line is longer than about two thirds of
``limit``; then a cut may land inside a fence line, which can only affect how a message looks,
never its size or its text.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate

from bots.chat.fences import Fence, open_fence_at_end, parse_opener
from core.textcheck import clean_model_text

MIN_LIMIT = 32
"""The smallest ``limit`` :func:`split_message` accepts."""

Measure = Callable[[str], int]

_SENTENCE_END = re.compile(r"[.!?…][\"')\]»”’]*\s")
_ZWJ = "\u200d"
_GRAPHEME_STEPS = 32
"""How far a hard cut may move back to keep a character with its combining marks."""


def close_open_fence(chunk: str) -> str:
    """``chunk`` with a closing line added if it ends inside a fenced block.

    For showing a chunk of an unfinished or cut-off answer as code rather than literal
    backticks. The closing line repeats the block's marker (at least three characters,
    longer if the block opened with a longer one), so mind the size: to stay within a
    platform limit, use :func:`split_message`, which closes and counts it.
    """
    fence = open_fence_at_end(chunk)
    if fence is None:
        return chunk
    return chunk + ("" if chunk.endswith("\n") else "\n") + fence.marker


class _Layout:
    """Line starts and fence states of one text, computed in one pass."""

    def __init__(self, text: str) -> None:
        self.text = text
        starts = [0]
        before: list[Fence | None] = []
        kinds: list[int] = []  # 0 plain, 1 opens a fence, 2 closes one
        fence: Fence | None = None
        start = 0
        n = len(text)
        while True:
            end = text.find("\n", start)
            line_end = n if end < 0 else end
            line = text[start:line_end]
            before.append(fence)
            if fence is None:
                fence = parse_opener(line)
                kinds.append(1 if fence is not None else 0)
            elif fence.closed_by(line):
                fence = None
                kinds.append(2)
            else:
                kinds.append(0)
            if end < 0:
                break
            start = end + 1
            starts.append(start)
        self.starts = starts
        self.before = before
        self.kinds = kinds
        self.after_last = fence

    def line_of(self, pos: int) -> int:
        return bisect_right(self.starts, pos) - 1

    def line_end(self, line: int) -> int:
        nxt = line + 1
        return self.starts[nxt] - 1 if nxt < len(self.starts) else len(self.text)

    def fence_at(self, pos: int) -> Fence | None:
        """The fence open in a chunk that ends at ``pos`` (see module docstring)."""
        line = self.line_of(pos)
        if pos == self.starts[line]:
            return self.before[line]
        if pos >= self.line_end(line):  # the whole line is in the chunk
            return self.before[line + 1] if line + 1 < len(self.before) else self.after_last
        if self.kinds[line] == 1:  # part of an opening line: open from here on
            return parse_opener(self.text[self.starts[line] : self.line_end(line)])
        return self.before[line]


def split_message(text: str, limit: int, *, measure: Measure = len, suffix: str = "") -> list[str]:
    """``text`` cut into chunks of at most ``limit`` (see the module docstring).

    ``suffix`` (a streaming cursor, say) is appended to the last chunk, inside any code block
    still open there, and counted. Returns ``[]`` for text that is empty or only whitespace.
    """
    if limit < MIN_LIMIT:
        raise ValueError(f"limit {limit} is below the minimum of {MIN_LIMIT}")
    suffix_size = measure(suffix)
    if suffix_size > limit // 4:
        raise ValueError("suffix takes more than a quarter of the limit")
    text = clean_model_text(text)
    if not text.strip():
        return []
    return _Splitter(text, limit, measure, suffix, suffix_size).run()


class _Splitter:
    def __init__(self, text: str, limit: int, measure: Measure, suffix: str, suffix_size: int):
        self.text = text
        self.limit = limit
        self.measure = measure
        self.suffix = suffix
        self.suffix_size = suffix_size
        self.layout = _Layout(text)
        if measure is len:
            self.widths: list[int] | None = None
        else:
            size = {c: max(1, measure(c)) for c in set(text)}  # each distinct character once
            self.widths = list(accumulate(map(size.__getitem__, text), initial=0))
        self.end = len(text.rstrip())
        self._carried: dict[Fence, tuple[str, int, int]] = {}

    # -- sizes -----------------------------------------------------------------------------

    def width(self, a: int, b: int) -> int:
        return b - a if self.widths is None else self.widths[b] - self.widths[a]

    def farthest(self, pos: int, budget: int) -> int:
        """The largest ``c`` with ``width(pos, c) <= budget``."""
        if self.widths is None:
            return min(len(self.text), pos + max(budget, 0))
        return bisect_right(self.widths, self.widths[pos] + budget) - 1

    def carried(self, fence: Fence | None) -> tuple[str, int, int]:
        """(reopening line, its size, closing line size) of ``fence``; ``("", 0, 0)`` when
        the fence is not carried across cuts (none, or too long for the limit)."""
        if fence is None:
            return ("", 0, 0)
        known = self._carried.get(fence)
        if known is None:
            close = self.measure("\n" + fence.marker)
            known = ("", 0, 0)
            for line in (fence.opener + "\n", fence.marker + "\n"):  # a long info string goes
                size = self.measure(line)
                if size + close <= self.limit // 4:
                    known = (line, size, close)
                    break
            self._carried[fence] = known
        return known

    def cost(self, pos: int, cut: int, reopen: int) -> int:
        return reopen + self.width(pos, cut) + self.carried(self.layout.fence_at(cut))[2]

    # -- cutting ---------------------------------------------------------------------------

    def run(self) -> list[str]:
        text, layout = self.text, self.layout
        chunks: list[str] = []
        pos = self.skip_newlines(0)
        while pos < self.end:
            reopen, reopen_size, _ = self.carried(layout.fence_at(pos))
            line = layout.line_of(pos)
            if reopen and pos == layout.starts[line] and layout.kinds[line] == 2:
                # The block closes right here: the previous chunk already closed it.
                pos = self.skip_newlines(layout.line_end(line))
                continue
            last = self.cost(pos, self.end, reopen_size) + self.suffix_size <= self.limit
            cut = self.end if last else self.choose_cut(pos, reopen_size)
            closing = layout.fence_at(cut)
            close = closing is not None and self.carried(closing)[2] > 0
            body = text[pos:cut]
            body = body.rstrip("\n") if close else body.rstrip()
            if body.strip():
                chunk = reopen + body
                if last:
                    chunk += self.suffix
                if close and closing is not None:
                    chunk += "\n" + closing.marker
                chunks.append(chunk)
            if last:
                break
            pos = self.skip_newlines(cut)
        return chunks

    def skip_newlines(self, pos: int) -> int:
        text = self.text
        while pos < len(text) and text[pos] == "\n":
            pos += 1
        return pos

    def choose_cut(self, pos: int, reopen: int) -> int:
        """Where the chunk starting at ``pos`` ends (always after ``pos``)."""
        # Not the last chunk, so something must be left for it (the text may fit in one
        # chunk only without the suffix).
        hi = min(self.farthest(pos, self.limit - reopen), self.end - 1)
        # Leave room for the closing fence line the cut at ``hi`` would need.
        steps = 0
        while hi > pos + 1 and self.cost(pos, hi, reopen) > self.limit and steps < self.limit:
            hi -= 1
            steps += 1
        if hi <= pos:
            return pos + 1
        lo = pos + max(1, (hi - pos) // 3)  # never make absurdly short chunks
        for cut in self.candidates(lo, hi):
            if cut > pos and self.cost(pos, cut, reopen) <= self.limit:
                better = self.off_fence_lines(pos, cut)
                return better if self.cost(pos, better, reopen) <= self.limit else cut
        cut = self.hard_cut(lo, hi)
        return cut if self.cost(pos, cut, reopen) <= self.limit else hi

    def candidates(self, lo: int, hi: int) -> list[int]:
        text = self.text
        found: list[int] = []
        for sep in ("\n\n", "\n"):
            at = text.rfind(sep, lo, hi)
            if at >= 0:
                found.append(at + 1)
        last_sentence = -1
        for m in _SENTENCE_END.finditer(text, lo, hi):
            last_sentence = m.end()
        if last_sentence > 0:
            found.append(last_sentence)
        at = text.rfind(" ", lo, hi)
        if at >= 0:
            found.append(at + 1)
        return found

    def off_fence_lines(self, pos: int, cut: int) -> int:
        """Move a cut from the middle of a fence line, or from just after an opening one
        (which would leave an empty block behind), to that line's start when possible."""
        layout = self.layout
        line = layout.line_of(cut)
        start = layout.starts[line]
        if cut != start and layout.kinds[line] and start > pos:
            return start
        if cut == start and line > 0 and layout.kinds[line - 1] == 1:
            previous = layout.starts[line - 1]
            if previous > pos:
                return previous
        return cut

    def hard_cut(self, lo: int, hi: int) -> int:
        """``hi``, moved back a little so a character keeps its marks and joiners."""
        text = self.text
        cut = hi
        for _ in range(_GRAPHEME_STEPS):
            if cut <= lo or cut >= len(text):
                break
            nxt, prev = text[cut], text[cut - 1]
            if not (
                unicodedata.combining(nxt)
                or nxt == _ZWJ
                or prev == _ZWJ
                or "\ufe00" <= nxt <= "\ufe0f"
                or "\U0001f3fb" <= nxt <= "\U0001f3ff"  # skin tone modifiers
            ):
                return cut
            cut -= 1
        return hi
