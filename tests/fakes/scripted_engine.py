"""A scripted :class:`~core.engine.Engine`: deterministic answers streamed word by word.

For tests where the model does not matter (limits, cancellation, errors, the API's request
handling): it answers in microseconds, records every request, and shows what happened to each
generation — finished, cancelled, still running — which a real model cannot show cheaply.
One word is one token. A generation runs as a task (like the remote engine's), so a stream
nobody reads or cancels keeps "generating" exactly as a real one would.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from core.engine import (
    STREAM_DONE,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    read_stream_queue,
)
from core.errors import EngineBusy
from core.template import FALLBACK_TEMPLATE, ChatTemplate, Message

Answer = str | Callable[[GenerationRequest], str]


class ScriptedEngine:
    def __init__(
        self,
        answer: Answer = "Hello from the scripted engine.",
        *,
        n_ctx: int = 2048,
        delay: float = 0.0,
        slots: int = 4,
        max_queue: int = 64,
        name: str = "scripted",
    ) -> None:
        self.info = ModelInfo(
            name, "scripted", n_ctx, ChatTemplate(FALLBACK_TEMPLATE), False, "", ()
        )
        self.answer = answer
        self.delay = delay
        """Seconds between words (a slow model makes cancellation windows real)."""
        self.n_slots = slots
        self.max_queue = max_queue
        self.requests: list[GenerationRequest] = []
        self.finished: dict[str, FinishReason] = {}
        """Conversation key → how its latest generation ended."""
        self.running: set[str] = set()
        self.state: dict[str, int] = {}
        """Conversation key → tokens "cached" for it (what a KV cache would hold)."""
        self.forgotten: list[str] = []
        self.fail_tokenize: BaseException | None = None
        self.fail_generate: BaseException | None = None
        self.fail_stream: BaseException | None = None
        """Raised to the reader after the first word."""
        self._pending = 0
        self._slots = asyncio.Semaphore(slots)
        self._tasks: set[asyncio.Task[None]] = set()

    async def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        if self.fail_tokenize is not None:
            raise self.fail_tokenize
        return [len(word) for word in text.split()]

    async def encode_messages(self, messages: list[Message]) -> list[int]:
        tokens: list[int] = []
        for seg in self.info.template.render(messages, add_generation_prompt=True):
            tokens.extend(await self.tokenize(seg.text, special=seg.trusted))
        return tokens

    @property
    def pending(self) -> int:
        return self._pending

    def generate(self, request: GenerationRequest) -> _ScriptedStream:
        if self.fail_generate is not None:
            raise self.fail_generate
        ahead = self._pending - self.n_slots + 1
        if ahead > self.max_queue:
            raise EngineBusy("I'm busy right now; please try again in a minute.")
        self._pending += 1
        self.requests.append(request)
        return _ScriptedStream(self, request, max(0, ahead))

    async def forget(self, key: str) -> None:
        self.forgotten.append(key)
        self.state.pop(key, None)

    async def wait_idle(self) -> None:
        """Until every generation task has ended (cancelled ones included)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.wait_idle()


class _ScriptedStream:
    def __init__(self, engine: ScriptedEngine, request: GenerationRequest, position: int) -> None:
        self._engine = engine
        self._request = request
        self.queue_position = position
        self.result: GenerationResult | None = None
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._cancelled = False
        self._running = False
        self._task = asyncio.get_running_loop().create_task(self._produce())
        engine._tasks.add(self._task)
        self._task.add_done_callback(engine._tasks.discard)

    def cancel(self) -> None:
        self._cancelled = True
        if self._running:  # a task cancelled before its first step would skip its finally
            self._task.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        async for item in read_stream_queue(self._out, self):
            yield item

    async def _produce(self) -> None:
        self._running = True
        engine, req = self._engine, self._request
        key = req.conversation
        text = engine.answer(req) if callable(engine.answer) else engine.answer
        words = re.findall(r"\S+\s*", text)
        reason: FinishReason = "stop"
        sent: list[str] = []
        t0 = time.monotonic()
        first: float | None = None
        acquired = False
        try:
            if self._cancelled:
                raise asyncio.CancelledError
            await engine._slots.acquire()
            acquired = True
            engine.running.add(key)
            engine.state[key] = len(req.prompt)
            for word in words:
                if len(sent) >= req.sampling.max_tokens:
                    reason = "length"
                    break
                if engine.delay:
                    await asyncio.sleep(engine.delay)
                sent.append(word)
                first = first or time.monotonic()
                engine.state[key] = len(req.prompt) + len(sent)
                self._out.put_nowait(word)
                if engine.fail_stream is not None:
                    self._out.put_nowait(engine.fail_stream)
                    reason = "error"
                    break
        except asyncio.CancelledError:
            reason = "cancelled"
        finally:
            engine.running.discard(key)
            if acquired:
                engine._slots.release()
            engine._pending -= 1
            engine.finished[key] = reason
        now = time.monotonic()
        self._out.put_nowait(
            GenerationResult(
                text="".join(sent),
                finish_reason=reason,
                prompt_tokens=len(req.prompt),
                completion_tokens=len(sent),
                cached_tokens=0,
                queue_seconds=0.0,
                ttft_seconds=None if first is None else first - t0,
                total_seconds=now - t0,
            )
        )
        self._out.put_nowait(STREAM_DONE)
