"""Conversation keys as people type them on the command line.

Stored keys are ``platform:...`` (see :func:`core.memory.platform_of`). Operators address a
terminal user by a bare name and any platform's user by its full key, for support and data
requests (``finechat forget --user telegram:CHAT:USER``).
"""

from __future__ import annotations

PLATFORMS = ("cli", "web", "telegram", "discord")


def user_key(user: str) -> str:
    """``--user a`` means the terminal user ``cli:a``; a full key (``telegram:1:2``) is kept."""
    platform, sep, _ = user.partition(":")
    if sep and platform in PLATFORMS:
        return user
    return f"cli:{user}"
