"""The Telegram adapter: python-telegram-bot updates in, :class:`ChatService` calls out.

Thin on purpose: who may talk and when the bot answers live in :mod:`bots.telegram_rules`,
how an answer reaches the chat in :mod:`bots.telegram_stream`, Markdown → HTML in
:mod:`bots.telegram_format`. This module wires them to PTB handlers and runs the
``Application`` inside the shared event loop (never ``run_polling``, which would own the loop).

Updates are processed concurrently (one slow reply does not hold other chats); the chat
service keeps one conversation to one reply at a time and says so politely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from telegram import BotCommand, LinkPreviewOptions, Message, Update
from telegram.constants import ChatAction
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

from bots import telegram_redact
from bots.telegram_rules import (
    REFUSALS,
    Access,
    AccessPolicy,
    Entity,
    Incoming,
    ReplyTo,
    check_access,
    command_argument,
    conversation_key,
    is_addressed,
    is_admin,
    quote_into_prompt,
    strip_mentions,
)
from bots.telegram_stream import ChatPacers, StreamingReply
from core.config import TelegramConfig
from core.errors import FinechatError
from core.service import ChatService, Delta, Done, ReplyEvent, Started

log = logging.getLogger("finechat.telegram")

# PTB 22 warns on every RetryAfter that ``retry_after`` will become a timedelta; we accept both
# (bots.telegram_stream.retry_seconds), so the warning would only add noise to flood waits.
warnings.filterwarnings("ignore", message=".*retry_after.*", category=PTBDeprecationWarning)

APOLOGY = "Sorry — something went wrong on my side. Please try again in a moment."
TIMEOUT_APOLOGY = "Sorry — that took too long, so I stopped. Please try again (maybe shorter)."
SHUTDOWN_NOTE = "⏹ Interrupted: the bot is restarting. Send your message again in a minute."
STOPPED_NOTE = "⏹ Stopped."
EMPTY_ANSWER = "I have no answer to that. Try /retry or rephrase your message."
NOT_TEXT = "I can only read text for now — please type your message."
REFUSAL_QUIET_S = 600.0
"""After telling someone they may not use the bot, stay quiet in that chat this long."""

COMMANDS: list[tuple[str, str]] = [
    ("start", "Say hello and show what I can do"),
    ("help", "How to talk to me"),
    ("ask", "Ask a question (in groups)"),
    ("reset", "Start a new conversation"),
    ("retry", "Regenerate my last answer"),
    ("cancel", "Stop the answer in progress"),
    ("persona", "Show or set your system prompt"),
    ("stats", "Your turns, tokens and the model"),
    ("forget", "Delete everything I stored about you in this chat"),
    ("model", "Switch the model (admins only)"),
]


def api_url(base_url: str, kind: str = "bot") -> str:
    """PTB's base URL from the config's server root (``…/bot`` or ``…/file/bot``).

    A value that already ends in ``/bot`` or contains ``{token}`` is taken as PTB's own form.
    """
    base = base_url.rstrip("/")
    if "{token}" in base:
        return base if kind == "bot" else base.replace("/bot", "/file/bot", 1)
    if base.endswith("/bot"):
        base = base[: -len("/bot")]
    return f"{base}/file/bot" if kind == "file" else f"{base}/bot"


def policy_from(config: TelegramConfig) -> AccessPolicy:
    return AccessPolicy(
        allowed_user_ids=frozenset(config.allowed_user_ids),
        allowed_chat_ids=frozenset(config.allowed_chat_ids),
        admin_ids=frozenset(config.admin_ids),
        allow_private=config.allow_private,
    )


@dataclass(frozen=True)
class ReplyMetrics:
    """Timing of one answer, for the logs and the latency checks."""

    chat_id: int
    first_message_seconds: float | None
    """From the update reaching the handler to the first message being posted."""
    ttft_seconds: float | None
    total_seconds: float


def to_incoming(message: Message, bot_id: int) -> Incoming:
    user = message.from_user
    reply: ReplyTo | None = None
    target = message.reply_to_message
    if target is not None:
        quoted = message.quote.text if message.quote is not None else None
        author = target.from_user
        reply = ReplyTo(
            message_id=target.message_id,
            from_bot_self=author is not None and author.id == bot_id,
            author=(author.first_name if author is not None else None) or "Someone",
            text=quoted or target.text or target.caption or "",
        )
    return Incoming(
        chat_id=message.chat_id,
        chat_type=message.chat.type,
        user_id=user.id if user is not None else 0,
        user_is_bot=user is None or user.is_bot,
        message_id=message.message_id,
        text=message.text or "",
        entities=tuple(
            Entity(e.type, e.offset, e.length, e.user.id if e.user is not None else None)
            for e in message.entities
        ),
        reply_to=reply,
    )


class TelegramBot:
    """PTB handlers for one bot account; :meth:`run` serves until the stop event."""

    def __init__(self, config: TelegramConfig, service: ChatService) -> None:
        self.config = config
        self.service = service
        self.policy = policy_from(config)
        self.pacers = ChatPacers(config.edit_interval, config.group_edit_interval)
        self.metrics: deque[ReplyMetrics] = deque(maxlen=200)
        self.replies_finished = 0
        self._finished = asyncio.Condition()
        self._active: set[str] = set()
        self._refused: dict[tuple[int, int], float] = {}
        self._stopping = False
        self.app: Application = (  # type: ignore[type-arg]
            ApplicationBuilder()
            .token(config.token.reveal())
            .base_url(api_url(config.base_url))
            .base_file_url(api_url(config.base_url, "file"))
            .concurrent_updates(True)
            .build()
        )
        self._add_handlers()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, ready: asyncio.Event) -> None:
        async with self.app:  # initialize (getMe) … shutdown
            try:
                await self.app.bot.set_my_commands([BotCommand(c, d) for c, d in COMMANDS])
            except TelegramError as exc:  # a missing command menu must not keep the bot down
                log.warning("telegram: setMyCommands failed: %s", telegram_redact.scrub(str(exc)))
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
                self._stopping = True
                for key in list(self._active):
                    self.service.cancel(key)
                await self.app.updater.stop()
                await self.app.stop()

    def _add_handlers(self) -> None:
        only_messages = filters.UpdateType.MESSAGE
        commands: dict[
            str, Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]]
        ] = {
            "start": self._on_start,
            "help": self._on_help,
            "ask": self._on_ask,
            "reset": self._on_reset,
            "retry": self._on_retry,
            "cancel": self._on_cancel,
            "persona": self._on_persona,
            "stats": self._on_stats,
            "forget": self._on_forget,
            "model": self._on_model,
        }
        for name, callback in commands.items():
            self.app.add_handler(CommandHandler(name, callback, filters=only_messages))
        self.app.add_handler(
            MessageHandler(filters.TEXT & ~filters.COMMAND & only_messages, self._on_text)
        )
        self.app.add_handler(
            MessageHandler(
                filters.ChatType.PRIVATE
                & ~filters.TEXT
                & ~filters.StatusUpdate.ALL
                & only_messages,
                self._on_not_text,
            )
        )
        self.app.add_error_handler(self._on_error)

    # -- gatekeeping -----------------------------------------------------------------------

    @property
    def _username(self) -> str:
        return str(self.app.bot.username)

    async def _admit(self, update: Update, *, addressed: bool = True) -> Incoming | None:
        """The message if the bot should handle it; refuses politely when it must."""
        message = update.message
        if message is None or message.from_user is None:
            return None
        incoming = to_incoming(message, self.app.bot.id)
        if incoming.user_is_bot or incoming.chat_type == "channel" or not addressed:
            return None
        access = check_access(self.policy, incoming.chat_id, incoming.chat_type, incoming.user_id)
        if access is not Access.ALLOWED:
            log.info(
                "telegram: refused chat=%s user=%s (%s)",
                incoming.chat_id,
                incoming.user_id,
                access.value,
            )
            if self._first_refusal(incoming.chat_id, incoming.user_id):
                await self._say(message, REFUSALS[access])
            return None
        return incoming

    def _first_refusal(self, chat_id: int, user_id: int) -> bool:
        """One polite refusal per person and chat per quiet period: no spam, no ping-pong."""
        now = time.monotonic()
        last = self._refused.get((chat_id, user_id))
        if last is not None and now - last < REFUSAL_QUIET_S:
            return False
        if len(self._refused) > 10_000:
            self._refused.clear()
        self._refused[(chat_id, user_id)] = now
        return True

    async def _say(self, message: Message, text: str) -> None:
        """A short plain reply (commands, refusals, errors); failures are only logged."""
        try:
            await message.reply_text(
                text,
                do_quote=message.chat.type != "private",
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
        except TelegramError as exc:
            log.warning("telegram: could not reply (%s)", telegram_redact.scrub(str(exc)))

    # -- messages --------------------------------------------------------------------------

    async def _on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None:
            return
        incoming = to_incoming(message, self.app.bot.id)
        addressed = is_addressed(incoming, self._username, self.app.bot.id)
        incoming_ok = await self._admit(update, addressed=addressed)
        if incoming_ok is None:
            return
        text = strip_mentions(incoming_ok.text, self._username)
        if not text:
            await self._say(message, "Yes? Write your question after my name.")
            return
        await self._answer(message, incoming_ok, text)

    async def _on_not_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Photos, stickers, voice… in a private chat: say so rather than stay silent."""
        if await self._admit(update) is not None and update.message is not None:
            await self._say(update.message, NOT_TEXT)

    async def _on_ask(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        incoming = await self._admit(update)
        if incoming is None or update.message is None:
            return
        text = command_argument(incoming.text)
        if not text:
            await self._say(update.message, "Ask me something: /ask YOUR QUESTION")
            return
        await self._answer(update.message, incoming, text)

    async def _answer(self, message: Message, incoming: Incoming, text: str) -> None:
        key = conversation_key(incoming.chat_id, incoming.user_id)
        parent_id: int | None = None
        reply_to = incoming.reply_to
        if reply_to is not None and reply_to.from_bot_self:
            parent_id = await self._own_turn(key, reply_to.message_id)
            if parent_id is not None:
                reply_to = None  # the conversation itself holds that message
        prompt = quote_into_prompt(text, reply_to)
        events = self.service.reply(
            key,
            prompt,
            parent_id=parent_id,
            platform_message_id=str(incoming.message_id),
        )
        await self._stream(message, incoming, key, events)

    async def _own_turn(self, key: str, telegram_message_id: int) -> int | None:
        """The stored answer behind one of our messages, if it is this person's conversation."""
        store = self.service.store
        chat_prefix = key.rsplit(":", 1)[0] + ":"
        turn = await store.find_by_platform_id(chat_prefix, str(telegram_message_id))
        if turn is None or await store.conversation_key(turn.conversation_id) != key:
            return None
        return turn.id

    async def _stream(
        self,
        message: Message,
        incoming: Incoming,
        key: str,
        events: AsyncIterator[ReplyEvent],
    ) -> None:
        """Run one reply from the chat service into the chat."""
        received = time.monotonic()
        first_message_at: float | None = None
        first_text = asyncio.Event()

        def on_first() -> None:
            nonlocal first_message_at
            first_message_at = time.monotonic()

        reply = StreamingReply(
            self.app.bot,
            incoming.chat_id,
            self.pacers.get(incoming.chat_id, group=incoming.is_group),
            group=incoming.is_group,
            reply_to=incoming.message_id if incoming.is_group else None,
            on_first_message=on_first,
        )
        typing = asyncio.create_task(self._keep_typing(incoming.chat_id, first_text))
        text = ""
        done: Done | None = None
        failure: str | None = None
        self._active.add(key)
        try:
            async with asyncio.timeout(self.config.reply_timeout), _closing(events):
                async for event in events:
                    if isinstance(event, Started) and event.queue_position > 0:
                        await reply.status(_queue_note(event.queue_position))
                    elif isinstance(event, Delta):
                        text += event.text
                        if text.strip():
                            first_text.set()
                            reply.feed(text)
                    elif isinstance(event, Done):
                        done = event
        except FinechatError as exc:
            failure = str(exc)
        except TimeoutError:
            self.service.cancel(key)
            failure = TIMEOUT_APOLOGY
        except Exception as exc:
            log.error(
                "telegram: reply failed: %s: %s",
                type(exc).__name__,
                telegram_redact.scrub(str(exc)),
            )
            failure = APOLOGY
        finally:
            self._active.discard(key)
            first_text.set()
            typing.cancel()

        if done is None:
            await reply.abort()
            note = failure or APOLOGY
            if text.strip():
                await self._finish(reply, f"{text.strip()}\n\n{note}", None)
            elif reply.started:
                await self._finish(reply, note, None)
            else:
                await self._say(message, note)
            await self._record(
                ReplyMetrics(
                    incoming.chat_id,
                    None if first_message_at is None else first_message_at - received,
                    None,
                    time.monotonic() - received,
                )
            )
            return
        final = done.text
        if done.finish_reason == "cancelled":
            note = SHUTDOWN_NOTE if self._stopping else STOPPED_NOTE
            final = f"{final}\n\n{note}" if final else note
        elif done.finish_reason == "error":
            final = f"{final}\n\n{APOLOGY}" if final else APOLOGY
        elif not final:
            final = EMPTY_ANSWER
        await self._finish(reply, final, done.message_id)
        await self._record(
            ReplyMetrics(
                chat_id=incoming.chat_id,
                first_message_seconds=None
                if first_message_at is None
                else first_message_at - received,
                ttft_seconds=done.ttft_seconds,
                total_seconds=time.monotonic() - received,
            )
        )
        log.info(
            "telegram reply chat=%s first_message=%s ttft=%s reason=%s",
            incoming.chat_id,
            _ms(first_message_at - received if first_message_at else None),
            _ms(done.ttft_seconds),
            done.finish_reason,
        )

    async def _record(self, metrics: ReplyMetrics) -> None:
        self.metrics.append(metrics)
        async with self._finished:
            self.replies_finished += 1
            self._finished.notify_all()

    async def wait_replies(self, count: int) -> None:
        """Wait until ``count`` answers have been delivered in full (health checks, tests)."""
        async with self._finished:
            await self._finished.wait_for(lambda: self.replies_finished >= count)

    async def _finish(self, reply: StreamingReply, text: str, turn_id: int | None) -> None:
        try:
            ids = await reply.finish(text)
        except TelegramError as exc:
            log.error("telegram: final message failed: %s", telegram_redact.scrub(str(exc)))
            return
        if turn_id is not None and ids:
            # People reply to the end of an answer: map the last message to the stored turn.
            await self.service.store.set_platform_message_id(turn_id, str(ids[-1]))

    async def _keep_typing(self, chat_id: int, until: asyncio.Event) -> None:
        """'typing…' during queueing and prompt processing (Telegram shows it for ~5 s)."""
        while not until.is_set():
            with contextlib.suppress(TelegramError):
                await self.app.bot.send_chat_action(chat_id, ChatAction.TYPING)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.typing_interval):
                    await until.wait()

    # -- commands --------------------------------------------------------------------------

    async def _on_start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        incoming = await self._admit(update)
        if incoming is None or update.message is None:
            return
        where = (
            "Just write to me."
            if incoming.is_private
            else f"Mention me (@{self._username}), reply to one of my messages, or use /ask."
        )
        await self._say(
            update.message,
            f"Hi! I'm a chat bot running {self.service.model_name} on my own computer. "
            f"{where}\n\n{_help_text()}",
        )

    async def _on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        incoming = await self._admit(update)
        if incoming is not None and update.message is not None:
            await self._say(update.message, _help_text())

    async def _on_reset(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._command(update, self._reset)

    async def _reset(self, incoming: Incoming, key: str) -> str:
        await self.service.reset(key)
        return "🆕 New conversation started — I've put our earlier chat aside."

    async def _on_retry(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        incoming = await self._admit(update)
        if incoming is None or update.message is None:
            return
        key = conversation_key(incoming.chat_id, incoming.user_id)
        await self._stream(update.message, incoming, key, self.service.retry(key))

    async def _on_cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._command(update, self._cancel)

    async def _cancel(self, incoming: Incoming, key: str) -> str:
        if self.service.cancel(key):
            return "OK, stopping."
        return "Nothing to cancel — I'm not answering anything for you right now."

    async def _on_persona(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._command(update, self._persona)

    async def _persona(self, incoming: Incoming, key: str) -> str:
        argument = command_argument(incoming.text)
        if not argument:
            current = await self.service.get_persona(key)
            return (
                f"Your persona (system prompt):\n\n{current}\n\n"
                "Change it with /persona TEXT, or /persona reset for the default."
            )
        if argument.lower() in {"reset", "default"}:
            await self.service.set_persona(key, None)
            return "Persona reset to the default."
        await self.service.set_persona(key, argument)
        return "Persona set. It applies from your next message."

    async def _on_stats(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._command(update, self._stats)

    async def _stats(self, incoming: Incoming, key: str) -> str:
        stats = await self.service.stats(key)
        return (
            f"Turns: {stats['replies']}\n"
            f"Messages: {stats['messages']}\n"
            f"Tokens: {stats['tokens']}\n"
            f"Model: {stats['model']}"
        )

    async def _on_forget(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._command(update, self._forget)

    async def _forget(self, incoming: Incoming, key: str) -> str:
        removed = await self.service.forget(key)
        return f"🗑️ Deleted {removed} stored messages and your settings in this chat."

    async def _on_model(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._command(update, self._model)

    async def _model(self, incoming: Incoming, key: str) -> str:
        if not is_admin(self.policy, incoming.user_id):
            return "Sorry — only the bot's admins can switch models."
        argument = command_argument(incoming.text)
        available = self.service.available_models()
        if not argument:
            chosen = (await self.service.store.get_profile(key)).settings.get("model")
            current = chosen if chosen in available else self.service.model_name
            listing = "\n".join(f"{'•' if m == current else '◦'} {m}" for m in available)
            return f"Models:\n{listing}\n\nSwitch with /model NAME."
        await self.service.set_model(key, argument)
        return f"Model set to {argument}."

    async def _command(
        self,
        update: Update,
        action: Callable[[Incoming, str], Awaitable[str]],
    ) -> None:
        """Run a command that answers with one message; user errors are shown as they are."""
        incoming = await self._admit(update)
        if incoming is None or update.message is None:
            return
        key = conversation_key(incoming.chat_id, incoming.user_id)
        try:
            answer = await action(incoming, key)
        except FinechatError as exc:
            answer = str(exc)
        except Exception as exc:
            log.error(
                "telegram: command failed: %s: %s",
                type(exc).__name__,
                telegram_redact.scrub(str(exc)),
            )
            answer = APOLOGY
        await self._say(update.message, answer)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        error = context.error
        log.error(
            "telegram: handler error: %s: %s",
            type(error).__name__,
            telegram_redact.scrub(str(error)),
        )


@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[ReplyEvent]) -> AsyncIterator[None]:
    """Close the service's generator on any exit, so its conversation is released at once."""
    try:
        yield
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def _help_text() -> str:
    return (
        "Commands:\n"
        + "\n".join(f"/{name} — {description}" for name, description in COMMANDS)
        + "\n\nEach person has their own memory in each chat."
    )


def _queue_note(position: int) -> str:
    ahead = "1 request" if position == 1 else f"{position} requests"
    return f"⏳ The model is busy — {ahead} ahead of you. I'll start answering shortly."


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"
