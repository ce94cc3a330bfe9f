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

The server renders the chat template itself and may parse special tokens in message text, so
special-token look-alikes in message bodies are defused (a zero-width space after their first
character) before they are sent: a user cannot switch roles by typing ``<|im_start|>system``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
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
from core.errors import EngineUnavailable, ModelLoadError
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


class TokenCounter(Protocol):
    """A tokenizer for budgeting: the server's, or a local GGUF vocabulary."""

    name: str

    async def tokenize(self, text: str, *, special: bool) -> list[int]: ...

    async def aclose(self) -> None: ...


def api_root(base_url: str) -> str:
    """``http://h:8080/v1`` → ``http://h:8080``: the extras (``/tokenize``) live at the root."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def defuse_specials(text: str, specials: tuple[str, ...] = ()) -> str:
    """Break special-token strings in message text so a server cannot parse them as specials."""
    text = break_special_strings(text, specials)
    return _GENERIC_SPECIALS.sub(lambda m: m.group(0)[0] + _ZWSP + m.group(0)[1:], text)


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


class _TokenCache:
    """Recent (text, special) → tokens: history bodies are re-counted on every turn."""

    def __init__(self, size: int = 4096) -> None:
        self._items: OrderedDict[tuple[str, bool], list[int]] = OrderedDict()
        self._size = size

    async def get(
        self, text: str, special: bool, compute: Callable[[], Awaitable[list[int]]]
    ) -> list[int]:
        key = (text, special)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        tokens = await compute()
        self._items[key] = tokens
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return tokens


# -- the engine --------------------------------------------------------------------------------


@dataclass
class _Probe:
    model: str
    n_ctx: int | None
    template: str | None


class RemoteEngine:
    """Streams chat completions from an OpenAI-compatible endpoint."""

    def __init__(
        self,
        config: RemoteConfig,
        client: httpx.AsyncClient,
        counter: TokenCounter,
        info: ModelInfo,
        model: str,
    ) -> None:
        self.config = config
        self.info = info
        self.model = model
        self._client = client
        self._counter = counter
        self._cache = _TokenCache()
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
            if config.tokenizer not in ("", "auto"):
                gguf = await asyncio.to_thread(GGUFTokenizer, config.tokenizer)
                counter = gguf
                template_source = template_source or gguf.metadata.get("tokenizer.chat_template")
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
            special_tokens=(),
        )
        log.info(
            "remote model %s at %s (n_ctx %d, tokenizer %s)",
            info.name,
            config.base_url,
            effective_ctx,
            counter.name,
        )
        return cls(config, client, counter, info, model)

    # -- tokens ----------------------------------------------------------------------------

    async def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        if not text:
            return []
        return await self._cache.get(
            text, special, lambda: self._counter.tokenize(text, special=special)
        )

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
        position = max(0, self._pending - self.n_slots + 1)
        self._pending += 1
        return _RemoteStream(self, request, position)

    def _payload(self, request: GenerationRequest, max_tokens: int) -> dict[str, Any]:
        s = request.sampling
        messages = request.messages or (Message("user", ""),)
        payload: dict[str, Any] = {
            "messages": [
                {"role": m.role, "content": defuse_specials(m.content, self.info.special_tokens)}
                for m in messages
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
        response = await self._engine._open(self._engine._payload(self._request, budget))
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
    with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError, TypeError):
        props = await client.get(api_root(config.base_url) + "/props")
        if props.status_code == 200:
            body = props.json()
            template = body.get("chat_template") or None
            ctx = (body.get("default_generation_settings") or {}).get("n_ctx")
            n_ctx = int(ctx) if ctx else None
    return _Probe(model or "", n_ctx, template)


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
