"""Seam: Telegram's output functions (Markdown → HTML, UTF-16 chunks), from one place.

Today these are the existing :mod:`bots.telegram_format` and the chunker that lived in
``bots/telegram_stream.py``; the total, property-tested versions land in
``bots/telegram/format.py`` and ``bots/telegram/chunks.py`` (issue 12, item 2). Switching is
replacing the lines between the markers with:

    from bots.telegram.chunks import telegram_chunks_async as chunks
    from bots.telegram.chunks import utf16_len
    from bots.telegram.format import escape, markdown_to_html
"""

from __future__ import annotations

# -- seam: begin -------------------------------------------------------------------------------
from bots.split import split_message
from bots.telegram_format import escape, markdown_to_html

_LIMIT = 4096 - 2
"""Telegram's 4,096 UTF-16 units less room for the streaming cursor."""


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _chunks(text: str, limit: int) -> list[str]:
    out: list[str] = []
    for chunk in split_message(text, limit):
        size = utf16_len(chunk)
        out.extend([chunk] if size <= limit else _chunks(chunk, max(40, limit * limit // size - 8)))
    return out


async def chunks(text: str) -> list[str]:
    """``text`` as Markdown chunks within Telegram's limit (room left for the cursor)."""
    return _chunks(text, _LIMIT)


# -- seam: end ---------------------------------------------------------------------------------

__all__ = ["chunks", "escape", "markdown_to_html", "utf16_len"]
