"""Entry point ``discord`` of ``finechat serve`` (pyproject.toml): see :mod:`bots.discord`."""

from bots.discord.frontend import DiscordFrontend, DiscordStartError, create

__all__ = ["DiscordFrontend", "DiscordStartError", "create"]
