"""An answer as Telegram messages: cut by UTF-16 length, each rendered to HTML that fits.

Telegram limits a message to 4,096 UTF-16 code units of its *visible* text, the text left once
the HTML is parsed (an emoji counts two). The answer is cut as Markdown by
:func:`bots.chat.split.split_message` measuring UTF-16 units — one pass, no re-cutting — and
each chunk is rendered by :func:`bots.telegram.format.markdown_to_html`, which never makes the
visible text longer than the Markdown. So every chunk fits twice over: as HTML and as the
plain-text fallback for when Telegram refuses the entities.

:data:`CHUNK_LIMIT` keeps two units free for the streaming cursor (``" ▌"``), so the chunks of
an answer do not move between the streamed plain-text edits and the final rendering.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bots.chat.split import split_message
from bots.telegram.format import markdown_to_html

MESSAGE_LIMIT = 4096
"""Telegram's limit, in UTF-16 code units of the visible text."""
CURSOR = " ▌"
CHUNK_LIMIT = MESSAGE_LIMIT - 2
"""Chunk size: the limit less room for :data:`CURSOR` (two UTF-16 units)."""
INLINE_CHARS = 4000
"""Answers up to this long are rendered on the event loop (well under a millisecond per
thousand characters); longer ones in a worker thread (see :func:`render_answer_async`)."""


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts (a lone surrogate counts one)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@dataclass(frozen=True)
class Chunk:
    """One message of an answer."""

    markdown: str
    """The Markdown of this part (also the plain-text fallback), within the limit."""
    html: str
    """Its Telegram HTML (visible text within the limit)."""


def telegram_chunks(text: str, limit: int = CHUNK_LIMIT) -> list[str]:
    """``text`` cut into Markdown chunks of at most ``limit`` UTF-16 units (fences balanced)."""
    return split_message(text, limit, measure=utf16_len)


def render_answer(text: str, limit: int = CHUNK_LIMIT) -> list[Chunk]:
    """``text`` as Telegram messages: cut, then each part rendered; [] for a blank text."""
    return [Chunk(part, markdown_to_html(part)) for part in telegram_chunks(text, limit)]


async def render_answer_async(text: str, limit: int = CHUNK_LIMIT) -> list[Chunk]:
    """:func:`render_answer` without holding the event loop on a long answer."""
    if len(text) <= INLINE_CHARS:
        return render_answer(text, limit)
    return await asyncio.to_thread(render_answer, text, limit)


async def telegram_chunks_async(text: str, limit: int = CHUNK_LIMIT) -> list[str]:
    """:func:`telegram_chunks` without holding the event loop on a long answer."""
    if len(text) <= INLINE_CHARS:
        return telegram_chunks(text, limit)
    return await asyncio.to_thread(telegram_chunks, text, limit)
