"""The inference engine seam: what the chat service needs from a model, and nothing more.

:class:`Engine` is the narrow interface (tokenize, stream a generation, close). The service and
every front-end depend only on it, so the local batched llama.cpp engine
(:mod:`core.llama_engine`) and remote backends are interchangeable.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from core.errors import EngineBusy as EngineBusy
from core.template import ChatTemplate, Message
from core.textcheck import StreamCleaner, clean_model_text

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling; ``temperature == 0`` is greedy, ``seed < 0`` picks a random seed."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    max_tokens: int = 512
    seed: int = -1


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. ``conversation`` lets an engine keep that conversation's KV warm."""

    conversation: str
    prompt: list[int]
    sampling: SamplingParams
    messages: tuple[Message, ...] = ()
    """The same prompt as messages, for backends that render templates themselves (remote)."""
    ignore_eos: bool = False
    """Generate exactly ``max_tokens`` (benchmarks: fixed-length answers compare fairly)."""


@dataclass
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    queue_seconds: float
    ttft_seconds: float | None
    total_seconds: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    n_ctx: int
    template: ChatTemplate
    add_bos: bool
    bos_text: str
    special_tokens: tuple[str, ...]


class GenerationStream(Protocol):
    """Text deltas of one generation; ``result`` is set once iteration ends."""

    queue_position: int
    result: GenerationResult | None

    def __aiter__(self) -> AsyncIterator[str]: ...

    def cancel(self) -> None: ...


class Engine(Protocol):
    """What the chat service needs from a model."""

    info: ModelInfo

    async def tokenize(self, text: str, *, special: bool = False) -> list[int]: ...

    async def encode_messages(self, messages: list[Message]) -> list[int]:
        """Render with the model's template and tokenize; message bodies never become specials."""
        ...

    def generate(self, request: GenerationRequest) -> GenerationStream: ...

    @property
    def pending(self) -> int:
        """Generations queued or running."""
        ...

    async def aclose(self) -> None: ...


STREAM_DONE = object()
"""Put on a stream's queue after its last item."""


async def read_stream_queue(
    out: asyncio.Queue[Any], stream: GenerationStream
) -> AsyncIterator[str]:
    """Text items from an engine's per-request queue until :data:`STREAM_DONE`.

    A :class:`GenerationResult` on the queue becomes ``stream.result``; an exception is raised
    in the consumer. Both engines feed their streams this way, whatever thread produces them.

    This is where model text enters finechat, so it is cleaned here, once, for everything
    downstream (memory, the bots, the web chat, the OpenAI API): lone surrogates become U+FFFD
    and control characters go (:func:`core.textcheck.clean_model_text`). Deltas go through a
    :class:`~core.textcheck.StreamCleaner`, so a surrogate pair or CRLF split across two
    deltas survives, and the joined deltas equal the cleaned ``result.text``.
    """
    cleaner = StreamCleaner()
    while True:
        item = await out.get()
        if item is STREAM_DONE:
            tail = cleaner.flush()
            if tail:
                yield tail
            return
        if isinstance(item, GenerationResult):
            stream.result = dataclasses.replace(item, text=clean_model_text(item.text))
        elif isinstance(item, BaseException):
            raise item
        else:
            text = cleaner.feed(item)
            if text:
                yield text
