"""An answer as Discord messages: mentions neutralised, then cut to 2,000 characters.

Discord counts a message's content in characters (``len``); :func:`discord_chunks` applies
:func:`bots.discord.mentions.neutralize_mentions` first (it lengthens the text) and then
:func:`bots.chat.split.split_message`, so every chunk — fence lines and cursor included — fits.
"""

from __future__ import annotations

import asyncio

from bots.chat.split import split_message
from bots.discord.mentions import neutralize_mentions

MESSAGE_LIMIT = 2000
"""Discord's limit on a message's content, in characters."""
CURSOR = " ▌"
INLINE_CHARS = 4000
"""Answers up to this long are cut on the event loop; longer ones in a worker thread."""


def discord_chunks(text: str, limit: int = MESSAGE_LIMIT, *, suffix: str = "") -> list[str]:
    """``text`` as message contents of at most ``limit`` characters; ``suffix`` (the streaming
    cursor) ends the last one, inside a code block still open there. [] for a blank text."""
    return split_message(neutralize_mentions(text), limit, suffix=suffix)


async def discord_chunks_async(
    text: str, limit: int = MESSAGE_LIMIT, *, suffix: str = ""
) -> list[str]:
    """:func:`discord_chunks` without holding the event loop on a long answer."""
    if len(text) <= INLINE_CHARS:
        return discord_chunks(text, limit, suffix=suffix)
    return await asyncio.to_thread(discord_chunks, text, limit, suffix=suffix)
