"""A scripted engine: core's :class:`~core.engine.Engine` protocol with deterministic answers.

It lets bot scenarios run in milliseconds without the model, including answers no real model
gives on demand. What it answers depends only on the prompt's messages:

* ``say: TEXT`` — exactly TEXT;
* ``recall`` — the earlier user messages it was shown (proves whose memory a turn saw);
* ``hostile:NAME`` — one of :data:`HOSTILE`;
* ``long:N`` — N characters of prose in paragraphs;
* ``empty`` — nothing; ``fail`` — a few tokens, then an internal error;
* anything else — ``echo: TEXT``.

Answers stream in pieces of :attr:`ScriptedEngine.piece` characters, :attr:`delay` seconds
apart; a message starting with ``slow`` waits :attr:`slow_delay` per piece instead. While
:attr:`gate` is cleared, streams pause before each piece (scenarios hold a turn open
without sleeping), after :attr:`hold_after` pieces. ``n_slots`` streams run at once; the rest queue and learn their position.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from core.engine import FinishReason, GenerationRequest, GenerationResult, ModelInfo
from core.template import FALLBACK_TEMPLATE, ChatTemplate, Message

N_CTX = 65536

HOSTILE: dict[str, str] = {
    "tildes": "~" * 2600,
    "fence": "```python\n" + "x = 1  # a line of code\n" * 200,
    "fence_line": "```" + "x" * 4200,
    "emoji": "😀" * 3000,
    "surrogate": "lone \ud800 high and \udfff low surrogates, then text",
    "nul": "nul\x00byte, bell\x07 and escape\x1b[31m controls, then text",
    "markup": (
        "<b>not bold</b> & <script>alert(1)</script> **bold** __b__ _it_ *it* ~~s~~ `code` "
        "[x](javascript:alert(1)) [ok](https://example.com/a_b) @everyone <@123> ||spoiler|| "
        "&amp; &lt; <i>x</b> # heading > quote ***** _____ ````` ~~~~~ |||||"
    ),
    "huge": (
        "# Report\n\n"
        + "Some **bold** text, some `code`, a [link](https://example.com) and 😀 emoji. " * 150
        + "\n\n```js\n"
        + "let x = `template ${1}`; // ~~~ *** ___\n" * 200
        + "```\n\n"
        + "~" * 3000
        + "\n\n"
        + "```\n"
        + "unterminated code " * 600
    ),
}


def prose(n: int) -> str:
    """``n`` characters of sentences and paragraphs (every word numbered, so order shows)."""
    words: list[str] = []
    size, i = 0, 0
    while size < n:
        word = f"word{i}" + ("." if i % 12 == 11 else "") + ("\n\n" if i % 96 == 95 else " ")
        words.append(word)
        size += len(word)
        i += 1
    return "".join(words)[:n].rstrip()


def answer_for(messages: tuple[Message, ...]) -> str:
    users = [m.content for m in messages if m.role == "user"]
    last = users[-1] if users else ""
    text = last.removeprefix("slow").strip()
    if text.startswith("say:"):
        return text[len("say:") :].strip()
    if text == "recall":
        earlier = users[:-1]
        return "You told me: " + " | ".join(earlier) if earlier else "You told me nothing yet."
    if text.startswith("hostile:"):
        return HOSTILE[text[len("hostile:") :].strip()]
    if text.startswith("long:"):
        return prose(int(text[len("long:") :]))
    if text in {"empty", "fail"}:
        return "" if text == "empty" else "partial answer that will fail"
    return f"echo: {last}"


class ScriptedStream:
    """One scripted generation (core's ``GenerationStream``)."""

    def __init__(self, engine: ScriptedEngine, request: GenerationRequest, position: int) -> None:
        self._engine = engine
        self._request = request
        self.queue_position = position
        self.result: GenerationResult | None = None
        self._cancelled = asyncio.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    async def __aiter__(self) -> AsyncIterator[str]:
        engine = self._engine
        messages = self._request.messages
        answer = answer_for(messages)
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        delay = engine.slow_delay if last.startswith("slow") else engine.delay
        t0 = time.monotonic()
        emitted: list[str] = []
        reason: FinishReason = "stop"
        ttft: float | None = None
        async with engine.slots:
            engine.running += 1
            engine.started.set()
            try:
                for start in range(0, len(answer), engine.piece):
                    if not engine.gate.is_set() and len(emitted) >= engine.hold_after:
                        await _first(engine.gate.wait(), self._cancelled.wait())
                    if self._cancelled.is_set():
                        reason = "cancelled"
                        break
                    if last.strip() == "fail" and len(emitted) >= 2:
                        raise RuntimeError("scripted failure at /secret/internal/path.py")
                    await asyncio.sleep(delay)
                    piece = answer[start : start + engine.piece]
                    emitted.append(piece)
                    ttft = ttft if ttft is not None else time.monotonic() - t0
                    yield piece
                    if len(emitted) >= self._request.sampling.max_tokens:
                        reason = "length"
                        break
            finally:
                engine.running -= 1
        text = "".join(emitted)
        self.result = GenerationResult(
            text=text,
            finish_reason=reason,
            prompt_tokens=len(self._request.prompt),
            completion_tokens=len(emitted),
            cached_tokens=0,
            queue_seconds=0.0,
            ttft_seconds=ttft,
            total_seconds=time.monotonic() - t0,
        )


async def _first(*waits: object) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


@dataclass
class ScriptedEngine:
    """See the module docstring. ``gate`` is set (open) unless a scenario clears it."""

    delay: float = 0.0
    slow_delay: float = 0.002
    piece: int = 4
    n_slots: int = 4
    info: ModelInfo = field(
        default_factory=lambda: ModelInfo(
            name="scripted",
            path="scripted",
            n_ctx=N_CTX,
            template=ChatTemplate(FALLBACK_TEMPLATE),
            add_bos=False,
            bos_text="",
            special_tokens=(),
        )
    )
    hold_after: int = 0
    """With :attr:`gate` cleared, streams pause after this many pieces."""
    running: int = 0
    submitted: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    forgotten: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate.set()
        self.slots = asyncio.Semaphore(self.n_slots)
        self._waiting = 0

    def set_slots(self, n: int) -> None:
        """Streams that may run at once (set while idle)."""
        assert self.running == 0 and self._waiting == 0, "set_slots while streams run"
        self.n_slots = n
        self.slots = asyncio.Semaphore(n)

    async def wait_running(self, n: int) -> None:
        """Until ``n`` streams are generating (used with a cleared :attr:`gate`)."""
        while self.running < n:
            self.started.clear()
            await self.started.wait()

    async def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return [0] * (len(text) // 4 + 1)

    async def encode_messages(self, messages: list[Message]) -> list[int]:
        return [0] * sum(len(m.content) // 4 + 4 for m in messages)

    def generate(self, request: GenerationRequest) -> ScriptedStream:
        self.submitted += 1
        position = max(0, self.pending - self.n_slots + 1)
        return _Counted(self, request, position)

    @property
    def pending(self) -> int:
        return self._waiting

    def forget(self, key: str) -> None:
        self.forgotten.append(key)

    async def aclose(self) -> None:
        self.gate.set()


class _Counted(ScriptedStream):
    """Counts a stream as pending from creation until it ends (queue positions)."""

    def __init__(self, engine: ScriptedEngine, request: GenerationRequest, position: int) -> None:
        super().__init__(engine, request, position)
        engine._waiting += 1
        self._done = False

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for piece in super().__aiter__():
                yield piece
        finally:
            if not self._done:
                self._done = True
                self._engine._waiting -= 1
