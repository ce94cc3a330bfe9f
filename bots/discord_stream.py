"""Streamed replies on a chat platform: send fast, then edit at a sustainable pace.

:class:`EditPacer` is the one edit scheduler of a bot: per channel, at most one edit every
``interval`` seconds, shared by every reply streaming in that channel (Discord rate-limits
message edits per channel). :class:`LiveReply` renders one answer: the first message goes out as
soon as there is text (never paced, so first-message latency is the model's time to first
token), later text arrives by paced edits, and text beyond the platform limit continues in
follow-up messages split on paragraph → sentence → word boundaries with code fences kept whole.

Edits are awaited one after the other, so a rate-limited edit (HTTP 429, which discord.py
retries after exactly ``retry_after``) delays the next edit instead of piling requests up; the
newest text simply goes out with the next edit. The final text is written with retries and, if
a message has vanished, sent anew: it is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from bots.split import split_message

log = logging.getLogger("finechat.discord.stream")

CURSOR = " ▌"
H = TypeVar("H")


FENCE_CLOSE = "\n```"


def close_fence(chunk: str) -> str:
    """Close a code block left open at the end (an unfinished or cut-off answer), so the
    message renders as code rather than as literal backticks. Display only; memory keeps
    the model's exact text."""
    fences = [ln for ln in chunk.split("\n") if ln.lstrip().startswith("```")]
    return chunk + FENCE_CLOSE if len(fences) % 2 else chunk


class Outbox(Protocol[H]):
    """Where one reply's messages go; ``H`` is the platform's message handle."""

    async def send(self, content: str, *, first: bool) -> H: ...

    async def edit(self, handle: H, content: str) -> H: ...

    async def delete(self, handle: H) -> None: ...


class GoneError(Exception):
    """Raised by an :class:`Outbox` when the message to edit no longer exists."""


class RetryLater(Exception):
    """Raised by an :class:`Outbox` for a rate limit its HTTP client did not retry itself."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after:.3f} s")
        self.retry_after = retry_after


MAX_RATE_LIMIT_RETRIES = 5


class EditPacer:
    """At most one edit per ``interval`` seconds per channel, in arrival order."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._locks: dict[int, asyncio.Lock] = {}
        self._last: dict[int, float] = {}

    @contextlib.asynccontextmanager
    async def slot(self, channel_id: int) -> AsyncIterator[None]:
        lock = self._locks.setdefault(channel_id, asyncio.Lock())
        async with lock:
            last = self._last.get(channel_id)
            if last is not None:
                wait = last + self.interval - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._last[channel_id] = self._clock()
                if len(self._last) > 4096:  # forget channels idle for a while
                    self._forget_idle()

    def _forget_idle(self) -> None:
        cutoff = self._clock() - self.interval
        for channel_id, last in list(self._last.items()):
            lock = self._locks.get(channel_id)
            if last < cutoff and (lock is None or not lock.locked()):
                self._last.pop(channel_id, None)
                self._locks.pop(channel_id, None)


