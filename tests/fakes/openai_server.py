"""A fake OpenAI-compatible server on 127.0.0.1 for the remote engine's failure paths.

The real server (``python -m llama_cpp.server``) covers the happy path in the slow tests; this
one makes the hard cases cheap and deterministic: HTTP 503/429 with ``Retry-After`` a given
number of times, a first chunk that never comes (read timeout), a stream that drips forever
(cancel), and the tokenizer dialects (llama-server ``/tokenize``, llama-cpp-python
``/extras/tokenize``, none). Every request is recorded with its headers and JSON body.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeOpenAI:
    """Behaviour knobs are plain attributes; change them between requests."""

    reply: list[str] = field(default_factory=lambda: ["Hel", "lo ", "there."])
    fail_first: int = 0
    fail_status: int = 503
    retry_after: str = "0"
    first_chunk_delay: float = 0.0
    chunk_delay: float = 0.0
    repeat_forever: bool = False
    tokenizer: str = "llama-server"  # or "llama-cpp-python" or "none"
    specials: list[str] = field(default_factory=list)
    """The vocabulary's special tokens: one token each when special parsing is on."""
    model_id: str = "fake-model"
    requests: list[Recorded] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize_llama_server)
        app.router.add_post("/extras/tokenize", self._tokenize_llama_cpp)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        return body

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"object": "list", "data": [{"id": self.model_id}]})

    def _toy_tokens(self, text: str, special: bool = True) -> list[int]:
        """One token per word (its length); markup (``<``, ``>``, ``[``, ``]``) one per
        character, as real BPE vocabularies split it; each special a single token."""
        if special:
            for i, token in enumerate(self.specials):
                if token in text:
                    head, _, tail = text.partition(token)
                    return [*self._toy_tokens(head), 1000 + i, *self._toy_tokens(tail)]
        tokens: list[int] = []
        for word in text.split():
            tokens.extend([1] * len(word) if any(c in word for c in "<>[]") else [len(word)])
        return tokens or ([0] if text else [])

    async def _tokenize_llama_server(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if self.tokenizer != "llama-server":
            raise web.HTTPNotFound()
        special = bool(body.get("parse_special", False))
        return web.json_response({"tokens": self._toy_tokens(body["content"], special)})

    async def _tokenize_llama_cpp(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if self.tokenizer != "llama-cpp-python":
            raise web.HTTPNotFound()
        return web.json_response({"tokens": self._toy_tokens(body["input"])})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.json_response(
                {"error": {"message": "overloaded"}},
                status=self.fail_status,
                headers={"Retry-After": self.retry_after},
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await asyncio.sleep(self.first_chunk_delay)
            pieces = list(self.reply)
            while pieces:
                piece = pieces.pop(0)
                if self.repeat_forever:
                    pieces.append(piece)
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await asyncio.sleep(self.chunk_delay)
            final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
            for event in (final, usage):
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response
