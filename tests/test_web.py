"""The web chat end to end: the real app on 127.0.0.1, driven with gradio_client, on the real model.

gradio_client is synchronous, so every call runs in a thread while the server runs on the
test's event loop (as it runs on finechat's loop in production).
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
from gradio_client import Client
from gradio_client.exceptions import AppError, AuthenticationError

from core.config import WebConfig
from core.engine import Engine
from core.memory import MemoryStore
from tests.web_support import SYSTEM_PROMPT, Served, chat_texts, make_service, serve_web
from web.server import build_app

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

T = TypeVar("T")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    db = tmp_path_factory.mktemp("web") / "memory.sqlite"
    async with serve_web(engine, db, api_key=API_KEY) as served:
        yield served


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def client(url: str) -> Client:
    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


API_KEY = "web-test-api-key"
BID_A = "a" * 22
BID_B = "b" * 22


async def test_healthz_reports_model_and_database(web: Served) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.get(web.url + "healthz")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok"
    assert body["model_loaded"] is True and body["database_writable"] is True
    assert body["model"] == web.service.model_name


async def test_openai_routes_are_served_beside_the_page(web: Served) -> None:
    """With FINECHAT_API_KEY set, /v1 shares the page's engine (without one: tests/test_api_security)."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=60, headers=auth) as http:
        models = (await http.get(web.url + "v1/models")).json()
        assert [m["id"] for m in models["data"]] == [web.service.engine.info.name]
        resp = await http.post(
            web.url + "v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8},
        )
    assert resp.status_code == 200
    body = resp.json()
    assert body["choices"][0]["message"]["content"]
    assert 1 <= body["usage"]["completion_tokens"] <= 8


async def test_chat_round_trip_streams_growing_text_and_is_remembered(web: Served) -> None:
    c = await call(client, web.url)
    job = c.submit("Tell me about the sea.", 0.0, 48, BID_A, api_name="/chat")
    final = await call(job.result, timeout=120)
    chat, box, status, bid = final
    assert bid == BID_A and box == ""
    pairs = chat_texts(chat)
    assert pairs[0] == ("user", "Tell me about the sea.")
    answer = pairs[-1][1]
    assert pairs[-1][0] == "assistant" and answer
    assert "tokens" in status and "tok/s" in status

    # Streaming: the assistant text grew through several partial updates, each a prefix of the next.
    partials = [chat_texts(out[0])[-1][1] for out in job.outputs() if chat_texts(out[0])]
    partials = [p for p in partials if p]
    assert len(set(partials)) >= 3, partials
    for shorter, longer in itertools.pairwise(partials):
        assert longer.startswith(shorter)
    assert partials[-1] == answer

    stored = await web.service.history("web:anon-" + BID_A)
    assert [(t.role, t.text) for t in stored] == [
        ("user", "Tell me about the sea."),
        ("assistant", answer),
    ]


async def test_two_browser_ids_never_share_history(web: Served) -> None:
    c = await call(client, web.url)
    await call(c.predict, "I am browser one.", 0.0, 16, "one" * 8, api_name="/chat")
    await call(c.predict, "I am browser two.", 0.0, 16, "two" * 8, api_name="/chat")
    one = await call(c.predict, "one" * 8, api_name="/history")
    two = await call(c.predict, "two" * 8, api_name="/history")
    assert [t for r, t in chat_texts(one[1]) if r == "user"] == ["I am browser one."]
    assert [t for r, t in chat_texts(two[1]) if r == "user"] == ["I am browser two."]

    # A missing or forged id is never trusted: the visitor gets a fresh, empty conversation.
    for forged in (None, "", "../web:anon-" + "one" * 8, "short"):
        bid, history, *_ = await call(c.predict, forged, api_name="/history")
        assert bid not in ("one" * 8, "two" * 8) and len(bid) >= 22
        assert history == []


async def test_reload_and_restart_keep_the_conversation(web: Served, engine: Engine) -> None:
    bid = "reload" * 4
    first = await call(client, web.url)
    _, _, _, _ = await call(
        first.predict, "Remember the word lighthouse.", 0.0, 16, bid, api_name="/chat"
    )
    before = chat_texts((await call(first.predict, bid, api_name="/history"))[1])
    assert before[0] == ("user", "Remember the word lighthouse.") and len(before) == 2

    reloaded = await call(client, web.url)  # a new page load: new Gradio session, same browser id
    assert chat_texts((await call(reloaded.predict, bid, api_name="/history"))[1]) == before

    # A restart: a new server process on the same database file.
    async with serve_web(engine, Path(web.store.path)) as again:
        c = await call(client, again.url)
        assert chat_texts((await call(c.predict, bid, api_name="/history"))[1]) == before


