"""Telegram's side of the :class:`~bots.chat.outbox.Outbox` seam: Bot API calls for one reply.

Intermediate and plain text go out as plain text; final text is rendered as Telegram HTML and
sent as plain text instead if Telegram refuses the HTML (bad entities, or nothing visible). In a group the first message
quotes the person's message; in a forum topic every call carries the topic's
``message_thread_id``. PTB's errors become the layer's: ``RetryAfter`` → :class:`RetryLater`,
an edit of a deleted message → :class:`MessageGone`, other ``BadRequest``/``Forbidden`` →
:class:`Rejected`; network errors pass through (retried for final text).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from telegram import Bot, LinkPreviewOptions, ReplyParameters
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter

from bots.chat.outbox import MessageGone, Outbox, Rejected, RetryLater, Style
from bots.telegram.chunks import telegram_chunks_async as chunks
from bots.telegram.format import escape, markdown_to_html

T = TypeVar("T")
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


def retry_seconds(exc: RetryAfter) -> float:
    """``retry_after`` in seconds (PTB gives an int or, opted in, a timedelta)."""
    value: Any = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _is_parse_error(exc: BadRequest) -> bool:
    text = exc.message.lower()
    return "parse entities" in text or "can't find end" in text or "unsupported start tag" in text


class EntitiesRejected(Exception):
    """Telegram could not parse the HTML we sent."""


@contextlib.contextmanager
def _translated(*, editing: bool = False, html: bool = False) -> Iterator[None]:
    try:
        yield
    except RetryAfter as exc:
        raise RetryLater(retry_seconds(exc)) from None
    except BadRequest as exc:
        if html and _is_parse_error(exc):
            raise EntitiesRejected(exc.message) from None
        if editing and "not found" in exc.message.lower():
            raise MessageGone(exc.message) from None
        raise Rejected(exc.message) from None
    except (Forbidden, InvalidToken) as exc:
        raise Rejected(type(exc).__name__) from None


@dataclass
class TelegramOutbox:
    """Messages of one reply in one chat (and topic). Handles are Telegram message ids."""

    bot: Bot
    chat_id: int
    topic_id: int | None = None
    quote: int | None = None
    """The person's message the first message replies to (groups), if any."""
    _sent_any: bool = field(default=False, init=False)

    async def split(self, text: str, *, suffix: str = "") -> list[str]:
        parts = await chunks(text)
        if parts and suffix:
            parts[-1] += suffix  # the chunks leave room for the cursor
        return parts

    def restyles(self, chunk: str) -> bool:
        return markdown_to_html(chunk) != escape(chunk)

    async def send(self, text: str, style: Style) -> int:
        reply = (
            ReplyParameters(self.quote, allow_sending_without_reply=True)
            if self.quote is not None and not self._sent_any
            else None
        )

        async def post(body: str, html: bool) -> int:
            message = await self.bot.send_message(
                self.chat_id,
                body,
                parse_mode=ParseMode.HTML if html else None,
                message_thread_id=self.topic_id,
                reply_parameters=reply,
                link_preview_options=NO_PREVIEW,
            )
            return message.message_id

        message_id = await self._rendered(text, style, post, editing=False)
        self._sent_any = True
        return message_id

    async def edit(self, handle: int, text: str, style: Style) -> int:
        async def change(body: str, html: bool) -> int:
            try:
                await self.bot.edit_message_text(
                    body,
                    chat_id=self.chat_id,
                    message_id=handle,
                    parse_mode=ParseMode.HTML if html else None,
                    link_preview_options=NO_PREVIEW,
                )
            except BadRequest as exc:
                if "not modified" not in exc.message.lower():
                    raise
            return handle

        return await self._rendered(text, style, change, editing=True)

    async def delete(self, handle: int) -> None:
        with _translated():
            await self.bot.delete_message(self.chat_id, handle)

    def message_id(self, handle: int) -> str:
        return str(handle)

    async def _rendered(
        self,
        text: str,
        style: Style,
        call: Callable[[str, bool], Awaitable[T]],
        *,
        editing: bool,
    ) -> T:
        """Final text as HTML, falling back to plain text when Telegram rejects the entities."""
        if style is Style.FINAL:
            html = markdown_to_html(text)
            if html != escape(text):
                try:
                    with _translated(editing=editing, html=True):
                        return await call(html, True)
                except (EntitiesRejected, Rejected):
                    pass  # refused as HTML (bad entities, nothing visible…): plain text below
        with _translated(editing=editing):
            return await call(text, False)


@dataclass
class TelegramPlace:
    """A chat (and maybe a forum topic) where a message came from."""

    bot: Bot
    chat_id: int
    scope: str
    group: bool
    topic_id: int | None = None
    quote: int | None = None
    ephemeral: bool = False

    def outbox(self, *, note: bool = False) -> Outbox[Any]:
        return TelegramOutbox(self.bot, self.chat_id, self.topic_id, self.quote)

    async def typing(self) -> None:
        await self.bot.send_chat_action(
            self.chat_id, ChatAction.TYPING, message_thread_id=self.topic_id
        )

    async def acknowledge(self) -> None:
        return None
