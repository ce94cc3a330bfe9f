"""Discord messages reduced to plain facts, and the pure rules applied to them.

The adapter (bots/discord_bot.py) turns a ``discord.Message`` into an :class:`Incoming`; everything
here decides from those facts alone (whether to answer, whose memory, what text), so the rules are
tested without a gateway and the adapter stays a thin translation layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLATFORM = "discord"


@dataclass(frozen=True)
class Incoming:
    message_id: int
    author_id: int
    author_is_bot: bool
    content: str
    channel_id: int
    """The channel, thread or DM channel the message is in."""
    guild_id: int | None
    is_dm: bool = False
    is_thread: bool = False
    bot_in_thread: bool = False
    """The bot is a member (or the owner) of the thread."""
    mentions_bot: bool = False
    reply_to_bot_message_id: int | None = None
    """Set when the message replies to one of the bot's messages."""


def conversation_key(channel_id: int, user_id: int) -> str:
    """Memory is per user per channel/thread (a DM channel is one channel)."""
    return f"{PLATFORM}:{channel_id}:{user_id}"


def should_answer(msg: Incoming, *, bot_id: int) -> bool:
    """Mention or reply-to-bot in guild channels; every message in joined threads and DMs."""
    if msg.author_is_bot or msg.author_id == bot_id:
        return False  # never answer bots (loops) or ourselves
    if msg.is_dm:
        return True
    if msg.mentions_bot or msg.reply_to_bot_message_id is not None:
        return True
    return msg.is_thread and msg.bot_in_thread


def prompt_text(content: str, *, bot_id: int) -> str:
    """The user's words without the bot's own mention (``<@id>`` / ``<@!id>``)."""
    return re.sub(rf"<@!?{bot_id}>", "", content).strip()


def thread_name(text: str, limit: int = 80) -> str:
    """A readable thread title from the first line of a message (Discord allows 100 chars)."""
    first = " ".join(text.split("\n", 1)[0].split())
    if not first:
        return "Conversation"
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"
