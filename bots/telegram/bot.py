"""The Telegram adapter: python-telegram-bot updates in, the conversation layer out.

Thin on purpose: Telegram's rules live in :mod:`bots.telegram.rules`, the Bot API calls of a
reply in :mod:`bots.telegram.outbox`, and everything else — streaming, commands, refusals,
the reply runner — in :mod:`bots.chat`. This module turns PTB updates into plain facts and
runs the ``Application`` inside the shared event loop (never ``run_polling``, which would own
the loop). Updates are processed concurrently, so one slow reply does not hold other chats.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from telegram import BotCommand, Message, MessageEntity, Update
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.warnings import PTBDeprecationWarning

from bots.chat.incoming import Attachment, ReplyTo, command_argument
from bots.chat.layer import ChatLayer
from bots.chat.pacer import Pacers
from bots.chat.runner import TurnSettings
from bots.chat.texts import COMMANDS
from bots.telegram import redact, rules
from bots.telegram.outbox import TelegramPlace
from bots.telegram.rules import AccessPolicy, Entity, Facts
from core.config import TelegramConfig
from core.service import ChatService

log = logging.getLogger("finechat.telegram")

# PTB 22 warns on every RetryAfter that ``retry_after`` will become a timedelta; we accept both
# (bots.telegram.outbox.retry_seconds), so the warning would only add noise to flood waits.
warnings.filterwarnings("ignore", message=".*retry_after.*", category=PTBDeprecationWarning)

_ATTACHMENT_KINDS = (
    "document", "photo", "audio", "video", "voice", "video_note", "animation", "sticker",
    "location", "venue", "contact", "poll", "dice", "game", "story", "paid_media", "invoice",
)  # fmt: skip

Callback = Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]]


def policy_from(config: TelegramConfig) -> AccessPolicy:
    return AccessPolicy(
        allowed_user_ids=frozenset(config.allowed_user_ids),
        allowed_chat_ids=frozenset(config.allowed_chat_ids),
        admin_ids=frozenset(config.admin_ids),
        allow_private=config.allow_private,
    )


def attachments_of(message: Message) -> tuple[Attachment, ...]:
    """The non-text part of a message (Telegram sends at most one kind per message)."""
    for kind in _ATTACHMENT_KINDS:
        value: Any = getattr(message, kind, None)
        if not value:
            continue
        if isinstance(value, list | tuple):  # photo sizes: the largest is last
            value = value[-1]
        return (
            Attachment(
                kind,
                name=getattr(value, "file_name", None) or "",
                size=getattr(value, "file_size", None),
                content_type=getattr(value, "mime_type", None),
                ref=getattr(value, "file_id", None) or "",
            ),
        )
    return ()


def facts_of(message: Message, bot_id: int) -> Facts:
    user = message.from_user
    topic = message.message_thread_id if message.is_topic_message else None
    target = message.reply_to_message
    if target is not None and topic is not None and target.message_id == topic:
        target = None  # in a forum topic, "replying" to the topic itself is no reply
    reply: ReplyTo | None = None
    if target is not None:
        quoted = message.quote.text if message.quote is not None else None
        author = target.from_user
        reply = ReplyTo(
            message_id=str(target.message_id),
            from_self=author is not None and author.id == bot_id,
            author=(author.first_name if author is not None else None) or "Someone",
            text=quoted or target.text or target.caption or "",
        )
    text = message.text or message.caption or ""
    attachments = attachments_of(message)
    if not text and not attachments:
        attachments = (Attachment("other"),)  # a kind this bot does not know yet
    return Facts(
        chat_id=message.chat_id,
        chat_type=message.chat.type,
        user_id=user.id if user is not None else 0,
        user_is_bot=user is None or user.is_bot,
        message_id=message.message_id,
        text=text,
        entities=tuple(
            Entity(e.type, e.offset, e.length, e.user.id if e.user is not None else None)
            for e in (message.entities or message.caption_entities)
        ),
        reply_to=reply,
        topic_id=topic,
        attachments=attachments,
    )


def _starts_with_command(message: Message) -> bool:
    return any(
        e.type == MessageEntity.BOT_COMMAND and e.offset == 0 for e in message.entities or ()
    )


class TelegramBot:
    """PTB handlers for one bot account; :meth:`run` serves until the stop event."""

    def __init__(self, config: TelegramConfig, service: ChatService) -> None:
        self.config = config
        self.service = service
        self.policy = policy_from(config)
        self.layer = ChatLayer(
            service,
            Pacers(config.edit_interval, config.group_edit_interval),
            settings=TurnSettings(config.reply_timeout, config.typing_interval),
        )
        self.app: Application = (  # type: ignore[type-arg]
            ApplicationBuilder()
            .token(config.token.reveal())
            .base_url(rules.api_url(config.base_url))
            .base_file_url(rules.api_url(config.base_url, "file"))
            .concurrent_updates(True)
            .build()
        )
        only_messages = filters.UpdateType.MESSAGE
        for info in COMMANDS:
            handler = CommandHandler(info.name, self._command(info.name), filters=only_messages)
            self.app.add_handler(handler)
        self.app.add_handler(
            MessageHandler(only_messages & ~filters.StatusUpdate.ALL, self._on_message)
        )
        self.app.add_error_handler(self._on_error)

    async def run(self, stop: Any, ready: Any) -> None:
        async with self.app:  # initialize (getMe) … shutdown
            try:
                await self.app.bot.set_my_commands(
                    [BotCommand(c.name, c.description) for c in COMMANDS]
                )
            except TelegramError as exc:  # a missing command menu must not keep the bot down
                log.warning("telegram: setMyCommands failed: %s", redact.scrub(str(exc)))
            assert self.app.updater is not None
            await self.app.updater.start_polling(
                timeout=self.config.poll_timeout,
                allowed_updates=[Update.MESSAGE],
                drop_pending_updates=False,
            )
            await self.app.start()
            log.info("telegram: polling as @%s", self.app.bot.username)
            ready.set()
            try:
                await stop.wait()
            finally:
                await self.app.updater.stop()
                await self.layer.shutdown()  # answers in flight end with the restarting note
                await self.app.stop()

    # -- translation -----------------------------------------------------------------------

    @property
    def _username(self) -> str:
        return str(self.app.bot.username)

    def _place(self, facts: Facts) -> TelegramPlace:
        return TelegramPlace(
            self.app.bot,
            facts.chat_id,
            scope=rules.scope_of(facts.chat_id),
            group=facts.is_group,
            topic_id=facts.topic_id,
            quote=None if facts.is_private else facts.message_id,
        )

    async def _on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None:
            return
        facts = facts_of(message, self.app.bot.id)
        incoming = rules.incoming(facts, self.policy, self._username, self.app.bot.id)
        if _starts_with_command(message):  # someone else's command, or one we do not know
            incoming = replace(incoming, addressed=False)
        await self.layer.message(incoming, self._place(facts))

    def _command(self, name: str) -> Callback:
        async def on_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            message = update.message
            if message is None:
                return
            facts = facts_of(message, self.app.bot.id)
            place = self._place(facts)
            if facts.user_is_bot or facts.chat_type == "channel":
                ignored = rules.incoming(facts, self.policy, self._username, self.app.bot.id)
                await self.layer.message(replace(ignored, addressed=False), place)
                return
            argument = command_argument(facts.text)
            call = rules.command(facts, name, argument, self.policy, self._username)
            await self.layer.command(call, place)

        return on_command

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        error = context.error
        log.error("telegram: handler error: %s: %s", type(error).__name__, redact.scrub(str(error)))