async def test_persona_changes_the_prompt(web: Served) -> None:
    persona = "You are Captain Nemo, a terse submarine captain who speaks in nautical terms."
    plain, pirate = "plain" * 5, "nemo" * 6
    c = await call(client, web.url)
    saved, note = await call(c.predict, persona, pirate, api_name="/persona")
    assert saved == persona and "Persona saved" in note
    assert await web.service.get_persona("web:anon-" + pirate) == persona

    *_, status_plain, _ = await call(c.predict, "Hello!", 0.0, 16, plain, api_name="/chat")
    *_, status_nemo, _ = await call(c.predict, "Hello!", 0.0, 16, pirate, api_name="/chat")
    engine = web.service.engine
    extra = len(await engine.tokenize(persona)) - len(await engine.tokenize(SYSTEM_PROMPT))

    def prompt_tokens(status: str) -> int:
        return int(status.split("prompt ")[1].split(" tokens")[0])

    assert prompt_tokens(status_nemo) - prompt_tokens(status_plain) == extra

    restored, note = await call(c.predict, "", pirate, api_name="/persona")
    assert restored == SYSTEM_PROMPT and "default" in note


async def test_bad_input_gets_a_clear_error_and_stores_nothing(web: Served) -> None:
    bid = "badinput" * 3
    c = await call(client, web.url)
    with pytest.raises(AppError, match="empty"):
        await call(c.predict, "   \n ", 0.0, 16, bid, api_name="/chat")
    with pytest.raises(AppError, match="too long"):
        await call(c.predict, "x" * 100_000, 0.0, 16, bid, api_name="/chat")
    with pytest.raises(AppError, match="greater than maximum"):
        await call(c.predict, "hi", 9.0, 16, bid, api_name="/chat")
    assert await web.store.all_messages("web:anon-" + bid) == []


async def test_markup_in_a_message_is_shown_as_text(web: Served) -> None:
    attack = '<img src=x onerror="alert(1)"><script>alert(2)</script> **bold** [link](javascript:alert(3))'
    c = await call(client, web.url)
    chat, *_ = await call(c.predict, attack, 0.0, 16, "markup" * 4, api_name="/chat")
    shown = chat_texts(chat)[0][1]
    assert "<img" not in shown.replace("\\<img", "")  # every tag opener is escaped
    assert "\\<script\\>" in shown and "\\*\\*bold\\*\\*" in shown and "\\[link\\]" in shown
    stored = await web.service.history("web:anon-" + "markup" * 4)
    assert stored[0].text == attack  # stored exactly as typed


async def test_stop_ends_the_answer_and_keeps_no_partial(web: Served) -> None:
    bid = "stopper" * 4
    c = await call(client, web.url)
    # Greedy decoding writes this story to the 512-token limit (about 5 s), so it is still
    # running when the second message and the stop arrive.
    job = c.submit("Write a very long story about a dragon.", 0.0, 512, bid, api_name="/chat")
    key = "web:anon-" + bid
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not web.service.busy(key):  # the reply is in flight once the service holds the key
        assert loop.time() < deadline, "the reply never started"
        await asyncio.sleep(0.01)
    # A second message while the first is being answered is refused, not queued or lost silently.
    with pytest.raises(AppError, match="press Stop"):
        await call(c.predict, "And another thing!", 0.0, 16, bid, api_name="/chat")
    stopped = await call(c.predict, bid, api_name="/stop")
    assert "Stopping" in stopped
    _, _, status, _ = await call(job.result, timeout=60)
    assert "not kept" in status
    assert not web.service.busy(key)
    stored = await web.service.history(key)
    assert [t.role for t in stored] == ["user"]  # the stopped answer is not remembered


async def test_retry_gives_a_new_answer_and_keeps_the_old_one(web: Served) -> None:
    bid = "retrying" * 3
    key = "web:anon-" + bid
    c = await call(client, web.url)
    await call(c.predict, "Name a colour.", 0.0, 16, bid, api_name="/chat")
    chat, _, status, _ = await call(c.predict, 1.5, 16, bid, api_name="/retry")
    pairs = chat_texts(chat)
    assert [r for r, _ in pairs] == ["user", "assistant"] and "tokens" in status
    everything = await web.store.all_messages(key)
    assert [t.role for t in everything] == ["user", "assistant", "assistant"]
    assert (await web.service.history(key))[-1].text == pairs[-1][1]


async def test_new_conversation_starts_empty_and_keeps_the_old_one_on_disk(web: Served) -> None:
    bid = "fresh" * 5
    key = "web:anon-" + bid
    c = await call(client, web.url)
    await call(c.predict, "First conversation.", 0.0, 16, bid, api_name="/chat")
    chat, note = await call(c.predict, bid, api_name="/new")
    assert chat == [] and "New conversation" in note
    assert (await call(c.predict, bid, api_name="/history"))[1] == []
    assert len(await web.store.all_messages(key)) == 2


async def test_dropped_turns_are_announced(web: Served) -> None:
    """With 900 of 1024 context tokens reserved for the answer, older turns must be left out."""
    bid = "dropping" * 3
    c = await call(client, web.url)
    text = "Please remember this sentence about gardens, rivers and mountains. " * 2
    status = ""
    for _ in range(4):
        _, _, status, _ = await call(c.predict, text, 0.0, 900, bid, api_name="/chat")
        if "left out" in status:
            break
    assert "older message" in status and "left out" in status


