"""Streaming one reply into Telegram messages: first message fast, paced edits, exact final text.

Telegram limits how often a bot may post or edit in one chat (roughly once a second in private
chats, 20 messages a minute in groups) and answers HTTP 429 with ``retry_after`` when it is
exceeded. So every call that writes into a chat goes through that chat's :class:`ChatPacer`,
shared by all replies streaming into the chat: it spaces calls by the chat's interval, and a
429 holds the whole chat for exactly ``retry_after`` seconds.

A :class:`StreamingReply` sends its first text at once (the first message is what makes the
bot feel alive), then a background flusher edits it as text arrives — only when the text has
grown by a step that widens with its length, so long answers do not spend their budget on tiny
edits. Text past 4,096 characters continues in new messages, cut by
:func:`bots.split.split_message`. Intermediate edits are plain text with a cursor; only the
final edit renders Markdown as HTML, falling back to plain text if Telegram rejects the
entities. The final text is retried through flood waits and network errors, never truncated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from telegram import Bot, LinkPreviewOptions, Message, ReplyParameters
from telegram.constants import MessageLimit, ParseMode
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError

from bots.split import split_message
from bots.telegram_format import escape, markdown_to_html

log = logging.getLogger("finechat.telegram")

CURSOR = " ▌"
TEXT_LIMIT = int(MessageLimit.MAX_TEXT_LENGTH) - len(CURSOR)
"""Chunk size: Telegram's 4,096 less room for the streaming cursor, so chunks never move."""
FINAL_ATTEMPTS = 8
"""Network failures tolerated for one final call (flood waits do not count)."""

T = TypeVar("T")


class EntitiesRejected(Exception):
    """Telegram could not parse the HTML we sent."""


