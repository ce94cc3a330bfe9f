"""The batched llama.cpp engine: one scheduler thread, many conversations, warm KV caches.

Design (after llama.cpp's ``tools/server`` slots and llama-cpp-python's batched example):

* One thread owns the ``llama_context``; nothing else ever calls into it. Each step builds one
  ``llama_batch`` with the next token of every generating conversation plus a bounded, fairly
  shared chunk of pending prompt tokens (chunked prefill), then one ``llama_decode`` (which
  releases the GIL, so the event loop keeps running).
* The KV cache is partitioned (``kv_unified=False``): each slot is one sequence with its own
  region. A slot remembers the exact tokens in its KV and which conversation owns them, so a
  new turn keeps the longest common prefix and evaluates only what is new.
* When every slot is taken, the least recently used idle slot's sequence state is saved with
  ``llama_state_seq_get_data`` into a byte-capped host-RAM store (never ``Llama.save_state``,
  whose copies drag the whole logits array) and restored with ``set_data`` on its next turn.
* A new conversation whose prompt shares a prefix (the system prompt) with another slot's
  tokens starts from a copy of that slot (``llama_memory_seq_cp``) instead of re-evaluating it.
* Admission is FIFO with a bounded queue: past it, callers get :class:`EngineBusy` at once.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.engine import (
    STREAM_DONE,
    EngineBusy,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    SamplingParams,
    read_stream_queue,
)
from core.errors import EngineUnavailable, ModelLoadError
from core.template import (
    FALLBACK_TEMPLATE,
    ChatTemplate,
    Message,
    break_special_strings,
    tokenize_segments,
)

log = logging.getLogger("finechat.engine")

#: Share a donor slot's KV only when at least this many leading tokens match.
MIN_SHARED_PREFIX = 16


def default_threads() -> int:
    """Cores this process may use (llama.cpp gains nothing from SMT siblings on small models)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Any]
    submitted: float
    cancelled: threading.Event = field(default_factory=threading.Event)


class _Stream:
    """The async side of one job: text deltas, then ``result``."""

    def __init__(self, job: _Job, position: int) -> None:
        self._job = job
        self.queue_position = position
        self.result: GenerationResult | None = None

    def cancel(self) -> None:
        self._job.cancelled.set()

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for item in read_stream_queue(self._job.out, self):
                yield item
        finally:
            # Leaving early (break, task cancelled, consumer gone) frees the slot at the next step.
            if self.result is None:
                self._job.cancelled.set()


@dataclass
class _Forget:
    """A command for the scheduler thread: drop a conversation's KV and saved state."""

    key: str
    done: concurrent.futures.Future[None]


@dataclass
class _Active:
    """Per-job state while a job occupies a slot."""

    job: _Job
    sampler: Any
    pending: list[int]
    budget: int
    cached: int
    started: float
    decoder: codecs.IncrementalDecoder
    pieces: list[str] = field(default_factory=list)
    next_token: int | None = None
    n_out: int = 0
    ttft: float | None = None
    batch_index: int = -1


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)
    owner: str | None = None
    active: _Active | None = None
    last_used: float = 0.0


@dataclass
class _Saved:
    tokens: list[int]
    state: bytes


