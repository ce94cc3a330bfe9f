"""An :class:`~core.engine.Engine` that streams from an OpenAI-compatible server.

When a community outgrows one CPU box, inference moves to llama.cpp's ``llama-server``, vLLM,
Ollama or llama-cpp-python's own server; the bots keep running unchanged because memory,
prompt building, token budgeting, per-user ordering and cancel stay in the chat service. Only
``/v1/chat/completions`` (streamed as server-sent events) is required of the server.

Token counting (for the context budget) uses the server's own tokenizer where it offers one
(``/tokenize`` on llama-server and vLLM, ``/extras/tokenize`` on llama-cpp-python), else a
local GGUF's vocabulary (``[model.remote] tokenizer = "path.gguf"``) — never a table of model
names. A dead or slow server becomes :class:`EngineUnavailable` with a short message for the
user; requests are retried with exponential backoff on 429, 5xx and connection errors, but only
before the first token (a half-streamed answer is never silently restarted).

The server renders the chat template itself and parses special tokens anywhere in the prompt,
so special-token look-alikes in message bodies are defused (a zero-width space after their first
character) before they are sent: a user cannot switch roles by typing ``<|im_start|>system``.
Which strings are special is learnt from the model's own vocabulary, not guessed from a list
of formats: with a local GGUF tokenizer every control and user-defined token is known at
start; with the server's tokenizer, markup-shaped runs of a message (``<…>``, ``[…]``: DeepSeek's
full-width ``<｜User｜>``, ``<tool_call>``, ``[TOOL_CALLS]``, ``</think>``…) are asked about, and
the ones the server reads as a single token are defused (verdicts are cached). A generic
pattern still covers the common formats when the tokenizer cannot be asked.

Admission matches the local engine: past ``model.max_queue`` waiting generations, callers get
:class:`EngineBusy` at once rather than an ever longer wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from core.config import RemoteConfig
from core.engine import (
    STREAM_DONE,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    read_stream_queue,
)
from core.errors import EngineBusy, EngineUnavailable, ModelLoadError
from core.template import FALLBACK_TEMPLATE, ChatTemplate, Message, break_special_strings

log = logging.getLogger("finechat.remote")

UNAVAILABLE = "The model is unavailable right now — please try again in a moment."
STOPPED = "The model stopped answering — please try again in a moment."
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_RETRY_EXC = (httpx.TransportError,)  # connect/read errors and timeouts, protocol errors
_MAX_BACKOFF = 10.0
_ZWSP = "\u200b"
#: Special-token shapes of common chat formats, defused when the model's own list is unknown.
_GENERIC_SPECIALS = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>|<(?:bos|eos)>|\[/?SYSTEM_PROMPT\]"
)
#: Markup-shaped runs: the shapes special tokens take (``<|x|>``, ``<｜x｜>``, ``<x>``, ``[X]``).
_MARKUP = re.compile(r"<[^<>\s]{1,64}>|\[[^\[\]\s]{1,64}\]")
#: Distinct markup runs of one message checked with the tokenizer; past that, defused unasked.
MAX_CHECKS_PER_MESSAGE = 32
_VERDICTS = 8192


class TokenCounter(Protocol):
    """A tokenizer for budgeting: the server's, or a local GGUF vocabulary."""

    name: str

    async def tokenize(self, text: str, *, special: bool) -> list[int]: ...

    async def aclose(self) -> None: ...


