"""The web chat's conversation list through its HTTP API (gradio_client), on the real model.

The list, resume, rename, delete and both downloads, each checked against what the memory
store holds; another visitor's conversation ids reach nothing. The same features are driven by
a real browser in tests/test_web_browser.py (with edit and 👍/👎, which only a page can send).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
from gradio_client import Client
from gradio_client.exceptions import AppError

from core.engine import Engine
from tests.web_support import Served, chat_texts, serve_web

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

T = TypeVar("T")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    db = tmp_path_factory.mktemp("webconv") / "memory.sqlite"
    async with serve_web(engine, db) as served:
        yield served


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def client(url: str) -> Client:
    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


def value(output: Any) -> Any:
    """An output as gradio_client returns it: a value, or an update carrying one."""
    if isinstance(output, dict) and output.get("__type__") == "update":
        return output.get("value")
    return output


async def fetch(web: Served, file: Any) -> str:
    file = value(file)
    assert isinstance(file, dict) and file.get("url"), file
    async with httpx.AsyncClient() as http:
        resp = await http.get(file["url"])
    assert resp.status_code == 200
    return resp.text


async def test_list_resume_rename_download_delete(web: Served) -> None:
    bid = "listing" * 4
    key = "web:anon-" + bid
    c = await call(client, web.url)
    await call(c.predict, "Tell me about Lisbon.", 0.0, 16, bid, api_name="/chat")
    await call(c.predict, bid, api_name="/new")
    await call(c.predict, "<b>What is a monad?</b>", 0.0, 16, bid, api_name="/chat")
    newest, older = await web.service.conversations(key)
    assert (newest.title, older.title) == ("<b>What is a monad?</b>", "Tell me about Lisbon.")

    listing, title, md_file, json_file = await call(c.predict, bid, api_name="/conversations")
    assert listing["choices"] == [[newest.title, str(newest.id)], [older.title, str(older.id)]]
    assert value(listing) == str(newest.id) and title == "<b>What is a monad?</b>"
    assert "```text\n<b>What is a monad?</b>\n```" in await fetch(web, md_file)
    data = json.loads(await fetch(web, json_file))
    assert data["title"] == title and data["messages"][0]["content"] == title

    # Resume the older conversation: its messages come back and new ones go there.
    listed, title, chat, *_ = await call(
        c.predict, str(older.id), bid, api_name="/open_conversation"
    )
    assert value(listed) == str(older.id) and title == "Tell me about Lisbon."
    assert chat_texts(chat)[0] == ("user", "Tell me about Lisbon.")
    await call(c.predict, "And Porto?", 0.0, 16, bid, api_name="/chat")
    top, _ = await web.service.conversations(key)
    assert top.id == older.id and top.messages == 4

    # Rename (hostile text is kept as typed); an empty title brings the automatic one back.
    hostile = "<img src=x onerror=alert(1)> **Portugal**"
    _, shown, *_, note = await call(
        c.predict, str(older.id), hostile, bid, api_name="/rename_conversation"
    )
    assert shown == hostile and "Renamed" in note and "\\<img" in note
    assert (await web.service.conversations(key))[0].title == hostile
    md = await fetch(web, (await call(c.predict, bid, api_name="/conversations"))[2])
    assert md.startswith("# \\<img src=x onerror=alert(1)\\> \\*\\*Portugal\\*\\*\n")
    _, shown, *_ = await call(c.predict, str(older.id), "", bid, api_name="/rename_conversation")
    assert shown == "Tell me about Lisbon."
    with pytest.raises(AppError, match="too long"):
        await call(c.predict, str(older.id), "t" * 10_000, bid, api_name="/rename_conversation")
    _, shown, *_ = await call(
        c.predict, str(older.id), "a\x00b\u202e\nc", bid, api_name="/rename_conversation"
    )
    assert shown == "ab\u202e c"

    # Delete: gone from the list and the store; the chat starts afresh.
    listed, title, chat, _, _, note = await call(
        c.predict, str(older.id), bid, api_name="/delete_conversation"
    )
    assert "Deleted" in note and chat == [] and value(listed) is None and title == ""
    assert listed["choices"] == [[newest.title, str(newest.id)]]
    assert [s.id for s in await web.service.conversations(key)] == [newest.id]
    assert await web.service.store.conversation_turns(key, older.id) is None


async def test_another_visitors_conversation_is_out_of_reach(web: Served) -> None:
    mine, theirs = "mineminemine" * 2, "theirstheirs" * 2
    c = await call(client, web.url)
    await call(c.predict, "My private note.", 0.0, 16, mine, api_name="/chat")
    (conv,) = await web.service.conversations("web:anon-" + mine)
    other = await call(client, web.url)
    await call(other.predict, theirs, api_name="/conversations")
    for api in ("/open_conversation", "/delete_conversation"):
        with pytest.raises(AppError):
            await call(other.predict, str(conv.id), theirs, api_name=api)
    with pytest.raises(AppError):
        await call(other.predict, str(conv.id), "pwned", theirs, api_name="/rename_conversation")
    (still,) = await web.service.conversations("web:anon-" + mine)
    assert still.title == "My private note." and still.messages >= 2
    assert await web.service.conversations("web:anon-" + theirs) == []


async def test_the_page_names_the_model_from_its_gguf(web: Served) -> None:
    async with httpx.AsyncClient() as http:
        config = (await http.get(web.url + "config")).json()
    by_id = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    assert by_id["page-title"]["value"] == "## finechat · smollm2 135M"
    assert by_id["chatbot"]["label"] == "Chat with smollm2 135M"
    # general.name is not what people read (the arena's model ids keep it: they are ids)
    # Model ids stay what they were (/v1/models lists engine.info.name: tests/test_web.py).
    assert web.service.engine.info.name == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert web.service.available_models() == [web.service.engine.info.name]
