"""The inference engine seam: what the chat service needs from a model, and nothing more.

:class:`Engine` is the narrow interface (tokenize, stream a generation, close). The service and
every front-end depend only on it, so the batched scheduler of a later issue — or a remote
backend — replaces :class:`LlamaEngine` without touching them.

:class:`LlamaEngine` owns one ``llama_cpp.Llama`` on one dedicated thread: llama.cpp is never
called from two threads at once and never from the event loop. Jobs run in arrival order;
tokens flow back through ``loop.call_soon_threadsafe``. Consecutive turns of one conversation
reuse the KV cache through the common token prefix (``Llama.generate`` keeps it).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import queue
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from core.errors import EngineUnavailable, ModelLoadError
from core.template import FALLBACK_TEMPLATE, ChatTemplate, Message, tokenize_segments

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


# ---------------------------------------------------------------------------------------------


_DONE = object()


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Any]
    submitted: float
    cancelled: threading.Event = field(default_factory=threading.Event)


class _LlamaStream:
    def __init__(self, job: _Job, position: int) -> None:
        self._job = job
        self.queue_position = position
        self.result: GenerationResult | None = None

    def cancel(self) -> None:
        self._job.cancelled.set()

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while True:
                item = await self._job.out.get()
                if item is _DONE:
                    return
                if isinstance(item, GenerationResult):
                    self.result = item
                    continue
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Leaving early (break, task cancelled, consumer gone) stops the worker between tokens.
            if self.result is None:
                self._job.cancelled.set()


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class LlamaEngine:
    """A llama.cpp model on a dedicated worker thread (one generation at a time)."""

    def __init__(self, llama: Any, info: ModelInfo) -> None:
        self._llama = llama
        self.info = info
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._worker, name="finechat-llama", daemon=True)
        self._thread.start()

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        n_ctx: int = 4096,
        n_threads: int = 0,
        n_batch: int = 256,
        name: str | None = None,
    ) -> LlamaEngine:
        """Load a GGUF (blocking; call it through ``asyncio.to_thread`` from async code)."""
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - base dependency
            raise ModelLoadError(f"llama-cpp-python is not installed ({exc})") from None
        threads = n_threads or _default_threads()
        try:
            llama = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {path.name}: {exc}") from None
        return cls(llama, _model_info(llama, path, name))

    # -- tokenizer -------------------------------------------------------------------------

    def _tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        # Tokenization reads only the (immutable) vocabulary, which llama.cpp allows from any
        # thread; the context itself stays on the worker thread.
        if not text:
            return []
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def tokenize_sync(self, text: str, *, special: bool = False) -> list[int]:
        return self._tokenize(text, False, special)

    def encode_messages_sync(self, messages: list[Message]) -> list[int]:
        segments = self.info.template.render(messages, add_generation_prompt=True)
        return tokenize_segments(
            segments, self._tokenize, add_bos=self.info.add_bos, bos_text=self.info.bos_text
        )

    async def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return await asyncio.to_thread(self._tokenize, text, False, special)

    async def encode_messages(self, messages: list[Message]) -> list[int]:
        return await asyncio.to_thread(self.encode_messages_sync, messages)

    # -- generation ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending

    def generate(self, request: GenerationRequest) -> GenerationStream:
        if self._closed:
            raise EngineUnavailable("the model is shut down")
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue(), time.monotonic())
        with self._lock:
            position = self._pending
            self._pending += 1
        self._jobs.put(job)
        return _LlamaStream(job, position)

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._run(job)
            except BaseException as exc:  # report, never kill the worker
                err = EngineUnavailable(f"generation failed: {type(exc).__name__}: {exc}")
                self._emit(job, err)
            finally:
                with self._lock:
                    self._pending -= 1
                self._emit(job, _DONE)

    @staticmethod
    def _emit(job: _Job, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed: nobody is listening
            job.loop.call_soon_threadsafe(job.out.put_nowait, item)

    def _run(self, job: _Job) -> None:
        import llama_cpp

        llama = self._llama
        vocab = llama._model.vocab
        req = job.request
        started = time.monotonic()
        queue_s = started - job.submitted
        prompt = req.prompt
        budget = min(req.sampling.max_tokens, self.info.n_ctx - len(prompt))
        if job.cancelled.is_set() or budget <= 0:
            reason: FinishReason = "cancelled" if job.cancelled.is_set() else "length"
            self._emit(job, GenerationResult("", reason, len(prompt), 0, 0, queue_s, None, 0.0))
            return
        cached = _common_prefix(list(llama._input_ids[: llama.n_tokens]), prompt)
        s = req.sampling
        llama.set_seed(s.seed if s.seed >= 0 else random.randrange(2**31))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        n_out = 0
        ttft: float | None = None
        reason = "length"
        gen = llama.generate(
            prompt,
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=0.05,
            temp=s.temperature,
            repeat_penalty=s.repeat_penalty,
            reset=True,
        )
        try:
            for token in gen:
                if job.cancelled.is_set():
                    reason = "cancelled"
                    break
                if ttft is None:
                    ttft = time.monotonic() - started
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    reason = "stop"
                    break
                n_out += 1
                text = decoder.decode(llama.detokenize([token], special=False))
                if text:
                    pieces.append(text)
                    self._emit(job, text)
                if n_out >= budget:
                    reason = "length"
                    break
        finally:
            gen.close()
        tail = decoder.decode(b"", final=True)
        if tail and reason != "cancelled":
            pieces.append(tail)
            self._emit(job, tail)
        result = GenerationResult(
            "".join(pieces),
            reason,
            len(prompt),
            n_out,
            cached,
            queue_s,
            ttft,
            time.monotonic() - started,
        )
        self._emit(job, result)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        with contextlib.suppress(Exception):
            self._llama.close()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _model_info(llama: Any, path: Path, name: str | None) -> ModelInfo:
    meta: dict[str, str] = dict(llama.metadata or {})
    model = llama._model

    def piece(token: int) -> str:
        if token < 0:
            return ""
        return bytes(llama.detokenize([token], special=True)).decode("utf-8", "replace")

    bos_id, eos_id = int(model.token_bos()), int(model.token_eos())
    bos_text, eos_text = piece(bos_id), piece(eos_id)
    source = meta.get("tokenizer.chat_template") or FALLBACK_TEMPLATE
    template = ChatTemplate(source, bos_token=bos_text, eos_token=eos_text)
    add_bos = meta.get("tokenizer.ggml.add_bos_token", "false").lower() == "true"
    specials: list[str] = []
    for tok in range(int(model.n_vocab())):
        if _is_special(llama, tok):
            text = piece(tok)
            if text:
                specials.append(text)
    return ModelInfo(
        name=name or meta.get("general.name") or path.stem,
        path=str(path),
        n_ctx=int(llama.n_ctx()),
        template=template,
        add_bos=add_bos,
        bos_text=bos_text if add_bos else "",
        special_tokens=tuple(specials),
    )


def _is_special(llama: Any, token: int) -> bool:
    import llama_cpp

    attr = int(llama_cpp.llama_vocab_get_attr(llama._model.vocab, token))
    special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    return bool(attr & special)
