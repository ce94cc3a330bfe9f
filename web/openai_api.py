"""An OpenAI-compatible HTTP API over finechat's engine (``/v1/chat/completions``, ``/v1/models``).

It lets other front-ends and tools (Open WebUI, llmcord, any OpenAI client) use the batched
engine. Like OpenAI's, the API is stateless: clients resend the whole history. Warm reuse still
works because a conversation is keyed by a hash of its opening messages, so its slot (or its
saved KV state) is found again and only the new tokens are evaluated. Message bodies go
through the same role-safe template rendering as the bots: a ``<|im_start|>`` typed by a client
is text, never a special token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from core.config import Config
from core.engine import Engine, GenerationRequest, SamplingParams
from core.errors import EngineBusy, FinechatError
from core.template import Message, Role

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
MAX_STOP = 4
#: Optional bearer key clients must send (read from the environment, never from TOML).
API_KEY_ENV = "FINECHAT_API_KEY"


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": self.message, "type": self.kind, "code": None}},
            status_code=self.status,
        )


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise APIError(400, f"messages[{index}]: only text content parts are supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    if content is None:
        return ""
    raise APIError(400, f"messages[{index}].content must be a string or a list of text parts")


def parse_messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "messages must be a non-empty list")
    out: list[Message] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object")
        role = _ROLES.get(str(m.get("role")))
        if role is None:
            raise APIError(400, f"messages[{i}].role {m.get('role')!r} is not supported")
        out.append(Message(role, _content_text(m.get("content"), i)))
    return out


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise APIError(400, f"{name} must be a number in [{lo}, {hi}]")
    return float(value)


def parse_sampling(body: dict[str, Any], defaults: SamplingParams, n_ctx: int) -> SamplingParams:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = defaults.max_tokens
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens < n_ctx
    ):
        raise APIError(400, f"max_tokens must be an integer in [1, {n_ctx - 1}]")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, "seed must be an integer")
    top_k = body.get("top_k", defaults.top_k)  # llama-server extensions: top_k, repeat_penalty
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise APIError(400, "top_k must be a non-negative integer")
    return SamplingParams(
        temperature=_number(body, "temperature", defaults.temperature, 0.0, 5.0),
        top_p=_number(body, "top_p", defaults.top_p, 0.0001, 1.0),
        top_k=top_k,
        repeat_penalty=_number(body, "repeat_penalty", defaults.repeat_penalty, 0.01, 5.0),
        max_tokens=max_tokens,
        seed=defaults.seed if seed is None else seed,
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
        or not all(isinstance(s, str) for s in stop)
    ):
        raise APIError(400, f"stop must be a string or a list of at most {MAX_STOP} strings")
    return [s for s in stop if s]


def conversation_key(messages: Sequence[Message], user: Any) -> str:
    """Same opening messages → same key, so a resent history finds its warm KV again."""
    opening = [(m.role, m.content) for m in messages[:2]]
    digest = hashlib.sha256(json.dumps([str(user or ""), opening]).encode()).hexdigest()[:20]
    return f"api:{digest}"


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


def create_router(engine: Engine, *, defaults: SamplingParams, api_key: str = "") -> APIRouter:
    """The ``/v1`` routes; mount on any FastAPI app (``finechat api`` or the web server)."""
    router = APIRouter()

    def check_auth(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given, f"Bearer {api_key}"):
            raise APIError(401, "invalid or missing API key", "authentication_error")

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

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        try:
            check_auth(request)
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise APIError(400, "the request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise APIError(400, "the request body must be a JSON object")
            messages = parse_messages(body.get("messages"))
            sampling = parse_sampling(body, defaults, engine.info.n_ctx)
            stops = parse_stop(body)
            prompt = await engine.encode_messages(messages)
            if len(prompt) + 1 > engine.info.n_ctx:
                raise APIError(
                    400,
                    f"the messages are {len(prompt)} tokens; this model's context is "
                    f"{engine.info.n_ctx}",
                )
            key = conversation_key(messages, body.get("user"))
            ignore_eos = bool(body.get("ignore_eos", False))
            stream = engine.generate(
                GenerationRequest(
                    key, prompt, sampling, messages=tuple(messages), ignore_eos=ignore_eos
                )
            )
        except APIError as exc:
            return exc.response()
        except EngineBusy as exc:
            return APIError(503, str(exc), "server_busy").response()
        except FinechatError as exc:
            return APIError(400, str(exc)).response()
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = engine.info.name
        if body.get("stream"):
            return StreamingResponse(
                _sse(stream, StopScanner(stops), completion_id, created, model),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        scanner = StopScanner(stops)
        parts: list[str] = []
        async for piece in stream:
            parts.append(scanner.feed(piece))
            if scanner.stopped:
                stream.cancel()
                break
        if not scanner.stopped:
            parts.append(scanner.flush())
        result = stream.result
        finish = (
            "stop" if scanner.stopped or (result and result.finish_reason == "stop") else "length"
        )
        usage = _usage(result, len(prompt))
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(parts)},
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        )

    return router


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
    stream: Any, scanner: StopScanner, cid: str, created: int, model: str
) -> AsyncIterator[bytes]:
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

    yield chunk({"role": "assistant", "content": ""}, None)
    try:
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
    except FinechatError as exc:
        err = {"error": {"message": str(exc), "type": "server_error"}}
        yield b"data: " + json.dumps(err).encode() + b"\n\n"
        return
    finally:
        stream.cancel()  # client went away: free the slot (no-op after a normal end)
    result = stream.result
    finish = "stop" if scanner.stopped or (result and result.finish_reason == "stop") else "length"
    prompt = result.prompt_tokens if result else 0
    yield chunk({}, finish, usage=_usage(result, prompt))
    yield b"data: [DONE]\n\n"


def create_app(engine: Engine, *, defaults: SamplingParams, api_key: str = "") -> FastAPI:
    """A standalone app for ``finechat api``."""
    app = FastAPI(title="finechat OpenAI-compatible API", docs_url=None, redoc_url=None)
    app.include_router(create_router(engine, defaults=defaults, api_key=api_key))

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


async def serve_api(config: Config, *, host: str, port: int) -> int:
    """``finechat api``: the engine behind the OpenAI routes, uvicorn in this event loop."""
    import asyncio

    import uvicorn

    from core.loopwatch import watch_loop
    from core.runtime import load_engine
    from core.serve import install_signal_handlers
    from core.service import sampling_defaults

    engine = await load_engine(config)
    try:
        app = create_app(
            engine,
            defaults=sampling_defaults(config.generation),
            api_key=os.environ.get(API_KEY_ENV, ""),
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