async def test_arena_streams_both_sides_and_stores_a_vote(web: Served) -> None:
    bid = "arena" * 5
    c = await call(client, web.url)
    model = web.service.available_models()[0]
    job = c.submit("Say something about cats.", model, 0.0, model, 1.0, 32, bid, api_name="/arena")
    chat_a, chat_b, stats_a, stats_b, *_ = await call(job.result, timeout=120)
    answer_a, answer_b = chat_texts(chat_a)[-1][1], chat_texts(chat_b)[-1][1]
    assert answer_a and answer_b
    assert "first token" in stats_a and "tok/s" in stats_a and "tok/s" in stats_b

    table, note, *_ = await call(c.predict, bid, api_name="/vote_a")
    assert "Recorded" in note
    rows = {row[0]: row for row in table["data"]}
    winner = f"{model} (temperature 0)"
    loser = f"{model} (temperature 1)"
    assert rows[winner][1:5] == [1, 1, 0, 0] and rows[winner][5] == "100%"
    assert rows[loser][1:5] == [1, 0, 0, 1]

    with sqlite3.connect(web.store.path) as db:
        got = db.execute(
            "SELECT key, prompt, model_a, model_b, settings_a, settings_b, winner, answer_a, answer_b FROM votes"
        ).fetchall()
    assert got == [
        (
            "web:anon-" + bid,
            "Say something about cats.",
            model,
            model,
            '{"temperature": 0.0}',
            '{"temperature": 1.0}',
            "a",
            answer_a,
            answer_b,
        )
    ]
    # One round, one vote.
    with pytest.raises(AppError, match="each round takes one vote"):
        await call(c.predict, bid, api_name="/vote_b")
    # Arena prompts stay out of the visitor's chat.
    assert await web.service.history("web:anon-" + bid) == []
    # Forgetting the visitor also deletes their arena conversations and votes.
    assert await web.store.forget("web:anon-" + bid) == 4
    with sqlite3.connect(web.store.path) as db:
        left = db.execute(
            "SELECT (SELECT COUNT(*) FROM conversations WHERE key LIKE ?),"
            " (SELECT COUNT(*) FROM votes)",
            (f"web:anon-{bid}%",),
        ).fetchone()
    assert left == (0, 0)


def _delete_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


async def test_healthz_fails_when_the_database_is_gone(engine: Engine, tmp_path: Path) -> None:
    db = tmp_path / "doomed.sqlite"
    store = await MemoryStore.open(db)
    try:
        app = build_app(make_service(engine, store), WebConfig(port=0))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as http:
            assert (await http.get("/healthz")).status_code == 200
            await asyncio.to_thread(_delete_db, db)
            resp = await http.get("/healthz")
    finally:
        await store.aclose()
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "error" and body["model_loaded"] is True
    assert body["database_writable"] is False and "missing" in body["detail"]


async def test_signed_in_users_own_their_conversation(engine: Engine, tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("alice:wonderland\nbob:builder\n", encoding="utf-8")
    web_config = WebConfig(port=0, auth_file=str(users))
    async with serve_web(engine, tmp_path / "auth.sqlite", web_config) as w:

        def login(user: str, password: str) -> Client:
            return Client(
                w.url,
                auth=(user, password),
                verbose=False,
                analytics_enabled=False,
                download_files=False,
            )

        # Gradio 6 answers a wrong password with 400, which gradio_client reports as ValueError.
        with pytest.raises((AuthenticationError, ValueError), match="Could not login"):
            await call(login, "alice", "wrong")
        alice = await call(login, "alice", "wonderland")
        await call(alice.predict, "I am Alice.", 0.0, 16, "laptop" * 4, api_name="/chat")
        # The same login in another browser (another browser id) continues the same conversation.
        phone = await call(login, "alice", "wonderland")
        _, history, *_ = await call(phone.predict, "phone" * 5, api_name="/history")
        assert [t for r, t in chat_texts(history) if r == "user"] == ["I am Alice."]
        bob = await call(login, "bob", "builder")
        _, history, *_ = await call(bob.predict, "laptop" * 4, api_name="/history")
        assert history == []
        stored = await w.store.all_messages("web:alice")
        assert stored[0].text == "I am Alice."


async def test_root_path_is_used_for_the_page_links(engine: Engine, tmp_path: Path) -> None:
    """Behind a reverse proxy at /finechat the page must load its assets from there."""
    web_config = WebConfig(port=0, root_path="/finechat")
    async with (
        serve_web(engine, tmp_path / "proxied.sqlite", web_config) as w,
        httpx.AsyncClient() as http,
    ):
        config = (await http.get(w.url + "config")).json()
        health = await http.get(w.url + "healthz")
    assert config["root"].endswith("/finechat")
    assert health.status_code == 200
