"""Seam: Discord's output function (an answer as message contents), from one place.

Today this is the existing :mod:`bots.split` plus closing a code block left open; the total,
property-tested version (mentions neutralised, fences balanced, cursor inside the block)
lands in ``bots/discord/chunks.py`` (issue 12, item 2). Switching is replacing the lines
between the markers with:

    from bots.discord.chunks import discord_chunks_async as chunks
"""

from __future__ import annotations

# -- seam: begin -------------------------------------------------------------------------------
from bots.split import split_message

_LIMIT = 2000 - 2 - 4
"""Discord's 2,000 characters less room for the cursor and a closing fence line."""


def _close_open_fence(chunk: str) -> str:
    fences = [ln for ln in chunk.split("\n") if ln.lstrip().startswith("```")]
    return chunk + "\n```" if len(fences) % 2 else chunk


async def chunks(text: str, *, suffix: str = "") -> list[str]:
    """``text`` as message contents; ``suffix`` (the streaming cursor) ends the last one."""
    parts = split_message(text, _LIMIT) if text.strip() else []
    if parts and suffix:
        parts[-1] += suffix
    return [_close_open_fence(p) for p in parts]


# -- seam: end ---------------------------------------------------------------------------------

__all__ = ["chunks"]
