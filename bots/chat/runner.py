"""The turn runner: one reply from the chat service into a chat, however it ends.

It shows the queue position while the model is busy, refreshes "typing…" until the first
text, bounds the whole reply by ``reply_timeout``, closes the service's reply stream on every
exit (so the conversation is released at once), and always ends with a message: the answer,
or the partial answer with a note (stopped, restarting, failed), or an apology that never
contains internal text. Delivered answers are recorded with every message id they used, so
a reply to any part of a long answer continues that turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from bots.chat import texts
from bots.chat.live import DeliveryFailed, LiveReply
from bots.chat.outbox import Place, Style
from bots.chat.pacer import Pacers
from core.errors import FinechatError
from core.service import ChatService, Delta, Done, ReplyEvent, Started

log = logging.getLogger("finechat.bots")


@dataclass(frozen=True)
class TurnSettings:
    reply_timeout: float = 600.0
    """Seconds a reply may take, queue included, before the person gets an apology."""
    typing_interval: float = 4.0
    """How often "typing…" is renewed while the model reads the prompt."""


@dataclass(frozen=True)
class TurnResult:
    outcome: str
    """``answered``, ``stopped``, ``timeout``, ``failed`` or ``undelivered``."""
    message_ids: tuple[str, ...]
    ttft_seconds: float | None = None
    first_message_seconds: float | None = None


class TurnRunner:
    """Runs replies; :meth:`shutdown` stops those in flight with a "restarting" note."""

    def __init__(self, service: ChatService, settings: TurnSettings, pacers: Pacers) -> None:
        self.service = service
        self.settings = settings
        self.pacers = pacers
        self.stopping = False
        self._running: dict[str, int] = {}
        self._idle = asyncio.Condition()

    async def run(self, place: Place, key: str, events: AsyncIterator[ReplyEvent]) -> TurnResult:
        """Stream ``events`` (from ``service.reply``/``retry`` for ``key``) into ``place``."""
        self._running[key] = self._running.get(key, 0) + 1
        try:
            return await self._run(place, key, events)
        finally:
            await self._release(key)

    async def _run(self, place: Place, key: str, events: AsyncIterator[ReplyEvent]) -> TurnResult:
        received = time.monotonic()
        reply: LiveReply[Any] = LiveReply(
            place.outbox(), self.pacers.get(place.scope, group=place.group), group=place.group
        )
        first_text = asyncio.Event()
        typing = asyncio.create_task(self._keep_typing(place, first_text))
        parts: list[str] = []
        done: Done | None = None
        failure: str | None = None
        outcome = "failed"
        try:
            async with asyncio.timeout(self.settings.reply_timeout):
                async for event in events:
                    if isinstance(event, Started) and event.queue_position > 0:
                        await reply.status(texts.queue_note(event.queue_position))
                    elif isinstance(event, Delta):
                        parts.append(event.text)
                        if not first_text.is_set() and event.text.strip():
                            first_text.set()
                        reply.append(event.text)
                    elif isinstance(event, Done):
                        done = event
        except FinechatError as exc:  # written to be shown (busy, too long, nothing to retry)
            failure = str(exc)
        except TimeoutError:
            self.service.cancel(key)  # before the stream is closed, so the engine stops too
            failure, outcome = texts.TIMEOUT, "timeout"
        except Exception as exc:
            log.error("reply failed: %s", type(exc).__name__)
            log.debug("reply failure detail: %s", exc)
            failure = texts.APOLOGY
        except BaseException:  # cancelled: stop streaming, leave what is shown
            with contextlib.suppress(Exception):
                await reply.abort()
            raise
        finally:
            first_text.set()
            typing.cancel()
            with contextlib.suppress(Exception):
                await _close(events)

        final, style = self._final_text(done, "".join(parts), failure)
        if done is not None:
            outcome = {"cancelled": "stopped", "error": "failed"}.get(
                done.finish_reason, "answered"
            )
        try:
            ids = await reply.finish(final, style)
        except DeliveryFailed as exc:
            log.error("answer not delivered: %s", exc)
            return TurnResult("undelivered", tuple(reply.message_ids))
        except Exception as exc:
            log.error("answer not delivered: %s", type(exc).__name__)
            return TurnResult("undelivered", tuple(reply.message_ids))
        if done is not None and done.message_id is not None and ids:
            try:
                await self.service.record_delivery(done.message_id, ids)
            except Exception as exc:
                log.error("delivery not recorded: %s", type(exc).__name__)
        return TurnResult(
            outcome,
            tuple(ids),
            done.ttft_seconds if done is not None else None,
            time.monotonic() - received,
        )

    def _final_text(
        self, done: Done | None, streamed: str, failure: str | None
    ) -> tuple[str, Style]:
        if done is None:
            note = failure or texts.APOLOGY
            partial = streamed.strip()
            return (f"{partial}\n\n{note}", Style.FINAL) if partial else (note, Style.PLAIN)
        if done.finish_reason == "cancelled":
            note = texts.SHUTDOWN if self.stopping else texts.STOPPED
            return (f"{done.text}\n\n{note}", Style.FINAL) if done.text else (note, Style.PLAIN)
        if done.finish_reason == "error":
            return (
                (f"{done.text}\n\n{texts.APOLOGY}", Style.FINAL)
                if done.text
                else (texts.APOLOGY, Style.PLAIN)
            )
        if not done.text:
            return texts.EMPTY_ANSWER, Style.PLAIN
        return done.text, Style.FINAL

    async def _keep_typing(self, place: Place, until: asyncio.Event) -> None:
        """'typing…' while queued and while the model reads the prompt."""
        while not until.is_set():
            try:
                await place.typing()
            except Exception as exc:
                log.debug("typing not shown: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.typing_interval):
                    await until.wait()

    async def _release(self, key: str) -> None:
        count = self._running.get(key, 0) - 1
        if count > 0:
            self._running[key] = count
        else:
            self._running.pop(key, None)
        async with self._idle:
            self._idle.notify_all()

    async def shutdown(self, grace: float = 15.0) -> None:
        """Stop every reply in flight (each ends with the restarting note) and wait a while
        for them to be delivered."""
        self.stopping = True
        for key in list(self._running):
            self.service.cancel(key)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace), self._idle:
                await self._idle.wait_for(lambda: not self._running)


async def _close(events: AsyncIterator[ReplyEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
