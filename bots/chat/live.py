"""One answer streamed into a chat: first message fast, paced edits, the exact final text.

A :class:`LiveReply` posts its first text at once (the first message is what makes the bot
feel alive), then a background flusher edits it as text arrives — through the chat's
:class:`~bots.chat.pacer.Pacer`, and only when the text has grown by a step that widens with
its length, so long answers do not spend the chat's budget on tiny edits. Text past the
platform's message size continues in new messages (the outbox cuts it). Intermediate text is
plain with a cursor; the final text is rendered by the platform, retried through rate limits
and network trouble, and re-posted if someone deleted a message: it is never truncated.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Generic

from bots.chat.outbox import H, MessageGone, Outbox, Rejected, RetryLater, Style
from bots.chat.pacer import Pacer

log = logging.getLogger("finechat.bots")

CURSOR = " ▌"
ELLIPSIS = "…"
"""Posted for an answer with no visible text (platforms refuse empty messages)."""

_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


def wire_safe(text: str) -> str:
    """``text`` as any platform's JSON encoder accepts it.

    A lone UTF-16 surrogate cannot be encoded as UTF-8 (it becomes U+FFFD) and C0 control
    characters other than tab and newline are dropped. Linear in the text, never raises.
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda m: "\ufffd" if m.group() >= "\ud800" else "", text)


def min_growth(length: int, *, group: bool) -> int:
    """Characters the text must grow by before the next intermediate edit."""
    step = 8 if length < 300 else 30 if length < 1000 else 80 if length < 2500 else 160
    return step * 2 if group else step


class DeliveryFailed(Exception):
    """The final text could not be delivered (the platform refused it or stayed down)."""


@dataclass
class _Shown(Generic[H]):
    handle: H
    text: str
    style: Style


