"""Discord's rules, on plain data: who may talk where, when the bot answers, whose memory.

* Access follows what Discord communities expect from llmcord-style bots: allow/block lists
  for users, roles and channels; a thread is judged by its own id *and* its parent channel's,
  a channel by its category's too, so allowing a category allows every channel and thread in
  it. Admins are always allowed. DMs have no roles or channels, so only the user lists and
  ``allow_dms`` apply.
* The bot answers a mention or a reply to one of its messages in guild channels, and every
  message in DMs and in threads it has joined. It never answers bots (loops) or itself.
* Memory is per person per channel or thread: ``discord:CHANNEL_OR_THREAD:USER``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from bots.chat.texts import Refusal
from core.config import DiscordConfig

PLATFORM = "discord"


@dataclass(frozen=True)
class Where:
    """Where a message or command came from, reduced to ids."""

    user_id: int
    role_ids: frozenset[int] = frozenset()
    channel_ids: tuple[int, ...] = ()
    """The channel or thread, then its parent channel, then its category (as known)."""
    is_dm: bool = False


@dataclass(frozen=True)
class AccessPolicy:
    allowed_users: frozenset[int] = frozenset()
    blocked_users: frozenset[int] = frozenset()
    allowed_roles: frozenset[int] = frozenset()
    blocked_roles: frozenset[int] = frozenset()
    allowed_channels: frozenset[int] = frozenset()
    blocked_channels: frozenset[int] = frozenset()
    admin_ids: frozenset[int] = frozenset()
    allow_dms: bool = True

    @classmethod
    def from_config(cls, cfg: DiscordConfig) -> AccessPolicy:
        return cls(
            allowed_users=frozenset(cfg.allowed_users),
            blocked_users=frozenset(cfg.blocked_users),
            allowed_roles=frozenset(cfg.allowed_roles),
            blocked_roles=frozenset(cfg.blocked_roles),
            allowed_channels=frozenset(cfg.allowed_channels),
            blocked_channels=frozenset(cfg.blocked_channels),
            admin_ids=frozenset(cfg.admin_ids),
            allow_dms=cfg.allow_dms,
        )

    def is_admin(self, user_id: int) -> bool:
        return user_id in self.admin_ids

    def refusal(self, where: Where) -> Refusal | None:
        """None when ``where`` may use the bot, else why not."""
        if self.is_admin(where.user_id):
            return None
        if where.is_dm:
            if not self.allow_dms:
                return Refusal.PRIVATE_DISABLED
            user_ok = not self.allowed_users or where.user_id in self.allowed_users
            if not user_ok or where.user_id in self.blocked_users:
                return Refusal.USER_NOT_ALLOWED
            return None
        open_to_all = not self.allowed_users and not self.allowed_roles
        user_ok = (
            open_to_all
            or where.user_id in self.allowed_users
            or _any_in(where.role_ids, self.allowed_roles)
        )
        blocked = where.user_id in self.blocked_users or _any_in(where.role_ids, self.blocked_roles)
        if not user_ok or blocked:
            return Refusal.USER_NOT_ALLOWED
        channel_ok = not self.allowed_channels or _any_in(where.channel_ids, self.allowed_channels)
        if not channel_ok or _any_in(where.channel_ids, self.blocked_channels):
            return Refusal.CHAT_NOT_ALLOWED
        return None


def _any_in(ids: Iterable[int], allowed: frozenset[int]) -> bool:
    return any(i in allowed for i in ids)


@dataclass(frozen=True)
class Facts:
    """One Discord message, reduced to what the rules look at."""

    author_id: int
    author_is_bot: bool
    is_dm: bool = False
    is_thread: bool = False
    bot_in_thread: bool = False
    """The bot is a member (or the owner) of the thread."""
    mentions_bot: bool = False
    replies_to_bot: bool = False


def should_answer(facts: Facts, *, bot_id: int) -> bool:
    """Mention or reply-to-bot in guild channels; every message in joined threads and DMs."""
    if facts.author_is_bot or facts.author_id == bot_id:
        return False
    if facts.is_dm or facts.mentions_bot or facts.replies_to_bot:
        return True
    return facts.is_thread and facts.bot_in_thread


def conversation_key(channel_id: int, user_id: int) -> str:
    """Memory is per user per channel/thread (a DM channel is one channel)."""
    return f"{PLATFORM}:{channel_id}:{user_id}"


def scope_of(channel_id: int) -> str:
    """Discord limits edits per channel: one pacer per channel or thread."""
    return f"{PLATFORM}:{channel_id}"


def prompt_text(content: str, *, bot_id: int) -> str:
    """The user's words without the bot's own mention (``<@id>`` / ``<@!id>``)."""
    return re.sub(rf"<@!?{bot_id}>", "", content).strip()


def thread_name(text: str, limit: int = 80) -> str:
    """A readable thread title from the first line of a message (Discord allows 100 chars)."""
    first = " ".join(text.split("\n", 1)[0].split())
    if not first:
        return "Conversation"
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"