def retry_seconds(exc: RetryAfter) -> float:
    """``retry_after`` in seconds (PTB gives an int or, opted in, a timedelta)."""
    value: Any = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _is_parse_error(exc: BadRequest) -> bool:
    text = exc.message.lower()
    return "parse entities" in text or "can't find end" in text or "unsupported start tag" in text


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def telegram_chunks(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """``text`` cut into message-sized chunks (see :func:`bots.split.split_message`).

    Telegram measures text in UTF-16 code units, where an emoji counts twice; a chunk that
    is short in characters but long in code units is cut again, smaller.
    """
    out: list[str] = []
    for chunk in split_message(text, limit):
        size = utf16_len(chunk)
        if size <= limit:
            out.append(chunk)
        else:
            out.extend(telegram_chunks(chunk, max(40, limit * limit // size - 8)))
    return out


def min_growth(length: int, *, group: bool) -> int:
    """Characters the text must grow by before the next intermediate edit."""
    step = 8 if length < 300 else 30 if length < 1000 else 80 if length < 2500 else 160
    return step * 2 if group else step


class ChatPacer:
    """Spaces the write calls into one chat; a 429 pauses the chat for ``retry_after``."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = asyncio.Lock()
        self._next = 0.0
        self._hold_until = 0.0

    async def turn(self, *, urgent: bool = False) -> None:
        """Wait for this chat's next slot. ``urgent`` skips the spacing, never a flood hold."""
        async with self._lock:
            while True:
                target = self._hold_until if urgent else max(self._next, self._hold_until)
                delay = target - self._clock()
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            self._next = self._clock() + self.interval

    def hold(self, seconds: float) -> None:
        self._hold_until = max(self._hold_until, self._clock() + seconds)


class ChatPacers:
    """One :class:`ChatPacer` per chat, created on first use (bounded: old idle ones dropped)."""

    def __init__(self, private_interval: float, group_interval: float, max_chats: int = 4096):
        self.private_interval = private_interval
        self.group_interval = group_interval
        self._pacers: dict[int, ChatPacer] = {}
        self._max = max_chats

    def get(self, chat_id: int, *, group: bool) -> ChatPacer:
        pacer = self._pacers.pop(chat_id, None)
        if pacer is None:
            pacer = ChatPacer(self.group_interval if group else self.private_interval)
            if len(self._pacers) >= self._max:
                self._pacers.pop(next(iter(self._pacers)))
        self._pacers[chat_id] = pacer  # most recently used last
        return pacer


@dataclass
class _Sent:
    message_id: int
    shown: str
    """The text as last sent (plain; the final rendering may add formatting)."""


class StreamingReply:
    """One answer, streamed into one or more messages of a chat (see module docstring)."""

    def __init__(
        self,
        bot: Bot,
        chat_id: int,
        pacer: ChatPacer,
        *,
        group: bool,
        reply_to: int | None = None,
        on_first_message: Callable[[], None] | None = None,
    ) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._pacer = pacer
        self._group = group
        self._reply_to = reply_to
        self._on_first = on_first_message
        self._sent: list[_Sent] = []
        self._has_text = False
        self._latest = ""
        self._pushed_len = 0
        self._final = False
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def message_ids(self) -> list[int]:
        return [s.message_id for s in self._sent]

    @property
    def started(self) -> bool:
        """Whether anything (status or text) has been posted yet."""
        return bool(self._sent)

    # -- feeding ---------------------------------------------------------------------------

    async def status(self, text: str) -> None:
        """Post a status line (e.g. the queue position) that the answer will replace."""
        if self._sent or self._has_text:
            return
        await self._pacer.turn(urgent=True)
        await self._best_effort(lambda: self._send(text))

    def feed(self, text: str) -> None:
        """The answer so far; edits follow in the background at the chat's pace."""
        self._latest = text
        if not text.strip():
            return
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="telegram-stream")
        self._wake.set()

    async def finish(self, text: str) -> list[int]:
        """Deliver the final ``text`` (Markdown rendered); returns the message ids used."""
        self._final = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
        chunks = telegram_chunks(text) or ["…"]
        for index, chunk in enumerate(chunks):
            await self._final_chunk(index, chunk)
        for extra in self._sent[len(chunks) :]:  # the text shrank (trailing whitespace trimmed)
            await self._best_effort(partial(self._delete, extra.message_id))
        del self._sent[len(chunks) :]
        return self.message_ids

    async def abort(self) -> None:
        """Stop the background flusher (the caller posts its own last word)."""
        self._final = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher

    # -- the flusher -----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while not self._final:
            await self._wake.wait()
            self._wake.clear()
            if self._final:
                break
            if self._has_text and len(self._latest) - self._pushed_len < min_growth(
                len(self._latest), group=self._group
            ):
                continue
            await self._pacer.turn(urgent=not self._has_text)
            if self._final:
                break
            try:
                await self._push_intermediate(self._latest)
            except TelegramError as exc:
                # An intermediate edit may be lost; the final one is retried until it lands.
                if isinstance(exc, RetryAfter):
                    self._pacer.hold(retry_seconds(exc))
                log.debug("intermediate edit failed: %s", type(exc).__name__)

    async def _push_intermediate(self, text: str) -> None:
        """Bring the messages up to ``text``; the caller holds the pacer turn for the first call."""
        have_turn = True
        chunks = telegram_chunks(text)
        for index, chunk in enumerate(chunks):
            shown = chunk + CURSOR if index == len(chunks) - 1 else chunk
            if index < len(self._sent) and self._sent[index].shown == shown:
                continue
            if not have_turn:
                await self._pacer.turn()
            have_turn = False
            if index < len(self._sent):
                await self._edit(index, shown, html=False)
            else:
                await self._send(shown)
        self._has_text = True
        self._pushed_len = len(text)

    # -- final delivery --------------------------------------------------------------------

    async def _final_chunk(self, index: int, chunk: str) -> None:
        rendered = markdown_to_html(chunk)
        plain_enough = rendered == escape(chunk)
        if index < len(self._sent):
            if self._sent[index].shown == chunk and plain_enough:
                return
            try:
                await self._final_call(lambda: self._edit(index, rendered, html=True, raw=chunk))
            except EntitiesRejected:
                await self._final_call(lambda: self._edit(index, chunk, html=False))
            return
        try:
            await self._final_call(lambda: self._send(rendered, html=True, raw=chunk))
        except EntitiesRejected:
            await self._final_call(lambda: self._send(chunk))

    async def _final_call(self, call: Callable[[], Awaitable[T]]) -> T | None:
        failures = 0
        while True:
            await self._pacer.turn()
            try:
                return await call()
            except RetryAfter as exc:
                wait = retry_seconds(exc)
                log.info("telegram flood control: waiting %.1f s as told", wait)
                self._pacer.hold(wait)
            except BadRequest as exc:
                if "not modified" in exc.message.lower():
                    return None
                if _is_parse_error(exc):
                    raise EntitiesRejected(exc.message) from None
                raise
            except NetworkError as exc:  # includes TimedOut
                failures += 1
                if failures >= FINAL_ATTEMPTS:
                    raise
                log.warning("telegram call failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(min(2.0**failures, 30.0))

    async def _best_effort(self, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await call()
        except TelegramError as exc:
            if isinstance(exc, RetryAfter):
                self._pacer.hold(retry_seconds(exc))
            log.debug("telegram call skipped: %s", type(exc).__name__)

    # -- raw calls -------------------------------------------------------------------------

    async def _send(self, text: str, *, html: bool = False, raw: str | None = None) -> None:
        reply = (
            ReplyParameters(self._reply_to, allow_sending_without_reply=True)
            if self._reply_to is not None and not self._sent
            else None
        )
        message: Message = await self._bot.send_message(
            self._chat_id,
            text,
            parse_mode=ParseMode.HTML if html else None,
            reply_parameters=reply,
            link_preview_options=LinkPreviewOptions(is_disabled=True),
        )
        first = not self._sent
        self._sent.append(_Sent(message.message_id, raw if raw is not None else text))
        if first and self._on_first is not None:
            self._on_first()

    async def _edit(self, index: int, text: str, *, html: bool, raw: str | None = None) -> None:
        sent = self._sent[index]
        try:
            await self._bot.edit_message_text(
                text,
                chat_id=self._chat_id,
                message_id=sent.message_id,
                parse_mode=ParseMode.HTML if html else None,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
        except BadRequest as exc:
            if "not found" not in exc.message.lower():
                raise
            # Someone deleted the message: post the text anew rather than lose it.
            message = await self._bot.send_message(
                self._chat_id,
                text,
                parse_mode=ParseMode.HTML if html else None,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
            sent.message_id = message.message_id
        sent.shown = raw if raw is not None else text

    async def _delete(self, message_id: int) -> None:
        await self._bot.delete_message(self._chat_id, message_id)
