"""The Telegram front-end for ``finechat serve`` (entry point ``telegram``).

This module imports no Telegram library: :func:`create` returns ``None`` when the bot is not
configured, so a machine without python-telegram-bot (or without a token) serves the other
front-ends. The library is imported inside :meth:`TelegramFrontend.run`, and start-up failures
become a :class:`TelegramStartError` whose text never contains the token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

from bots.telegram import redact
from core.config import Config, TelegramConfig
from core.errors import ConfigError, FinechatError
from core.frontends import FrontendUnavailable
from core.service import ChatService

log = logging.getLogger("finechat.telegram")


class TelegramStartError(FinechatError):
    """The bot could not connect to the Bot API (message safe to print)."""


def check_settings(config: TelegramConfig) -> None:
    """Reject settings that would flood Telegram or never answer, naming the key."""
    if not config.base_url.startswith(("http://", "https://")):
        raise ConfigError("telegram.base_url: must start with http:// or https://")
    for key in ("edit_interval", "group_edit_interval", "typing_interval", "reply_timeout"):
        if getattr(config, key) <= 0:
            raise ConfigError(f"telegram.{key}: must be greater than 0")
    if not 0 <= config.poll_timeout <= 600:
        raise ConfigError("telegram.poll_timeout: must be between 0 and 600 seconds")


@dataclass
class TelegramFrontend:
    config: TelegramConfig
    service: ChatService
    name: str = "telegram"
    bot: Any = None
    """The running :class:`bots.telegram.bot.TelegramBot` (for metrics and tests), once started."""

    async def run(self, stop: asyncio.Event, ready: asyncio.Event) -> None:
        token = self.config.token.reveal()
        redact.register(token)
        try:
            from telegram.error import InvalidToken, TelegramError

            from bots.telegram.bot import TelegramBot

            self.bot = TelegramBot(self.config, self.service)
            try:
                await self.bot.run(stop, ready)
            except InvalidToken:
                raise TelegramStartError(
                    "telegram: the Bot API rejected the token (check TELEGRAM_BOT_TOKEN)"
                ) from None
            except TelegramError as exc:
                if ready.is_set():
                    raise TelegramStartError(
                        f"telegram: stopped: {redact.scrub(str(exc))}"
                    ) from None
                raise TelegramStartError(
                    f"telegram: cannot reach the Bot API at {self.config.base_url}: "
                    f"{redact.scrub(str(exc))}"
                ) from None
        finally:
            redact.unregister(token)


def create(config: Config, service: ChatService) -> TelegramFrontend | None:
    """The front-end, or ``None`` when disabled or when no token is set."""
    tg = config.telegram
    if not tg.enabled or not tg.token:
        return None
    check_settings(tg)
    if importlib.util.find_spec("telegram") is None:
        raise FrontendUnavailable(
            "telegram: python-telegram-bot is not installed: pip install 'finechat[telegram]'"
        )
    return TelegramFrontend(tg, service)