class StateStore:
    """Sequence states in host RAM, least recently used evicted first, never above ``cap_bytes``."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self._items: OrderedDict[str, _Saved] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def put(self, key: str, saved: _Saved) -> bool:
        self.pop(key)
        size = len(saved.state)
        if size > self.cap_bytes:
            return False
        while self.bytes + size > self.cap_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self.bytes -= len(old.state)
            self.evictions += 1
        self._items[key] = saved
        self.bytes += size
        return True

    def pop(self, key: str) -> _Saved | None:
        saved = self._items.pop(key, None)
        if saved is not None:
            self.bytes -= len(saved.state)
        return saved

    def keys(self) -> list[str]:
        return list(self._items)

    def peek_tokens(self, key: str) -> list[int] | None:
        saved = self._items.get(key)
        return saved.tokens if saved else None


@dataclass
class EngineStats:
    """Counters for benchmarks and metrics (read without locking: approximate is fine)."""

    steps: int = 0
    decoded_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    restores: int = 0
    saves: int = 0
    prefix_copies: int = 0
    completed: int = 0
    rejected: int = 0


def _deliver(items: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for out, item in items:
        out.put_nowait(item)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class LlamaEngine:
    """llama.cpp with continuous batching over ``n_slots`` sequences (see module docstring)."""

    def __init__(
        self,
        llama_cpp: Any,
        model: Any,
        ctx: Any,
        info: ModelInfo,
        *,
        n_slots: int,
        n_batch: int,
        state_cache_bytes: int,
        max_queue: int,
        specials: dict[int, tuple[int, str]],
    ) -> None:
        self._lc = llama_cpp
        self._specials = specials
        self._model = model
        self._ctx = ctx
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._mem = llama_cpp.llama_get_memory(ctx)
        self.info = info
        self.n_slots = n_slots
        self.n_batch = n_batch
        self.max_queue = max_queue
        self.store = StateStore(state_cache_bytes)
        self.stats = EngineStats()
        self._slots = [_Slot(i) for i in range(n_slots)]
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        self._markup_user_defined = self._find_markup_user_defined()
        self._incoming: queue.Queue[_Job | _Forget | None] = queue.Queue()
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}
        self._waiting: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._n_waiting = 0
        self._n_active = 0
        self._avg_job_s = 2.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="finechat-llama", daemon=True)
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
        n_slots: int = 4,
        state_cache_mb: int = 512,
        max_queue: int = 64,
        name: str | None = None,
    ) -> LlamaEngine:
        """Load a GGUF; ``n_ctx`` is the context of *each* conversation slot.

        Blocking: call through ``asyncio.to_thread`` from async code.
        """
        try:
            import llama_cpp
            import llama_cpp._logger as llama_logger
        except ImportError as exc:  # pragma: no cover - base dependency
            raise ModelLoadError(f"llama-cpp-python is not installed ({exc})") from None
        llama_logger.set_verbose(False)
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ModelLoadError(
                f"llama.cpp could not load {path.name} (corrupt or unsupported GGUF)"
            )
        threads = n_threads or default_threads()
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx * n_slots
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_slots
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = False
        cparams.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(
                f"llama.cpp could not create a context of {n_slots} x {n_ctx} tokens for {path.name}"
                " (out of memory? lower model.n_ctx or model.slots)"
            )
        try:
            specials = _special_vocab(llama_cpp, llama_cpp.llama_model_get_vocab(model))
            info = _model_info(
                llama_cpp, model, path, name, int(llama_cpp.llama_n_ctx_seq(ctx)), specials
            )
        except Exception:
            llama_cpp.llama_free(ctx)
            llama_cpp.llama_model_free(model)
            raise
        return cls(
            llama_cpp,
            model,
            ctx,
            info,
            n_slots=n_slots,
            n_batch=n_batch,
            state_cache_bytes=state_cache_mb * 1024 * 1024,
            max_queue=max_queue,
            specials=specials,
        )

    # -- tokenizer (vocabulary only: safe from any thread) -----------------------------------

    def _tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        if not text:
            return []
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (self._lc.llama_token * n_max)()
        n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_bos, special)
        if n < 0:  # pragma: no cover - buffer sized generously
            buf = (self._lc.llama_token * -n)()
            n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, -n, add_bos, special)
        return list(buf[:n])

    def _find_markup_user_defined(self) -> tuple[frozenset[int], tuple[str, ...]] | None:
        """User-defined (not control) tokens that look like markup, e.g. ``<start_of_turn>``."""
        lc = self._lc
        found = {
            tok: text
            for tok, (attr, text) in self._specials.items()
            if attr & lc.LLAMA_TOKEN_ATTR_USER_DEFINED
            and not attr & lc.LLAMA_TOKEN_ATTR_CONTROL
            and len(text) > 2
            and text.startswith("<")
            and text.endswith(">")
        }
        return (frozenset(found), tuple(found.values())) if found else None

    def special_token_ids(self) -> set[int]:
        """Control and user-defined tokens: the ones user text must never produce."""
        return set(self._specials)

    def tokenize_sync(self, text: str, *, special: bool = False) -> list[int]:
        return self._tokenize(text, False, special)

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        return b"".join(self._piece_bytes(t, special) for t in tokens).decode("utf-8", "replace")

    def _piece_bytes(self, token: int, special: bool = False) -> bytes:
        n = self._lc.llama_token_to_piece(self._vocab, token, self._piece, 256, 0, special)
        if n < 0:  # pragma: no cover - pieces are short
            buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            return bytes(buf.raw[:n])
        return bytes(self._piece.raw[:n])

    def _tokenize_segment(self, text: str, add_bos: bool, trusted: bool) -> list[int]:
        if trusted:
            return self._tokenize(text, add_bos, True)
        tokens = self._tokenize(text, add_bos, False)
        if self._markup_user_defined and not self._markup_user_defined[0].isdisjoint(tokens):
            # llama.cpp matches user-defined tokens even with special parsing off: a model whose
            # chat markers are user-defined (not control) tokens needs them broken up here.
            text = break_special_strings(text, self._markup_user_defined[1])
            tokens = self._tokenize(text, add_bos, False)
        return tokens

    def encode_messages_sync(self, messages: list[Message]) -> list[int]:
        segments = self.info.template.render(messages, add_generation_prompt=True)
        return tokenize_segments(
            segments, self._tokenize_segment, add_bos=self.info.add_bos, bos_text=self.info.bos_text
        )

    async def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return await asyncio.to_thread(self._tokenize, text, False, special)

    async def encode_messages(self, messages: list[Message]) -> list[int]:
        return await asyncio.to_thread(self.encode_messages_sync, messages)

    # -- submission (event-loop side) ------------------------------------------------------

    @property
    def slots_busy(self) -> int:
        """Slots decoding a conversation right now."""
        return self._n_active

    @property
    def cached_conversations(self) -> int:
        """Conversations whose KV is warm in a slot or saved in the RAM store."""
        owners = {s.owner for s in self._slots if s.owner is not None}
        return len(owners | set(self.store.keys()))

    async def forget(self, key: str) -> None:
        """Drop every trace of ``key`` from the KV cache and the state store (data deletion)."""
        if self._closed:
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._incoming.put(_Forget(key, done))
        await asyncio.wrap_future(done)

    def _forget_now(self, command: _Forget) -> None:
        self.store.pop(command.key)
        for slot in self._slots:
            if slot.owner == command.key:
                if slot.active is not None:
                    slot.active.job.cancelled.set()
                    self._finish(slot, "cancelled")
                self._clear(slot)
                slot.owner = None
        command.done.set_result(None)

    @property
    def pending(self) -> int:
        """Generations queued or running."""
        return self._n_waiting + self._n_active

    def generate(self, request: GenerationRequest) -> _Stream:
        if self._closed:
            raise EngineUnavailable("The model is shut down.")
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue(), time.monotonic())
        with self._lock:
            ahead = self._n_waiting + self._n_active - self.n_slots + 1
            if ahead > self.max_queue:
                self.stats.rejected += 1
                wait = max(1, round(self._avg_job_s * (self._n_waiting + 1) / self.n_slots))
                raise EngineBusy(
                    f"I'm busy with {self.pending} conversations right now; "
                    f"please try again in about {wait} s."
                )
            self._n_waiting += 1
        self._incoming.put(job)
        return _Stream(job, max(0, ahead))

    # -- scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                busy = any(s.active for s in self._slots) or bool(self._waiting)
                if not self._drain(block=not busy):
                    break
                self._drop_cancelled_waiting()
                self._admit()
                if any(s.active for s in self._slots):
                    try:
                        self._step()
                    except Exception as exc:  # a failed decode fails its jobs, not the engine
                        log.exception("decode step failed")
                        self._fail_active(exc)
                self._flush()
        finally:
            self._shutdown_jobs()
            self._flush()

    def _drain(self, *, block: bool) -> bool:
        """Move newly submitted jobs into the FIFO; False once the engine is closing."""
        try:
            job = self._incoming.get(timeout=0.5) if block else self._incoming.get_nowait()
        except queue.Empty:
            return not self._closed
        while True:
            if job is None:
                return False
            if isinstance(job, _Forget):
                self._forget_now(job)
            else:
                self._waiting.append(job)
            try:
                job = self._incoming.get_nowait()
            except queue.Empty:
                return True

    def _emit(self, job: _Job, item: Any) -> None:
        """Queue an item for the job's event loop; :meth:`_flush` delivers a whole step at once."""
        self._outbox.setdefault(job.loop, []).append((job.out, item))

    def _flush(self) -> None:
        # One wake-up per event loop per step instead of one per token per conversation.
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
                loop.call_soon_threadsafe(_deliver, items)

    def _finish_unstarted(self, job: _Job, reason: FinishReason) -> None:
        prompt = len(job.request.prompt)
        self._emit(job, GenerationResult("", reason, prompt, 0, 0, 0.0, None, 0.0))
        self._emit(job, STREAM_DONE)

    def _drop_cancelled_waiting(self) -> None:
        if not any(j.cancelled.is_set() for j in self._waiting):
            return
        keep: deque[_Job] = deque()
        for job in self._waiting:
            if job.cancelled.is_set():
                with self._lock:
                    self._n_waiting -= 1
                self._finish_unstarted(job, "cancelled")
            else:
                keep.append(job)
        self._waiting = keep

    def _pick_slot(self, key: str) -> _Slot | None:
        idle = [s for s in self._slots if s.active is None]
        if not idle:
            return None
        for slot in idle:
            if slot.owner == key:
                return slot
        for slot in idle:
            if slot.owner is None:
                return slot
        return min(idle, key=lambda s: s.last_used)

    def _admit(self) -> None:
        while self._waiting:
            job = self._waiting[0]
            slot = self._pick_slot(job.request.conversation)
            if slot is None:
                return
            self._waiting.popleft()
            with self._lock:
                self._n_waiting -= 1
                self._n_active += 1
            try:
                self._start(slot, job)
            except Exception as exc:
                log.exception("could not start a generation")
                with self._lock:
                    self._n_active -= 1
                self._emit(job, EngineUnavailable(f"generation failed: {exc}"))
                self._emit(job, STREAM_DONE)

    def _save(self, slot: _Slot) -> None:
        """Move an idle slot's KV into the RAM store (so its owner can come back warm)."""
        if slot.owner is None or not slot.tokens:
            return
        size = self._lc.llama_state_seq_get_size(self._ctx, slot.seq)
        if size <= 0 or size > self.store.cap_bytes:
            return
        buf = (ctypes.c_uint8 * size)()
        written = self._lc.llama_state_seq_get_data(self._ctx, buf, size, slot.seq)
        if written > 0 and self.store.put(
            slot.owner, _Saved(list(slot.tokens), bytes(buf)[:written])
        ):
            self.stats.saves += 1

    def _clear(self, slot: _Slot) -> None:
        self._lc.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
        slot.tokens = []

    def _restore(self, slot: _Slot, saved: _Saved) -> bool:
        data = (ctypes.c_uint8 * len(saved.state)).from_buffer_copy(saved.state)
        if self._lc.llama_state_seq_set_data(self._ctx, data, len(saved.state), slot.seq) <= 0:
            self._clear(slot)
            return False
        slot.tokens = list(saved.tokens)
        self.stats.restores += 1
        return True

    def _best_donor(self, slot: _Slot, prompt: list[int]) -> tuple[_Slot | None, int]:
        best, best_n = None, 0
        for other in self._slots:
            if other is slot or not other.tokens:
                continue
            n = common_prefix(other.tokens, prompt)
            if n > best_n:
                best, best_n = other, n
        return best, best_n

    def _start(self, slot: _Slot, job: _Job) -> None:
        req = job.request
        key, prompt = req.conversation, req.prompt
        if slot.owner != key:
            self._save(slot)
            self._clear(slot)
            slot.owner = key
            saved_tokens = self.store.peek_tokens(key)
            donor, donor_n = self._best_donor(slot, prompt)
            saved_n = common_prefix(saved_tokens, prompt) if saved_tokens else 0
            if saved_tokens is not None and saved_n >= donor_n and saved_n > 0:
                saved = self.store.pop(key)
                assert saved is not None
                self._restore(slot, saved)
            elif donor is not None and donor_n >= MIN_SHARED_PREFIX:
                # Partitioned KV copies whole sequences; trim the copy to the shared prefix.
                self._lc.llama_memory_seq_cp(self._mem, donor.seq, slot.seq, -1, -1)
                slot.tokens = list(donor.tokens)
                self.stats.prefix_copies += 1
        keep = common_prefix(slot.tokens, prompt)
        if keep == len(prompt):
            keep -= 1  # re-evaluate the last prompt token to get fresh logits
        if keep < len(slot.tokens):
            if not self._lc.llama_memory_seq_rm(self._mem, slot.seq, keep, -1):
                self._clear(slot)
                keep = 0
            slot.tokens = slot.tokens[:keep]
        budget = min(req.sampling.max_tokens, self.info.n_ctx - len(prompt))
        now = time.monotonic()
        slot.active = _Active(
            job=job,
            sampler=self._make_sampler(req.sampling),
            pending=list(prompt[keep:]),
            budget=budget,
            cached=keep,
            started=now,
            decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
        )
        slot.last_used = now
        self.stats.prompt_tokens += len(prompt)
        self.stats.cached_tokens += keep
        if budget <= 0:
            self._finish(slot, "length")

    def _make_sampler(self, s: SamplingParams) -> Any:
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if s.repeat_penalty != 1.0:
            n_vocab = lc.llama_vocab_n_tokens(self._vocab)
            lc.llama_sampler_chain_add(
                chain, lc.llama_sampler_init_penalties(n_vocab, 64, s.repeat_penalty, 0.0, 0.0)
            )
        if s.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(s.top_k))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(s.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(0.05, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed >= 0 else random.randrange(2**31)
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def _step(self) -> None:
        batch = self._batch
        n = 0
        added: list[tuple[_Slot, list[int]]] = []
        # Cancelled jobs leave before spending compute on them.
        for slot in self._slots:
            if slot.active and slot.active.job.cancelled.is_set():
                self._finish(slot, "cancelled")
        generating = [s for s in self._slots if s.active and s.active.next_token is not None]
        prefilling = [s for s in self._slots if s.active and s.active.pending]
        for slot in generating:
            act = slot.active
            assert act is not None and act.next_token is not None
            n = self._add(n, act.next_token, len(slot.tokens), slot.seq, True)
            act.batch_index = n - 1
            added.append((slot, [act.next_token]))
            act.next_token = None
        # Chunked prefill: share what is left of the batch fairly among prompts.
        room = self.n_batch - n
        prefilling.sort(key=lambda s: s.last_used)
        while room > 0 and prefilling:
            share = max(1, room // len(prefilling))
            still: list[_Slot] = []
            for slot in prefilling:
                act = slot.active
                assert act is not None
                take = min(share, len(act.pending), self.n_batch - n)
                if take <= 0:
                    continue
                chunk, act.pending = act.pending[:take], act.pending[take:]
                pos = len(slot.tokens) + sum(len(t) for s2, t in added if s2 is slot)
                for i, tok in enumerate(chunk):
                    last = not act.pending and i == take - 1
                    n = self._add(n, tok, pos + i, slot.seq, last)
                    if last:
                        act.batch_index = n - 1
                added.append((slot, chunk))
                if act.pending:
                    still.append(slot)
            room = self.n_batch - n
            prefilling = still
        if n == 0:
            return
        batch.n_tokens = n
        ret = self._lc.llama_decode(self._ctx, batch)
        if ret != 0:
            raise RuntimeError(f"llama_decode returned {ret}")
        self.stats.steps += 1
        self.stats.decoded_tokens += n
        for slot, toks in added:
            slot.tokens.extend(toks)
        now = time.monotonic()
        for slot in self._slots:
            act = slot.active
            if act is None or act.batch_index < 0:
                continue
            idx, act.batch_index = act.batch_index, -1
            token = self._lc.llama_sampler_sample(act.sampler, self._ctx, idx)
            slot.last_used = now
            if act.ttft is None:
                act.ttft = now - act.started
            if self._lc.llama_vocab_is_eog(self._vocab, token) and not act.job.request.ignore_eos:
                self._finish(slot, "stop")
                continue
            act.n_out += 1
            self.stats.generated_tokens += 1
            text = act.decoder.decode(self._piece_bytes(token))
            if text:
                act.pieces.append(text)
                self._emit(act.job, text)
            if act.n_out >= act.budget:
                self._finish(slot, "length")
            elif act.job.cancelled.is_set():
                self._finish(slot, "cancelled")
            else:
                act.next_token = token

    def _add(self, n: int, token: int, pos: int, seq: int, logits: bool) -> int:
        b = self._batch
        b.token[n] = token
        b.pos[n] = pos
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = seq
        b.logits[n] = logits
        return n + 1

    def _finish(self, slot: _Slot, reason: FinishReason) -> None:
        act = slot.active
        assert act is not None
        slot.active = None
        if act.pending:
            # Cancelled mid-prefill: what was evaluated stays valid, the rest never happened.
            act.pending = []
        tail = act.decoder.decode(b"", final=True)
        if tail and reason != "cancelled":
            act.pieces.append(tail)
            self._emit(act.job, tail)
        self._lc.llama_sampler_free(act.sampler)
        elapsed = time.monotonic() - act.started
        job = act.job
        with self._lock:
            self._n_active -= 1
            self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * elapsed
        self.stats.completed += 1
        result = GenerationResult(
            text="".join(act.pieces),
            finish_reason=reason,
            prompt_tokens=len(job.request.prompt),
            completion_tokens=act.n_out,
            cached_tokens=act.cached,
            queue_seconds=act.started - job.submitted,
            ttft_seconds=act.ttft,
            total_seconds=elapsed,
        )
        self._emit(job, result)
        self._emit(job, STREAM_DONE)

    def _fail_active(self, exc: Exception) -> None:
        for slot in self._slots:
            act = slot.active
            if act is None:
                continue
            slot.active = None
            self._lc.llama_sampler_free(act.sampler)
            with self._lock:
                self._n_active -= 1
            self._clear(slot)
            slot.owner = None
            self._emit(act.job, EngineUnavailable(f"generation failed: {exc}"))
            self._emit(act.job, STREAM_DONE)

    def _shutdown_jobs(self) -> None:
        while True:
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Forget):
                self._forget_now(item)
            elif item is not None:
                self._waiting.append(item)
        for slot in self._slots:
            if slot.active is not None:
                self._finish(slot, "cancelled")
        while self._waiting:
            self._finish_unstarted(self._waiting.popleft(), "cancelled")

    # -- lifecycle -------------------------------------------------------------------------

    def close_sync(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._incoming.put(None)
        self._thread.join()
        self._lc.llama_batch_free(self._batch)
        self._lc.llama_free(self._ctx)
        self._lc.llama_model_free(self._model)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_sync)


def _special_vocab(lc: Any, vocab: Any) -> dict[int, tuple[int, str]]:
    """Control and user-defined tokens with their attributes and text (one pass at load)."""
    mask = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_USER_DEFINED
    piece = ctypes.create_string_buffer(256)
    out: dict[int, tuple[int, str]] = {}
    for tok in range(int(lc.llama_vocab_n_tokens(vocab))):
        attr = int(lc.llama_vocab_get_attr(vocab, tok))
        if attr & mask:
            n = lc.llama_token_to_piece(vocab, tok, piece, 256, 0, True)
            out[tok] = (attr, bytes(piece.raw[: max(n, 0)]).decode("utf-8", "replace"))
    return out


def _model_info(
    lc: Any,
    model: Any,
    path: Path,
    name: str | None,
    n_ctx: int,
    specials: dict[int, tuple[int, str]],
) -> ModelInfo:
    meta: dict[str, str] = {}
    buf = ctypes.create_string_buffer(1 << 16)
    for i in range(lc.llama_model_meta_count(model)):
        klen = lc.llama_model_meta_key_by_index(model, i, buf, len(buf))
        key = buf.value.decode("utf-8", "replace") if klen >= 0 else ""
        if key.startswith("tokenizer.ggml.") and key not in {
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
        }:
            continue
        vlen = lc.llama_model_meta_val_str_by_index(model, i, buf, len(buf))
        if vlen >= len(buf):
            big = ctypes.create_string_buffer(vlen + 1)
            lc.llama_model_meta_val_str_by_index(model, i, big, len(big))
            meta[key] = big.value.decode("utf-8", "replace")
        elif vlen >= 0:
            meta[key] = buf.value.decode("utf-8", "replace")
    vocab = lc.llama_model_get_vocab(model)
    piece = ctypes.create_string_buffer(256)

    def text_of(token: int) -> str:
        if token < 0:
            return ""
        n = lc.llama_token_to_piece(vocab, token, piece, 256, 0, True)
        return bytes(piece.raw[: max(n, 0)]).decode("utf-8", "replace")

    bos_text = text_of(int(lc.llama_vocab_bos(vocab)))
    eos_text = text_of(int(lc.llama_vocab_eos(vocab)))
    source = meta.get("tokenizer.chat_template") or FALLBACK_TEMPLATE
    template = ChatTemplate(source, bos_token=bos_text, eos_token=eos_text)
    add_bos = meta.get("tokenizer.ggml.add_bos_token", "false").lower() == "true"
    return ModelInfo(
        name=name or meta.get("general.name") or path.stem,
        path=str(path),
        n_ctx=n_ctx,
        template=template,
        add_bos=add_bos,
        bos_text=bos_text if add_bos else "",
        special_tokens=tuple(text for _, text in specials.values() if text),
    )
