"""An OpenAI-compatible HTTP API over finechat's engine (``/v1/chat/completions``, ``/v1/models``).

It lets other front-ends and tools (Open WebUI, llmcord, any OpenAI client) use the batched
engine. Like OpenAI's, the API is stateless: clients resend the whole history. Warm reuse still
works because a conversation is keyed by a hash of its opening messages, so its slot (or its
saved KV state) is found again and only the new tokens are evaluated. Message bodies go
through the same role-safe template rendering as the bots: a ``<|im_start|>`` typed by a client
is text, never a special token.

Every request is hostile until proven otherwise: the key is compared in constant time over
whatever bytes the header holds, the body is read up to ``[api] max_body_bytes``, every
message passes the chat's input checks, and every failure is an OpenAI-style JSON error —
400/401/413/429/503, never a 500 and never an internal exception text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import resource
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from core.config import ApiConfig, ChatConfig, Config
from core.engine import Engine, GenerationRequest, GenerationStream, SamplingParams
from core.errors import (
    ConfigError,
    EngineBusy,
    EngineUnavailable,
    FinechatError,
    InvalidInput,
    LimitExceeded,
)
from core.limits import NO_TICKET, Limiter, Ticket
from core.template import Message, Role
from core.textcheck import clean_user_text
from web.clients import Network, parse_networks, resolve_client

log = logging.getLogger("finechat.api")

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
MAX_STOP = 4
MAX_STOP_CHARS = 256
#: Bearer key clients must send (read from the environment, never from TOML).
API_KEY_ENV = "FINECHAT_API_KEY"
ENGINE_FAILED = "the model failed to answer; please try again in a moment"
TEMPLATE_FAILED = (
    "the model's chat template cannot render these messages "
    "(for example, roles must alternate user/assistant for some models)"
)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": self.message, "type": self.kind, "code": None}},
            status_code=self.status,
            headers=self.headers,
        )


def key_matches(header: str | None, api_key: str) -> bool:
    """``Authorization: Bearer KEY`` against ``api_key``: constant time, total.

    Starlette hands header values over as latin-1 text, so any bytes a client sends come back
    as themselves; both sides are hashed first, so neither length nor content leaks and no
    input can make the comparison raise.
    """
    if not api_key or header is None:
        return False
    raw = header.encode("latin-1", "replace")
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    given = hashlib.sha256(token.strip()).digest()
    expected = hashlib.sha256(api_key.encode("utf-8")).digest()
    return hmac.compare_digest(given, expected)


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise APIError(400, f"messages[{index}]: only text content parts are supported")
            text = part.get("text", "")
            if not isinstance(text, str):
                raise APIError(400, f"messages[{index}]: a text part's text must be a string")
            parts.append(text)
        return "".join(parts)
    if content is None:
        return ""
    raise APIError(400, f"messages[{index}].content must be a string or a list of text parts")


def parse_messages(
    raw: Any, *, max_messages: int = 64, max_chars: int = ChatConfig.max_input_chars
) -> list[Message]:
    """The request's messages through the chat's input checks (length, control characters,
    lone surrogates); empty bodies are allowed, as OpenAI allows them."""
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "messages must be a non-empty list")
    if len(raw) > max_messages:
        raise APIError(
            400, f"too many messages ({len(raw)}); this server takes at most {max_messages}"
        )
    out: list[Message] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object")
        role_name = m.get("role")
        role = _ROLES.get(role_name) if isinstance(role_name, str) else None
        if role is None:
            shown = role_name if isinstance(role_name, str) else type(role_name).__name__
            raise APIError(400, f"messages[{i}].role {shown[:40]!r} is not supported")
        text = _content_text(m.get("content"), i)
        if len(text) > max_chars:  # before cleaning: a huge body is refused without work
            raise APIError(
                400,
                f"messages[{i}] is too long ({len(text):,} characters; the limit is {max_chars:,})",
            )
        try:
            clean = clean_user_text(text, max_chars=max_chars) if text.strip() else ""
        except InvalidInput as exc:
            raise APIError(400, f"messages[{i}]: {exc}") from None
        out.append(Message(role, clean))
    return out


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise APIError(400, f"{name} must be a number in [{lo}, {hi}]")
    return float(value)


def _integer(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise APIError(400, f"{name} must be an integer in [{lo}, {hi}]")
    return value


def parse_sampling(
    body: dict[str, Any], defaults: SamplingParams, n_ctx: int, max_tokens_cap: int | None = None
) -> SamplingParams:
    cap = max(1, min(n_ctx - 1, max_tokens_cap or n_ctx))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(defaults.max_tokens, cap)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise APIError(400, f"max_tokens must be an integer in [1, {cap}]")
    if max_tokens > cap:
        raise APIError(400, f"max_tokens {max_tokens} is more than this server allows ({cap})")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise APIError(400, "n must be 1 (one answer per request)")
    seed = _integer(body, "seed", defaults.seed, -(2**63), 2**32 - 1)
    top_k = _integer(body, "top_k", defaults.top_k, 0, 2**31 - 1)  # llama-server extensions
    return SamplingParams(
        temperature=_number(body, "temperature", defaults.temperature, 0.0, 5.0),
        top_p=_number(body, "top_p", defaults.top_p, 0.0001, 1.0),
        top_k=top_k,
        repeat_penalty=_number(body, "repeat_penalty", defaults.repeat_penalty, 0.01, 5.0),
        max_tokens=max_tokens,
        seed=seed if seed >= 0 else -1,
    )


def parse_stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP
        or not all(isinstance(s, str) and len(s) <= MAX_STOP_CHARS for s in stop)
    ):
        raise APIError(
            400,
            f"stop must be a string or a list of at most {MAX_STOP} strings "
            f"of at most {MAX_STOP_CHARS} characters",
        )
    return [s for s in stop if s]


def conversation_key(messages: Sequence[Message], user: Any) -> str:
    """Same opening messages → same key, so a resent history finds its warm KV again."""
    opening = [(m.role, m.content) for m in messages[:2]]
    who = user if isinstance(user, str) else ""
    digest = hashlib.sha256(json.dumps([who, opening]).encode()).hexdigest()[:20]
    return f"api:{digest}"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "Content-Length is not a number") from None
        if size > limit:
            raise APIError(413, f"the request body is over {limit:,} bytes", "request_too_large")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(
                    413, f"the request body is over {limit:,} bytes", "request_too_large"
                )
    except APIError:
        raise
    except Exception:  # the client went away mid-body
        raise APIError(400, "the request body could not be read") from None
    return bytes(body)


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd numbers or nesting
        raise APIError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


class StopScanner:
    """Cuts the stream at the first stop string, holding back text that may start one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.buffer += text
        cut = min((i for s in self.stops if (i := self.buffer.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.stopped = self.buffer[:cut], "", True
            return out
        if len(self.buffer) > self.hold:
            out = self.buffer[: len(self.buffer) - self.hold]
            self.buffer = self.buffer[len(out) :]
            return out
        return ""

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class _CancellingStream(StreamingResponse):
    """A streamed answer whose generation is cancelled however the response ends.

    Starlette stops iterating the body when the client disconnects — possibly before the body
    generator ever ran, so the generator's own ``finally`` cannot be relied on.
    """

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]):
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


@dataclasses.dataclass
class _Reply:
    """One admitted generation: its stream and its limit ticket, closed exactly once."""

    stream: GenerationStream
    ticket: Ticket
    prompt_tokens: int
    closed: bool = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        result = self.stream.result
        if result is None:
            self.stream.cancel()
        await self.ticket.finish(result.completion_tokens if result else 0)


def create_router(
    engine: Engine,
    *,
    defaults: SamplingParams,
    api_key: str = "",
    api: ApiConfig | None = None,
    chat: ChatConfig | None = None,
    limiter: Limiter | None = None,
    trusted_proxies: Sequence[str] = (),
) -> APIRouter:
    """The ``/v1`` routes; mount on any FastAPI app (``finechat api`` or the web server).

    With ``api_key`` every route needs ``Authorization: Bearer KEY``. ``limiter`` counts each
    completion against the client's address (``api:ADDRESS``) per ``[limits]``.
    """
    router = APIRouter()
    api = api or ApiConfig()
    chat = chat or ChatConfig()
    trusted: tuple[Network, ...] = parse_networks(trusted_proxies)

    def check_auth(request: Request) -> None:
        if api_key and not key_matches(request.headers.get("authorization"), api_key):
            raise APIError(401, "invalid or missing API key", "authentication_error")

    def person(request: Request) -> str:
        peer = request.client.host if request.client else None
        return "api:" + resolve_client(peer, request.headers, trusted).address

    @router.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        try:
            check_auth(request)
        except APIError as exc:
            return exc.response()
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": engine.info.name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "finechat",
                    }
                ],
            }
        )

    async def admit(request: Request) -> tuple[dict[str, Any], list[str], _Reply]:
        """Everything up to a running generation; raises :class:`APIError` for the client."""
        check_auth(request)
        body = parse_json(await read_body(request, api.max_body_bytes))
        messages = parse_messages(
            body.get("messages"), max_messages=api.max_messages, max_chars=chat.max_input_chars
        )
        sampling = parse_sampling(body, defaults, engine.info.n_ctx, api.max_tokens)
        stops = parse_stop(body)
        try:
            prompt = await engine.encode_messages(messages)
        except FinechatError:
            raise
        except Exception as exc:  # the model's Jinja template raised on these messages
            log.info("api: chat template failed: %s: %s", type(exc).__name__, exc)
            raise APIError(400, TEMPLATE_FAILED) from None
        if len(prompt) + 1 > engine.info.n_ctx:
            raise APIError(
                400,
                f"the messages are {len(prompt)} tokens; this model's context is "
                f"{engine.info.n_ctx}",
            )
        ticket = NO_TICKET
        if limiter is not None:
            ticket = await limiter.admit_reply(person(request))
        key = conversation_key(messages, body.get("user"))
        request_ = GenerationRequest(
            key,
            prompt,
            sampling,
            messages=tuple(messages),
            ignore_eos=body.get("ignore_eos") is True,
        )
        try:
            stream = engine.generate(request_)
        except BaseException:
            await ticket.refund()
            raise
        return body, stops, _Reply(stream, ticket, len(prompt))

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        try:
            body, stops, reply = await admit(request)
        except APIError as exc:
            return exc.response()
        except LimitExceeded as exc:
            wait = max(1, math.ceil(exc.retry_after))
            return APIError(
                429, str(exc), "rate_limit_exceeded", {"Retry-After": str(wait)}
            ).response()
        except (EngineBusy, EngineUnavailable) as exc:
            return APIError(503, str(exc), "server_busy").response()
        except InvalidInput as exc:
            return APIError(400, str(exc)).response()
        except Exception as exc:
            log.error("api: request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            return APIError(503, ENGINE_FAILED, "server_error").response()
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = engine.info.name
        if body.get("stream"):
            return _CancellingStream(
                _sse(reply, StopScanner(stops), completion_id, created, model), reply.close
            )
        watcher = asyncio.create_task(_cancel_on_disconnect(request, reply.stream))
        try:
            text, stopped = await _collect(reply.stream, StopScanner(stops))
        except Exception as exc:
            return _engine_error(exc).response()
        finally:
            watcher.cancel()
            await reply.close()
        result = reply.stream.result
        finish = "stop" if stopped or (result and result.finish_reason == "stop") else "length"
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                    }
                ],
                "usage": _usage(result, reply.prompt_tokens),
            }
        )

    return router