class LiveReply(Generic[H]):
    """One streamed answer, possibly spread over several messages."""

    def __init__(
        self,
        outbox: Outbox[H],
        pacer: EditPacer,
        channel_id: int,
        *,
        limit: int = 2000,
        final_attempts: int = 3,
    ) -> None:
        self._outbox = outbox
        self._pacer = pacer
        self._channel = channel_id
        self._limit = limit
        self._attempts = final_attempts
        self._text = ""
        self._notice: str | None = None
        self._final: str | None = None
        self._changed = asyncio.Event()
        self.handles: list[H] = []
        self._contents: list[str] = []
        self._pump: asyncio.Task[None] | None = None
        self.first_sent_at: float | None = None

    # -- feeding ---------------------------------------------------------------------------

    def notice(self, text: str) -> None:
        """A status line (e.g. queue position) shown until the answer starts."""
        self._notice = text
        self._wake()

    def feed(self, delta: str) -> None:
        self._text += delta
        if self._text.strip():
            self._wake()

    async def finish(self, final_text: str) -> list[H]:
        """Write ``final_text`` (all of it, split as needed) and return the message handles."""
        self._final = final_text
        self._wake()
        assert self._pump is not None
        await self._pump
        return self.handles

    async def abort(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump

    def _wake(self) -> None:
        if self._pump is None:
            self._pump = asyncio.create_task(self._run(), name="finechat-live-reply")
        self._changed.set()

    # -- rendering -------------------------------------------------------------------------

    def _render(self) -> list[str]:
        if self._final is not None:
            chunks = split_message(self._final, self._limit - len(FENCE_CLOSE)) or ["…"]
            chunks[-1] = close_fence(chunks[-1])
            return chunks
        if not self._text.strip():
            return [self._notice or "…"]
        chunks = split_message(self._text, self._limit - len(CURSOR) - len(FENCE_CLOSE))
        chunks[-1] = close_fence(chunks[-1] + CURSOR)
        return chunks

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            final = self._final is not None
            chunks = self._render()
            if not self.handles:  # the first message is never paced: it is the latency
                self.handles.append(await self._send(chunks[0], first=True))
                self._contents.append(chunks[0])
                self.first_sent_at = time.monotonic()
                if len(chunks) == 1 and not final:
                    continue
            if final:
                await self._write_final(chunks)
                return
            try:
                async with self._pacer.slot(self._channel):
                    await self._sync(chunks)
            except Exception as exc:  # an interim edit failing is harmless: the final retries
                log.warning("streaming edit failed: %s", type(exc).__name__)

    async def _write_final(self, chunks: list[str]) -> None:
        """Edit the messages into the final text; if editing keeps failing, post the final
        text as new messages instead, so the answer is never lost."""
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._pacer.slot(self._channel):
                    await self._sync(chunks)
                return
            except Exception as exc:
                log.warning("final edit failed (attempt %d): %s", attempt, type(exc).__name__)
        stale = list(self.handles)
        self.handles, self._contents = [], []
        for i, chunk in enumerate(chunks):
            self.handles.append(await self._send(chunk, first=i == 0))
            self._contents.append(chunk)
        for handle in stale:  # the half-streamed copies would only confuse
            with contextlib.suppress(Exception):
                await self._outbox.delete(handle)

    async def _send(self, content: str, *, first: bool) -> H:
        return await self._call(lambda: self._outbox.send(content, first=first))

    async def _edit(self, handle: H, content: str) -> H:
        return await self._call(lambda: self._outbox.edit(handle, content))

    async def _call(self, op: Callable[[], Awaitable[H]]) -> H:
        """Run one outbox operation, waiting exactly ``retry_after`` on a rate limit."""
        for _ in range(MAX_RATE_LIMIT_RETRIES):
            try:
                return await op()
            except RetryLater as limit:
                log.info("rate limited: retrying in %.3f s", limit.retry_after)
                await asyncio.sleep(limit.retry_after)
        return await op()

    async def _sync(self, chunks: list[str]) -> None:
        """Make the posted messages show ``chunks``: edit changed ones, post new ones, and
        re-post any that vanished (deleted by a moderator) so the answer stays complete."""
        for i, chunk in enumerate(chunks):
            if i < len(self.handles):
                if self._contents[i] == chunk:
                    continue
                handle = self.handles[i]
                try:
                    self.handles[i] = await self._edit(handle, chunk)
                except GoneError:
                    self.handles[i] = await self._send(chunk, first=False)
            else:
                self.handles.append(await self._send(chunk, first=False))
                self._contents.append(chunk)
            self._contents[i] = chunk
        while len(self.handles) > len(chunks):  # the final text came out shorter
            handle = self.handles.pop()
            self._contents.pop()
            with contextlib.suppress(Exception):
                await self._outbox.delete(handle)
