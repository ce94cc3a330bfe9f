"""Model text is cleaned once, where it enters finechat (the engines' shared stream reader):
lone surrogates become U+FFFD, NUL and other control characters go, CR/CRLF become LF — also
when a surrogate pair or a CRLF is split across two streamed deltas.

Through the real remote engine (httpx against a fake OpenAI-compatible server on 127.0.0.1,
whose JSON carries ``\\ud800``-style escapes) and the real ChatService and SQLite store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import ChatConfig, GenerationConfig, RemoteConfig
from core.engine import STREAM_DONE, GenerationResult, read_stream_queue
from core.memory import MemoryStore
from core.remote_engine import RemoteEngine
from core.service import ChatService, Delta, Done
from core.textcheck import StreamCleaner, clean_model_text
from tests.fakes.openai_server import FakeOpenAI

HOSTILE_PIECES = [
    "Hi\x00 ",
    "\ud83d",
    "\ude00 ok\ud800",
    "\x85\x1b[0m",
    "end\r",
    "\nnext\x7f",
    "\udfff",
]
EXPECTED = "Hi 😀 ok\ufffd[0mend\nnext\ufffd"


def test_clean_model_text() -> None:
    assert clean_model_text("".join(HOSTILE_PIECES)) == EXPECTED
    assert clean_model_text("tab\tand\nnewline stay") == "tab\tand\nnewline stay"
    assert clean_model_text("\x00\x01\x08\x0b\x0c\x0e\x1f\x7f\x80\x9f") == ""
    assert clean_model_text("a\r\nb\rc") == "a\nb\nc"
    assert clean_model_text("\ud83d\ude00") == "😀"  # a pair spelled as two code points


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(st.characters(exclude_categories=())),
            st.sampled_from(["\ud83d", "\ude00", "\r", "\n", "\x00", "😀"]),
        ),
        max_size=20,
    )
)
def test_stream_cleaner_equals_cleaning_the_whole(pieces: list[str]) -> None:
    cleaner = StreamCleaner()
    out = "".join(cleaner.feed(p) for p in pieces) + cleaner.flush()
    assert out == clean_model_text("".join(pieces))
    out.encode("utf-8")  # valid UTF-8: no lone surrogate survives


class _Stream:
    queue_position = 0
    result: GenerationResult | None = None


async def test_stream_reader_cleans_deltas_and_result() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for piece in HOSTILE_PIECES:
        queue.put_nowait(piece)
    queue.put_nowait(GenerationResult("".join(HOSTILE_PIECES), "stop", 1, 1, 0, 0.0, None, 0.0))
    queue.put_nowait(STREAM_DONE)
    stream = _Stream()
    deltas = [d async for d in read_stream_queue(queue, stream)]  # type: ignore[arg-type]
    assert "".join(deltas) == EXPECTED
    assert all(deltas)  # a delta that cleans to nothing is not sent
    assert stream.result is not None and stream.result.text == EXPECTED


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


async def test_hostile_backend_text_is_stored_and_streamed_clean(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.reply = HOSTILE_PIECES
    config = RemoteConfig(base_url=fake.base_url, retries=0, connect_timeout=2.0, read_timeout=5.0)
    engine = await RemoteEngine.connect(config, n_ctx=1024, env={})
    store = await MemoryStore.open(tmp_path / "m.sqlite")
    try:
        service = ChatService(
            engine,
            store,
            chat=ChatConfig(system_prompt="Be brief."),
            generation=GenerationConfig(temperature=0.0, max_tokens=32),
        )
        events = [e async for e in service.reply("web:tester", "say something odd")]
        streamed = "".join(e.text for e in events if isinstance(e, Delta))
        done = events[-1]
        assert isinstance(done, Done) and done.message_id is not None
        assert streamed == EXPECTED
        assert done.text == EXPECTED
        stored = await store.get_message(done.message_id)
        assert stored is not None and stored.text == EXPECTED
        stored.text.encode("utf-8")
    finally:
        await engine.aclose()
        await store.aclose()