def api_root(base_url: str) -> str:
    """``http://h:8080/v1`` → ``http://h:8080``: the extras (``/tokenize``) live at the root."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def defuse_specials(
    text: str, specials: tuple[str, ...] = (), extra: frozenset[str] = frozenset()
) -> str:
    """Break special-token strings in message text so a server cannot parse them as specials.

    ``specials`` are the vocabulary's special strings; ``extra`` are markup runs of this text
    found to be single tokens (see :meth:`RemoteEngine.defuse`).
    """
    text = break_special_strings(text, specials)
    if extra:
        text = _MARKUP.sub(
            lambda m: _break(m.group(0)) if m.group(0) in extra else m.group(0), text
        )
    return _GENERIC_SPECIALS.sub(lambda m: _break(m.group(0)), text)


def _break(token: str) -> str:
    return token[0] + _ZWSP + token[1:]


def markup_candidates(text: str) -> list[str]:
    """Distinct markup-shaped runs in ``text`` (where special tokens can hide), in order."""
    return list(dict.fromkeys(m.group(0) for m in _MARKUP.finditer(text)))


# -- tokenizers --------------------------------------------------------------------------------


class EndpointTokenizer:
    """The server's tokenizer; the dialect (llama-server, vLLM, llama-cpp-python) is probed once."""

    def __init__(self, client: httpx.AsyncClient, root: str, model: str) -> None:
        self._client = client
        self._root = root
        self._model = model
        self.name = "endpoint"
        self._dialect: str | None = None

    async def probe(self) -> bool:
        for dialect in ("llama-server", "vllm", "llama-cpp-python"):
            try:
                await self._call(dialect, "probe", special=False)
            except (httpx.HTTPStatusError, KeyError, TypeError, ValueError):
                continue
            self._dialect = dialect
            self.name = f"endpoint ({dialect})"
            return True
        return False

    async def _call(self, dialect: str, text: str, *, special: bool) -> list[int]:
        if dialect == "llama-server":
            url, body = (
                "/tokenize",
                {"content": text, "add_special": False, "parse_special": special},
            )
        elif dialect == "vllm":
            url = "/tokenize"
            body = {"model": self._model, "prompt": text, "add_special_tokens": False}
        else:
            url, body = "/extras/tokenize", {"input": text}
        response = await self._client.post(self._root + url, json=body)
        response.raise_for_status()
        tokens = response.json()["tokens"]
        # llama-server may answer [{id, piece}] when pieces are requested; plain ids otherwise
        return [int(t["id"] if isinstance(t, dict) else t) for t in tokens]

    async def tokenize(self, text: str, *, special: bool) -> list[int]:
        try:
            if self._dialect is None and not await self.probe():
                raise EngineUnavailable(UNAVAILABLE)
            assert self._dialect is not None
            return await self._call(self._dialect, text, special=special)
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            log.warning("remote tokenizer failed: %s", _describe(exc))
            raise EngineUnavailable(UNAVAILABLE) from None

    async def aclose(self) -> None:
        return None