class LiveReply(Generic[H]):
    """One answer, streamed into one or more messages of a chat (see module docstring)."""

    def __init__(
        self,
        outbox: Outbox[H],
        pacer: Pacer,
        *,
        group: bool = False,
        attempts: int = 6,
        backoff: float = 1.0,
    ) -> None:
        self._outbox = outbox
        self._pacer = pacer
        self._group = group
        self._attempts = attempts
        self._backoff = backoff
        self._shown: list[_Shown[H]] = []
        self._stale: list[H] = []
        """Messages replaced by newer ones, deleted once the final text is out."""
        self._parts: list[str] = []
        self._text = ""
        self._has_text = False
        self._pushed_len = 0
        self._final = False
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        """Whether anything (a status line or text) has been posted yet."""
        return bool(self._shown)

    @property
    def message_ids(self) -> list[str]:
        return [self._outbox.message_id(s.handle) for s in self._shown]

    # -- feeding ---------------------------------------------------------------------------

    async def status(self, text: str) -> None:
        """Post a status line (the queue position) that the answer will replace."""
        if self._shown or self._has_text or self._final:
            return
        await self._pacer.turn(urgent=True)
        try:
            await self._write(0, wire_safe(text), Style.PLAIN)
        except RetryLater as exc:
            self._pacer.hold(exc.retry_after)
        except Exception as exc:  # a status line is a courtesy: the answer follows anyway
            log.debug("status line not posted: %s", type(exc).__name__)

    def append(self, delta: str) -> None:
        """More of the answer; edits follow in the background at the chat's pace."""
        if self._final or not delta:
            return
        self._parts.append(delta)
        if self._flusher is None:
            if not delta.strip():
                return
            self._flusher = asyncio.create_task(self._flush_loop(), name="finechat-live-reply")
        self._wake.set()

    async def finish(self, text: str, style: Style = Style.FINAL) -> list[str]:
        """Deliver ``text`` in full (rendered in ``style``); returns the platform message ids.

        Raises :class:`DeliveryFailed` when the platform refuses or stays unreachable.
        """
        await self.abort()
        chunks = await self._outbox.split(wire_safe(text)) or [ELLIPSIS]
        for index, chunk in enumerate(chunks):
            if index < len(self._shown) and self._unchanged(self._shown[index], chunk, style):
                continue
            await self._deliver(index, chunk, style)
        self._repost_from(len(chunks))  # the final text is shorter than the stream was
        for handle in self._stale:
            try:
                await self._pacer.turn()
                await self._outbox.delete(handle)
            except Exception as exc:
                log.debug("stale message not deleted: %s", type(exc).__name__)
        self._stale.clear()
        return self.message_ids

    async def abort(self) -> None:
        """Stop streaming (waits for an edit in flight); the text shown so far stays."""
        self._final = True
        self._wake.set()
        if self._flusher is not None:
            flusher, self._flusher = self._flusher, None
            try:
                await flusher
            except Exception as exc:  # pragma: no cover - the loop catches its own errors
                log.debug("flusher ended with %s", type(exc).__name__)

    # -- the flusher -----------------------------------------------------------------------

    def _current(self) -> str:
        if self._parts:
            self._text += "".join(self._parts)
            self._parts.clear()
        return self._text

    async def _flush_loop(self) -> None:
        while not self._final:
            await self._wake.wait()
            self._wake.clear()
            if self._final:
                break
            text = self._current()
            grown = len(text) - self._pushed_len
            if self._has_text and grown < min_growth(len(text), group=self._group):
                continue
            await self._pacer.turn(urgent=not self._shown)
            if self._final:
                break
            try:
                await self._push(self._current())
            except RetryLater as exc:  # an edit may be lost; the final text is retried
                self._pacer.hold(exc.retry_after)
            except Exception as exc:
                log.debug("intermediate edit failed: %s", type(exc).__name__)

    async def _push(self, text: str) -> None:
        """Bring the messages up to ``text``; the caller holds the pacer turn for one call."""
        chunks = await self._outbox.split(wire_safe(text), suffix=CURSOR)
        have_turn = True
        for index, shown in enumerate(chunks):
            if index < len(self._shown) and self._shown[index].text == shown:
                continue
            if not have_turn:
                await self._pacer.turn()
                if self._final:
                    return
            have_turn = False
            await self._write(index, shown, Style.STREAMING)
        self._has_text = True
        self._pushed_len = len(text)

    # -- final delivery --------------------------------------------------------------------

    def _unchanged(self, shown: _Shown[H], chunk: str, style: Style) -> bool:
        if shown.text != chunk:
            return False
        return shown.style is style or not (style is Style.FINAL and self._outbox.restyles(chunk))

    async def _deliver(self, index: int, chunk: str, style: Style) -> None:
        """Write one final chunk: flood waits are waited out, failures retried with backoff,
        and messages that cannot be edited are posted anew (in order) instead."""
        failures = 0
        while True:
            await self._pacer.turn(urgent=not self._shown)
            try:
                await self._write(index, chunk, style)
                return
            except RetryLater as exc:
                log.info("rate limited: waiting %.1f s as told", exc.retry_after)
                self._pacer.hold(exc.retry_after)
            except Rejected as exc:
                if index < len(self._shown):
                    self._repost_from(index)  # an edit refused: post the text anew
                    continue
                raise DeliveryFailed(f"the platform refused the message: {exc}") from None
            except Exception as exc:
                failures += 1
                if failures >= self._attempts:
                    if index < len(self._shown):
                        self._repost_from(index)
                        failures = 0
                        continue
                    raise DeliveryFailed(f"gave up after {failures} failures") from exc
                log.warning("chat call failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(min(self._backoff * 2 ** (failures - 1), 30.0))

    async def _write(self, index: int, text: str, style: Style) -> None:
        """Edit message ``index`` into ``text``, or post it when there is none yet."""
        if index < len(self._shown):
            shown = self._shown[index]
            try:
                shown.handle = await self._outbox.edit(shown.handle, text, style)
                shown.text, shown.style = text, style
                return
            except MessageGone:  # deleted by someone: post the rest anew rather than lose it
                self._repost_from(index, gone=True)
        handle = await self._outbox.send(text, style)
        self._shown.append(_Shown(handle, text, style))

    def _repost_from(self, index: int, *, gone: bool = False) -> None:
        """Messages from ``index`` on will be posted anew, in order; the old ones deleted."""
        dropped = self._shown[index:]
        del self._shown[index:]
        self._stale.extend(s.handle for s in (dropped[1:] if gone else dropped))
