"""The Discord front-end for ``finechat serve`` (entry point ``discord``).

:func:`create` returns None unless the bot is enabled and has a token, and imports discord.py
only then, so a server without the ``discord`` extra still serves the other front-ends.
:meth:`DiscordFrontend.run` follows discord.py's advanced-startup pattern inside the shared
event loop: ``async with client``, ``login`` (a bad token fails fast with a clear message),
``connect``; ``ready`` is set on the gateway's READY, and the stop event closes the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from core.config import Config, DiscordConfig
from core.errors import FinechatError
from core.service import ChatService

log = logging.getLogger("finechat.discord")

TYPING_REFRESH_S = 8.0
"""Discord shows "typing…" for about 10 s per request."""


class DiscordStartError(FinechatError):
    """The bot could not connect; the message says what to fix and never holds the token."""


@dataclass
class DiscordFrontend:
    config: DiscordConfig
    service: ChatService
    name: str = "discord"
    guild_ready_timeout: float = 2.0
    """How long discord.py waits for GUILD_CREATEs after READY (lower in tests)."""
    client: Any = None
    """The running ``FinechatClient`` (for tests and diagnostics), None when stopped."""
    layer: Any = None
    """The :class:`~bots.chat.layer.ChatLayer` of the last run (observers, tests)."""

    async def run(self, stop: asyncio.Event, ready: asyncio.Event) -> None:
        import discord

        from bots.chat.layer import ChatLayer
        from bots.chat.pacer import Pacers
        from bots.chat.runner import TurnSettings
        from bots.discord.client import DiscordChat, FinechatClient
        from bots.discord.commands import NAMES, install_commands
        from bots.discord.routing import apply_routing, resolve_routing
        from bots.discord.rules import AccessPolicy

        cfg = self.config
        token = cfg.token.reveal()
        apply_routing(resolve_routing(cfg.api_base_url, cfg.gateway_url))
        layer = ChatLayer(
            self.service,
            Pacers(cfg.edit_interval, cfg.edit_interval),
            settings=TurnSettings(cfg.reply_timeout, TYPING_REFRESH_S),
            commands=NAMES,
        )
        chat = DiscordChat(layer, AccessPolicy.from_config(cfg), auto_thread=cfg.auto_thread)
        client = FinechatClient(
            chat,
            install_commands=lambda tree: install_commands(tree, chat),
            guild_ids=cfg.guild_ids,
            guild_ready_timeout=self.guild_ready_timeout,
        )
        self.layer = layer
        self.client = client
        try:
            async with client:
                try:
                    await client.login(token)
                except discord.LoginFailure:
                    raise DiscordStartError(
                        "discord: the bot token was rejected — check DISCORD_BOT_TOKEN or "
                        "discord.token_file (Developer Portal → your app → Bot → Reset Token)"
                    ) from None
                except (discord.HTTPException, OSError) as exc:
                    raise DiscordStartError(
                        f"discord: cannot reach the API at {cfg.api_base_url}: {_scrub(exc, token)}"
                    ) from None
                await self._serve(client, stop, ready, token)
        finally:
            self.client = None

    async def _serve(
        self, client: Any, stop: asyncio.Event, ready: asyncio.Event, token: str
    ) -> None:
        import discord

        connection = asyncio.create_task(client.connect(reconnect=True), name="discord-gateway")
        up = asyncio.create_task(client.wait_until_ready())
        halt = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({connection, up, halt}, return_when=asyncio.FIRST_COMPLETED)
            if up.done() and not connection.done():
                log.info("discord: connected as %s", client.user)
                ready.set()
                await asyncio.wait({connection, halt}, return_when=asyncio.FIRST_COMPLETED)
            if connection.done() and not stop.is_set():
                exc = connection.exception()
                if isinstance(exc, discord.PrivilegedIntentsRequired):
                    raise DiscordStartError(
                        "discord: the Message Content intent is not enabled — Developer Portal → "
                        "your app → Bot → Privileged Gateway Intents → MESSAGE CONTENT INTENT"
                    )
                if exc is not None:
                    raise DiscordStartError(f"discord: gateway failed: {_scrub(exc, token)}")
                raise DiscordStartError("discord: the gateway connection closed")
        finally:
            for task in (up, halt):
                task.cancel()
            if self.layer is not None:  # answers in flight end with the restarting note
                await self.layer.shutdown()
            await client.close()
            if not connection.done():
                connection.cancel()
            with contextlib.suppress(BaseException):
                await connection


def _scrub(exc: BaseException, token: str) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.replace(token, "***") if token else text


def create(config: Config, service: ChatService) -> DiscordFrontend | None:
    """The factory ``finechat serve`` calls; None when Discord is off or has no token."""
    cfg = config.discord
    if not cfg.enabled or not cfg.token:
        return None
    import discord  # noqa: F401  # fail here (serve reports the missing extra) not mid-start

    return DiscordFrontend(cfg, service)
