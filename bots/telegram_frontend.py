"""Entry point ``telegram`` of ``finechat serve`` (pyproject.toml): see :mod:`bots.telegram`."""

from bots.telegram.frontend import TelegramFrontend, TelegramStartError, check_settings, create

__all__ = ["TelegramFrontend", "TelegramStartError", "check_settings", "create"]
