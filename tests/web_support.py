"""Serving the real web app on 127.0.0.1 for tests, on the session's one engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import ChatConfig, GenerationConfig, LimitsConfig, WebConfig
from core.engine import Engine
from core.memory import MemoryStore
from core.service import ChatService
from web.frontend import WebFrontend

SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass
class Served:
    url: str
    service: ChatService
    store: MemoryStore


def make_service(
    engine: Engine, store: MemoryStore, limits: LimitsConfig | None = None
) -> ChatService:
    return ChatService(
        engine,
        store,
        chat=ChatConfig(system_prompt=SYSTEM_PROMPT, max_input_chars=16000),
        generation=GenerationConfig(temperature=0.0, max_tokens=24, seed=1),
        limits=limits,
    )


@asynccontextmanager
async def serve_web(
    engine: Engine,
    db: Path,
    web: WebConfig | None = None,
    *,
    api_key: str = "",
    limits: LimitsConfig | None = None,
) -> AsyncIterator[Served]:
    """The real WebFrontend on an ephemeral port, stopped the way ``finechat serve`` stops it.

    ``api_key`` mounts ``/v1`` behind that key (none: not mounted, whatever the environment
    says); ``limits`` turns on ``[limits]`` for the service.
    """
    store = await MemoryStore.open(db)
    service = make_service(engine, store, limits)
    frontend = WebFrontend(web or WebConfig(port=0), service, api_key=api_key)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(frontend.run(stop, ready))
    try:
        started = asyncio.create_task(ready.wait())
        await asyncio.wait([started, task], timeout=90, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert ready.is_set(), "web front-end did not start within 90 s"
        assert frontend.url is not None
        yield Served(frontend.url, service, store)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await store.aclose()


def chat_texts(value: Any) -> list[tuple[str, str]]:
    """(role, text) pairs from a Chatbot value as gradio_client returns it."""
    pairs = []
    for msg in value or []:
        content = msg["content"]
        if isinstance(content, list):
            text = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        else:
            text = str(content)
        pairs.append((msg["role"], text))
    return pairs