def _engine_error(exc: BaseException) -> APIError:
    if isinstance(exc, EngineUnavailable | EngineBusy):
        return APIError(503, str(exc), "server_error")
    log.error("api: generation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return APIError(503, ENGINE_FAILED, "server_error")


async def _collect(stream: GenerationStream, scanner: StopScanner) -> tuple[str, bool]:
    parts: list[str] = []
    async for piece in stream:
        parts.append(scanner.feed(piece))
        if scanner.stopped:
            stream.cancel()
            break
    if not scanner.stopped:
        parts.append(scanner.flush())
    return "".join(parts), scanner.stopped


async def _cancel_on_disconnect(request: Request, stream: GenerationStream) -> None:
    """A non-streaming client that hangs up stops its generation too."""
    with contextlib.suppress(Exception):
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                stream.cancel()
                return


def _usage(result: Any, prompt_tokens: int) -> dict[str, Any]:
    completion = result.completion_tokens if result else 0
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    if result is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": result.cached_tokens}
        usage["timings"] = {
            "ttft_s": result.ttft_seconds,
            "total_s": result.total_seconds,
            "queue_s": result.queue_seconds,
        }
    return usage


async def _sse(
    reply: _Reply, scanner: StopScanner, cid: str, created: int, model: str
) -> AsyncIterator[bytes]:
    stream = reply.stream

    def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
        payload = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    try:
        # Inside the try: a client gone right after the first chunk still cancels.
        yield chunk({"role": "assistant", "content": ""}, None)
        async for piece in stream:
            text = scanner.feed(piece)
            if text:
                yield chunk({"content": text}, None)
            if scanner.stopped:
                stream.cancel()
                break
        if not scanner.stopped:
            tail = scanner.flush()
            if tail:
                yield chunk({"content": tail}, None)
    except Exception as exc:
        error = _engine_error(exc)
        err = {"error": {"message": error.message, "type": error.kind}}
        yield b"data: " + json.dumps(err).encode() + b"\n\n"
        return
    finally:
        await reply.close()  # client went away: free the slot (no-op after a normal end)
    result = stream.result
    finish = "stop" if scanner.stopped or (result and result.finish_reason == "stop") else "length"
    yield chunk({}, finish, usage=_usage(result, reply.prompt_tokens))
    yield b"data: [DONE]\n\n"


def create_app(
    engine: Engine,
    *,
    defaults: SamplingParams,
    api_key: str = "",
    api: ApiConfig | None = None,
    chat: ChatConfig | None = None,
    limiter: Limiter | None = None,
    trusted_proxies: Sequence[str] = (),
) -> FastAPI:
    """A standalone app for ``finechat api``."""
    app = FastAPI(
        title="finechat OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.include_router(
        create_router(
            engine,
            defaults=defaults,
            api_key=api_key,
            api=api,
            chat=chat,
            limiter=limiter,
            trusted_proxies=trusted_proxies,
        )
    )

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        stats = getattr(engine, "stats", None)
        return {
            "ok": True,
            "model": engine.info.name,
            "pending": engine.pending,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "engine": dataclasses.asdict(stats)
            if dataclasses.is_dataclass(stats) and not isinstance(stats, type)
            else None,
        }

    return app


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def check_exposure(host: str, api_key: str, *, allow_no_key: bool) -> None:
    """``finechat api`` listens beyond this machine only with a key (or ``--allow-no-key``)."""
    if api_key or allow_no_key:
        return
    if host.strip().lower() in LOOPBACK_HOSTS or host.startswith("127."):
        return
    raise ConfigError(
        f"refusing to serve the API on {host!r} without a key: anyone who can reach it could "
        f"use the model. Set {API_KEY_ENV}, listen on 127.0.0.1, or pass --allow-no-key."
    )


async def serve_api(config: Config, *, host: str, port: int, allow_no_key: bool = False) -> int:
    """``finechat api``: the engine behind the OpenAI routes, uvicorn in this event loop."""
    import uvicorn

    from core.limits import Limiter
    from core.logs import register_secret
    from core.loopwatch import watch_loop
    from core.memory import MemoryStore
    from core.runtime import load_engine
    from core.serve import install_signal_handlers
    from core.service import sampling_defaults

    api_key = os.environ.get(API_KEY_ENV, "").strip()
    check_exposure(host, api_key, allow_no_key=allow_no_key)
    if api_key:
        register_secret(api_key)
    limits = config.limits
    counted = limits.replies_per_minute > 0 or limits.tokens_per_day > 0
    store = await MemoryStore.open(config.database.path) if counted else None
    try:
        engine = await load_engine(config)
        try:
            app = create_app(
                engine,
                defaults=sampling_defaults(config.generation),
                api_key=api_key,
                api=config.api,
                chat=config.chat,
                limiter=Limiter(store, limits) if store is not None else None,
                trusted_proxies=config.web.trusted_proxies,
            )
            server = uvicorn.Server(
                uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
            )
            server.install_signal_handlers = lambda: None  # type: ignore[method-assign,attr-defined]
            stop = asyncio.Event()
            remove = install_signal_handlers(stop)
            serving = asyncio.create_task(server.serve())
            print(f"finechat API on http://{host}:{port}/v1 (model {engine.info.name})", flush=True)
            stopper = asyncio.create_task(stop.wait())
            async with watch_loop():  # stalls are logged (this server has no /metrics)
                await asyncio.wait([serving, stopper], return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            stopper.cancel()
            await serving
            remove()
            return 0 if server.started else 1
        finally:
            await engine.aclose()
    finally:
        if store is not None:
            await store.aclose()
