"""Who may talk to the Discord bot, where: a pure decision, no discord.py objects.

The rules follow what Discord communities expect from llmcord-style bots: allow/block lists for
users, roles and channels; a thread is judged by its own id *and* its parent channel's, a channel
by its category's too, so allowing a category allows every channel and thread in it. Admins are
always allowed. DMs have no roles or channels, so only the user lists and ``allow_dms`` apply.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.config import DiscordConfig


@dataclass(frozen=True)
class Place:
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

    def refusal(self, place: Place) -> str | None:
        """None when ``place`` may use the bot, else the short sentence to tell the user."""
        if self.is_admin(place.user_id):
            return None
        if place.is_dm:
            if not self.allow_dms:
                return "I don't answer direct messages here — talk to me in a server channel."
            user_ok = not self.allowed_users or place.user_id in self.allowed_users
            if not user_ok or place.user_id in self.blocked_users:
                return "Sorry, you're not allowed to use this bot."
            return None
        open_to_all = not self.allowed_users and not self.allowed_roles
        user_ok = (
            open_to_all
            or place.user_id in self.allowed_users
            or _any_in(place.role_ids, self.allowed_roles)
        )
        blocked = place.user_id in self.blocked_users or _any_in(place.role_ids, self.blocked_roles)
        if not user_ok or blocked:
            return "Sorry, you're not allowed to use this bot."
        channel_ok = not self.allowed_channels or _any_in(place.channel_ids, self.allowed_channels)
        if not channel_ok or _any_in(place.channel_ids, self.blocked_channels):
            return "Sorry, I'm not allowed to answer in this channel."
        return None


def _any_in(ids: Iterable[int], allowed: frozenset[int]) -> bool:
    return any(i in allowed for i in ids)