class GGUFTokenizer:
    """A local GGUF read vocabulary-only (a few MB): exact counts when the server has no tokenizer."""

    def __init__(self, path: str) -> None:
        try:
            from llama_cpp import Llama

            path = os.path.expanduser(path)
            self._llama = Llama(model_path=path, vocab_only=True, verbose=False)
        except (ImportError, ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"cannot read the tokenizer GGUF {path!r}: {exc}") from None
        self.name = f"gguf ({os.path.basename(path)})"
        self.metadata: dict[str, str] = dict(self._llama.metadata or {})
        self.special_texts: tuple[str, ...] = _gguf_special_texts(self._llama)
        """Every control and user-defined token's text: the model's real special vocabulary."""

    def _tokenize(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    async def tokenize(self, text: str, *, special: bool) -> list[int]:
        return await asyncio.to_thread(self._tokenize, text, special)

    def template(self) -> ChatTemplate:
        source = self.metadata.get("tokenizer.chat_template") or FALLBACK_TEMPLATE
        return ChatTemplate(source)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            self._llama.close()


def _gguf_special_texts(llama: Any) -> tuple[str, ...]:
    """Control and user-defined tokens of a vocabulary-only ``Llama`` (best effort)."""
    try:
        import ctypes

        import llama_cpp as lc

        vocab = lc.llama_model_get_vocab(llama.model)
        mask = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_USER_DEFINED
        piece = ctypes.create_string_buffer(256)
        out: list[str] = []
        for tok in range(int(lc.llama_vocab_n_tokens(vocab))):
            if int(lc.llama_vocab_get_attr(vocab, tok)) & mask:
                n = lc.llama_token_to_piece(vocab, tok, piece, 256, 0, True)
                text = bytes(piece.raw[: max(n, 0)]).decode("utf-8", "replace")
                if len(text) > 1:
                    out.append(text)
        return tuple(out)
    except Exception as exc:  # an older llama-cpp-python: markup is still checked per message
        log.warning("could not list the tokenizer's special tokens: %s", _describe(exc))
        return ()


class _TokenCache:
    """Recent (text, special) → tokens, bounded in bytes: history bodies are re-counted on
    every turn, and API clients can send megabytes of text that must not stay in memory."""

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._items: OrderedDict[tuple[str, bool], tuple[list[int], int]] = OrderedDict()
        self.max_bytes = max_bytes
        self.bytes = 0

    @staticmethod
    def cost(text: str, tokens: list[int]) -> int:
        """Memory an entry holds: the string, the list and its int objects, the dict slot."""
        return sys.getsizeof(text) + 36 * len(tokens) + 200

    def __len__(self) -> int:
        return len(self._items)

    async def get(
        self, text: str, special: bool, compute: Callable[[], Awaitable[list[int]]]
    ) -> list[int]:
        key = (text, special)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit[0]
        tokens = await compute()
        size = self.cost(text, tokens)
        if size > self.max_bytes // 4:
            return tokens  # one huge body would evict everything else: not worth keeping
        old = self._items.pop(key, None)
        if old is not None:  # computed twice concurrently
            self.bytes -= old[1]
        self._items[key] = (tokens, size)
        self.bytes += size
        while self.bytes > self.max_bytes and self._items:
            _, (_, freed) = self._items.popitem(last=False)
            self.bytes -= freed
        return tokens


# -- the engine --------------------------------------------------------------------------------


@dataclass
class _Probe:
    model: str
    n_ctx: int | None
    template: str | None
    specials: tuple[str, ...] = ()
    """Special tokens the server names itself (llama-server's ``/props``: BOS, EOS)."""


class RemoteEngine:
    """Streams chat completions from an OpenAI-compatible endpoint."""

    def __init__(
        self,
        config: RemoteConfig,
        client: httpx.AsyncClient,
        counter: TokenCounter,
        info: ModelInfo,
        model: str,
        max_queue: int = 64,
    ) -> None:
        self.config = config
        self.info = info
        self.model = model
        self.max_queue = max_queue
        self._client = client
        self._counter = counter
        self._cache = _TokenCache(int(config.token_cache_mb * 1024 * 1024))
        self._verdicts: OrderedDict[str, bool] = OrderedDict()
        """Markup run → whether the model's tokenizer reads it as one token."""
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._pending = 0
        self._closed = False
        self.n_slots = config.max_concurrent
        self.slots_busy = 0

    @classmethod
    async def connect(
        cls,
        config: RemoteConfig,
        *,
        n_ctx: int,
        name: str = "",
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_queue: int = 64,
    ) -> RemoteEngine:
        """Open the client and learn what the server offers (model id, context, tokenizer).

        An unreachable server is not fatal here: the bots start anyway and answer "model
        unavailable" until it is back (the tokenizer is probed again on first use).
        """
        env = os.environ if env is None else env
        headers = {"Accept": "text/event-stream, application/json"}
        key = env.get(config.api_key_env, "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
            from core.logs import register_secret

            register_secret(key)
        timeout = httpx.Timeout(
            connect=config.connect_timeout,
            read=config.read_timeout,
            write=config.read_timeout,
            pool=config.read_timeout,
        )
        client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=timeout,
            transport=transport,
        )
        try:
            probe = await _probe(client, config)
            counter: TokenCounter
            template_source = probe.template
            specials: tuple[str, ...] = probe.specials
            if config.tokenizer not in ("", "auto"):
                gguf = await asyncio.to_thread(GGUFTokenizer, config.tokenizer)
                counter = gguf
                template_source = template_source or gguf.metadata.get("tokenizer.chat_template")
                specials = (*specials, *gguf.special_texts)
            else:
                endpoint = EndpointTokenizer(client, api_root(config.base_url), probe.model)
                if probe.model and not await _probe_tokenizer(endpoint):
                    raise ModelLoadError(
                        f"{config.base_url} offers no tokenizer endpoint (/tokenize); set "
                        "[model.remote] tokenizer to a local GGUF of the same model"
                    )
                counter = endpoint
        except BaseException:
            await client.aclose()
            raise
        effective_ctx = min(n_ctx, probe.n_ctx) if probe.n_ctx else n_ctx
        template = ChatTemplate(template_source or FALLBACK_TEMPLATE)
        model = config.model or probe.model
        info = ModelInfo(
            name=name or _display_name(model) or "remote",
            path=config.base_url,
            n_ctx=effective_ctx,
            template=template,
            add_bos=False,
            bos_text="",
            special_tokens=tuple(dict.fromkeys(s for s in specials if len(s) > 1)),
        )
        log.info(
            "remote model %s at %s (n_ctx %d, tokenizer %s)",
            info.name,
            config.base_url,
            effective_ctx,
            counter.name,
        )
        engine = cls(config, client, counter, info, model, max_queue)
        await engine._learn_template_markers(template_source or "")
        return engine

    # -- tokens ----------------------------------------------------------------------------

    async def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        if not text:
            return []
        return await self._cache.get(
            text, special, lambda: self._counter.tokenize(text, special=special)
        )

    async def _single_token(self, text: str) -> bool | None:
        """Whether the model's tokenizer reads ``text`` as one token (special parsing on);
        None when the tokenizer cannot answer right now."""
        verdict = self._verdicts.get(text)
        if verdict is not None:
            self._verdicts.move_to_end(text)
            return verdict
        try:
            verdict = len(await self._counter.tokenize(text, special=True)) == 1
        except Exception as exc:
            log.debug("special-token check failed: %s", _describe(exc))
            return None  # not cached: asked again once the tokenizer is back
        self._verdicts[text] = verdict
        if len(self._verdicts) > _VERDICTS:
            self._verdicts.popitem(last=False)
        return verdict

    async def _learn_template_markers(self, template: str) -> None:
        """The template's own markers that are tokens join the known specials (best effort)."""
        known = set(self.info.special_tokens)
        extra: list[str] = []
        for candidate in markup_candidates(template)[:64]:
            if candidate in known or "{" in candidate or "%" in candidate:
                continue
            verdict = await self._single_token(candidate)
            if verdict is None:
                break  # the server is not answering: messages are checked on their own later
            if verdict:
                extra.append(candidate)
        if extra:
            self.info = dataclasses.replace(
                self.info, special_tokens=(*self.info.special_tokens, *extra)
            )

    async def defuse(self, text: str) -> str:
        """``text`` with every string the model would read as a special token broken up."""
        known = set(self.info.special_tokens)
        candidates = [c for c in markup_candidates(text) if c not in known]
        extra: set[str] = set()
        for i, candidate in enumerate(candidates):
            # Unchecked (too many, or the tokenizer is down) counts as special: defusing a
            # harmless ``<b>`` costs nothing, missing a real marker costs the conversation.
            if i >= MAX_CHECKS_PER_MESSAGE or await self._single_token(candidate) is not False:
                extra.add(candidate)
        return defuse_specials(text, self.info.special_tokens, frozenset(extra))

    async def encode_messages(self, messages: list[Message]) -> list[int]:
        """Count as the server will see it: the template text with specials, bodies without."""
        tokens: list[int] = []
        for seg in self.info.template.render(messages, add_generation_prompt=True):
            tokens.extend(await self.tokenize(seg.text, special=seg.trusted))
        return tokens

    # -- generation ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending

    def generate(self, request: GenerationRequest) -> _RemoteStream:
        if self._closed:
            raise EngineUnavailable("The model is shut down.")
        ahead = self._pending - self.n_slots + 1
        if ahead > self.max_queue:
            raise EngineBusy(
                f"I'm busy with {self._pending} conversations right now; "
                "please try again in a minute."
            )
        self._pending += 1
        return _RemoteStream(self, request, max(0, ahead))

    async def _payload(self, request: GenerationRequest, max_tokens: int) -> dict[str, Any]:
        s = request.sampling
        messages = request.messages or (Message("user", ""),)
        payload: dict[str, Any] = {
            "messages": [
                {"role": m.role, "content": await self.defuse(m.content)} for m in messages
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if self.model:
            payload["model"] = self.model
        if s.seed >= 0:
            payload["seed"] = s.seed
        if self.config.extended_sampling:  # llama-server, llama-cpp-python, vLLM, Ollama
            payload["top_k"] = s.top_k
            payload["repeat_penalty"] = s.repeat_penalty
        return payload

    async def _open(self, payload: Mapping[str, Any]) -> httpx.Response:
        """POST with retries on 429/5xx/connection errors; the response is streaming."""
        cfg = self.config
        for attempt in range(cfg.retries + 1):
            last = attempt == cfg.retries
            delay = min(_MAX_BACKOFF, cfg.backoff * 2**attempt) * (0.5 + random.random())
            try:
                request = self._client.build_request("POST", "chat/completions", json=payload)
                response = await self._client.send(request, stream=True)
            except _RETRY_EXC as exc:
                log.warning("remote request failed (try %d): %s", attempt + 1, _describe(exc))
                if last:
                    raise EngineUnavailable(UNAVAILABLE) from None
                await asyncio.sleep(delay)
                continue
            if response.status_code < 400:
                return response
            body = (await response.aread())[:300].decode("utf-8", "replace")
            await response.aclose()
            log.warning("remote answered HTTP %d: %s", response.status_code, body)
            if response.status_code == 400 and "context" in body.lower():
                log.error(
                    "the prompt did not fit the server's context: set model.n_ctx (now %d) "
                    "to the server's context size",
                    self.info.n_ctx,
                )
            if response.status_code not in RETRY_STATUS or last:
                raise EngineUnavailable(UNAVAILABLE)
            await asyncio.sleep(max(delay, _retry_after(response)))
        raise EngineUnavailable(UNAVAILABLE)  # pragma: no cover - loop always returns or raises

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._counter.aclose()
        await self._client.aclose()


class _RemoteStream:
    """One streamed completion; a producer task feeds a queue so cancel never waits on I/O."""

    def __init__(self, engine: RemoteEngine, request: GenerationRequest, position: int) -> None:
        self._engine = engine
        self._request = request
        self.queue_position = position
        self.result: GenerationResult | None = None
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._submitted = time.monotonic()
        self._cancelled = False
        self._running = False
        self._task = asyncio.get_running_loop().create_task(self._produce())

    def cancel(self) -> None:
        self._cancelled = True
        if self._running:  # a task cancelled before its first step would skip its finally
            self._task.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for item in read_stream_queue(self._out, self):
                yield item
        finally:
            if self.result is None:
                self.cancel()

    async def _produce(self) -> None:
        self._running = True
        engine, req = self._engine, self._request
        pieces: list[str] = []
        state = _StreamState()
        started: float | None = None
        try:
            if self._cancelled:
                raise asyncio.CancelledError
            async with engine._slots:
                engine.slots_busy += 1
                try:
                    started = time.monotonic()
                    budget = min(req.sampling.max_tokens, engine.info.n_ctx - len(req.prompt))
                    if budget <= 0:
                        state.reason = "length"
                    else:
                        await self._stream(budget, pieces, state, started)
                finally:
                    engine.slots_busy -= 1
        except asyncio.CancelledError:
            state.reason = "cancelled"
        except EngineUnavailable as exc:
            self._out.put_nowait(exc)
        except Exception as exc:  # never let a parser bug kill the bot: report it as unavailable
            log.warning("remote stream failed: %s", _describe(exc))
            self._out.put_nowait(EngineUnavailable(STOPPED if pieces else UNAVAILABLE))
        finally:
            engine._pending -= 1
        now = time.monotonic()
        t0 = started if started is not None else now
        self._out.put_nowait(
            GenerationResult(
                text="".join(pieces),
                finish_reason=state.reason,
                prompt_tokens=state.prompt_tokens or len(req.prompt),
                completion_tokens=state.completion_tokens or state.chunks,
                cached_tokens=state.cached_tokens,
                queue_seconds=t0 - self._submitted,
                ttft_seconds=None if state.first is None else state.first - t0,
                total_seconds=now - t0,
            )
        )
        self._out.put_nowait(STREAM_DONE)

    async def _stream(
        self, budget: int, pieces: list[str], state: _StreamState, started: float
    ) -> None:
        response = await self._engine._open(await self._engine._payload(self._request, budget))
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # comments (": ping"), event names, blank separators
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    log.warning("remote stream error: %s", str(chunk["error"])[:300])
                    raise EngineUnavailable(STOPPED if pieces else UNAVAILABLE)
                text = state.absorb(chunk)
                if text:
                    if state.first is None:
                        state.first = time.monotonic()
                    pieces.append(text)
                    self._out.put_nowait(text)
        except httpx.TransportError as exc:  # server died or stalled mid-stream
            log.warning("remote stream broke after %d pieces: %s", len(pieces), _describe(exc))
            raise EngineUnavailable(STOPPED if pieces else UNAVAILABLE) from None
        finally:
            await response.aclose()


class _StreamState:
    """What the chunks said: finish reason, usage, cache hits."""

    def __init__(self) -> None:
        self.reason: FinishReason = "stop"
        self.first: float | None = None
        self.chunks = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0

    def absorb(self, chunk: Mapping[str, Any]) -> str:
        usage = chunk.get("usage") or {}
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            self.cached_tokens = int(details.get("cached_tokens") or self.cached_tokens)
        timings = chunk.get("timings") or {}  # llama-server
        if timings.get("cache_n"):
            self.cached_tokens = int(timings["cache_n"])
        text = ""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            reason = choice.get("finish_reason")
            if reason in ("stop", "length"):
                self.reason = reason
        if text:
            self.chunks += 1
        return text


async def _probe(client: httpx.AsyncClient, config: RemoteConfig) -> _Probe:
    """``/v1/models`` for the model id; llama-server's ``/props`` for context and template."""
    model, n_ctx, template = config.model, None, None
    try:
        response = await client.get("models")
        response.raise_for_status()
        data = response.json().get("data") or []
        if not model and data:
            model = str(data[0].get("id") or "")
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        log.warning("remote %s not reachable yet: %s", config.base_url, _describe(exc))
        return _Probe(model, None, None)
    specials: list[str] = []
    with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError, TypeError):
        props = await client.get(api_root(config.base_url) + "/props")
        if props.status_code == 200:
            body = props.json()
            template = body.get("chat_template") or None
            ctx = (body.get("default_generation_settings") or {}).get("n_ctx")
            n_ctx = int(ctx) if ctx else None
            specials = [
                str(body[k]) for k in ("bos_token", "eos_token") if isinstance(body.get(k), str)
            ]
    return _Probe(model or "", n_ctx, template, tuple(s for s in specials if len(s) > 1))


async def _probe_tokenizer(endpoint: EndpointTokenizer) -> bool:
    """False only when the server answers but has no tokenizer; a network error defers."""
    try:
        return await endpoint.probe()
    except httpx.TransportError:
        return True


def _display_name(model_id: str) -> str:
    """llama_cpp.server names a model by its file path: show ``SmolLM2-135M.Q4_1``, not the path."""
    if model_id.lower().endswith(".gguf"):
        return os.path.basename(model_id)[: -len(".gguf")]
    return model_id


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return min(_MAX_BACKOFF * 3, max(0.0, float(value)))
    except ValueError:
        return 0.0


def _describe(exc: BaseException) -> str:
    """Exception text for logs: type and message (URLs hold no secrets; keys are headers)."""
    return f"{type(exc).__name__}: {exc}"[:300]
