"""Operations on the real model and real SQLite: /metrics, the turn log, forget/prune/stats.

``/metrics`` is served over HTTP by uvicorn from :func:`core.metrics.metrics_asgi_app` and
parsed with Prometheus' own text parser; the turn log is checked for what must never be in
it (bot tokens, message text by default); forget/prune are checked row by row and in the raw
database bytes.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from core.admin import parse_duration
from core.cli import main as cli_main
from core.config import LoggingConfig
from core.errors import ConversationBusy, InvalidInput
from core.logs import TurnLogger, register_secret, setup_logging
from core.memory import MemoryStore, Vote
from core.metrics import metrics_asgi_app, metrics_for
from core.observe import TurnRecord
from core.service import ChatService, Delta, Started

BOT_TOKEN = "7123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def metrics_url(service: ChatService) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        metrics_asgi_app(service), host="127.0.0.1", port=port, log_level="error"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def scrape(url: str) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def total(values: dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(name + "{"))


async def test_metrics_parse_and_move_after_turns(service: ChatService, metrics_url: str) -> None:
    before = await scrape(metrics_url)
    assert total(before, "finechat_requests_total") == 0
    assert "finechat_active_conversations{}" in before
    done = await service.ask("telegram:1:1", "Hello!")
    # a refused second message counts as an error of that front-end
    gen = service.reply("discord:2:2", "Count from one to ten.")
    assert isinstance(await gen.__anext__(), Started)
    with pytest.raises(ConversationBusy):
        await service.ask("discord:2:2", "again")
    during = await scrape(metrics_url)
    assert during["finechat_active_conversations{}"] == 1
    [_ async for _ in gen]
    after = await scrape(metrics_url)
    model = service.model_name
    assert after["finechat_requests_total{frontend=telegram,kind=reply}"] == 1
    assert after["finechat_requests_total{frontend=discord,kind=reply}"] == 2
    assert after["finechat_errors_total{frontend=discord,reason=busy}"] == 1
    assert total(after, "finechat_turns_total") == 2
    assert after[f"finechat_completion_tokens_total{{model={model}}}"] >= done.completion_tokens
    assert after[f"finechat_ttft_seconds_count{{model={model}}}"] == 2
    assert after[f"finechat_tokens_per_second_count{{model={model}}}"] >= 1
    assert after["finechat_database_bytes{}"] > 0
    assert after[f"finechat_engine_slots{{model={model}}}"] >= 1
    assert after[f"finechat_queue_length{{model={model}}}"] == 0
    assert after["finechat_active_conversations{}"] == 0
    assert metrics_for(service) is metrics_for(service)  # one registry per service


async def test_turn_log_has_no_tokens_and_no_text_by_default(service: ChatService) -> None:
    register_secret(BOT_TOKEN)
    out = io.StringIO()
    handler = setup_logging("info", "json", stream=out)
    service.observers.append(TurnLogger(LoggingConfig()))
    secret_text = "my bank password is hunter2"
    try:
        await service.ask("telegram:42:42", secret_text)
        with pytest.raises(InvalidInput):
            await service.ask("telegram:42:42", "   ")
        # what HTTP client libraries log for Telegram calls (the token is in the URL path)
        logging.getLogger("httpx").warning(
            "HTTP Request: POST https://api.telegram.org/bot%s/sendMessage", BOT_TOKEN
        )
        try:
            raise RuntimeError(f"login failed for token {BOT_TOKEN}")
        except RuntimeError:
            logging.getLogger("bots").exception("start failed")
    finally:
        logging.getLogger().removeHandler(handler)
        service.observers.pop()
    text = out.getvalue()
    assert BOT_TOKEN not in text and BOT_TOKEN.split(":")[1] not in text
    assert "hunter2" not in text and "bank password" not in text
    turns = [json.loads(line) for line in text.splitlines() if '"event": "turn"' in line]
    assert [t["outcome"] for t in turns] == ["stop", "invalid"] or turns[0]["outcome"] == "length"
    first = turns[0]
    assert first["platform"] == "telegram" and "42" not in first["conv"]
    assert first["completion_tokens"] > 0 and first["ttft_s"] > 0 and first["wall_s"] > 0


async def test_turn_log_content_only_when_enabled(service: ChatService) -> None:
    out = io.StringIO()
    handler = setup_logging("info", "text", stream=out)
    service.observers.append(TurnLogger(LoggingConfig(content=True, key_salt="s3")))
    try:
        await service.ask("web:alice", "Tell me about owls.")
    finally:
        logging.getLogger().removeHandler(handler)
        service.observers.pop()
    line = next(x for x in out.getvalue().splitlines() if "finechat.turn" in x)
    assert 'user_text="Tell me about owls."' in line and "platform=web" in line
    assert "web:alice" not in line


async def _fill(store: MemoryStore, key: str, words: str) -> None:
    turn = await store.add_message(key, "user", f"{words} question", tokens=3)
    await store.add_message(
        key, "assistant", f"{words} answer", tokens=3, parent_id=turn.id, latency=0.5
    )


def _file_bytes(path: Path) -> bytes:
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def _rows(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, args).fetchall()


async def test_forget_removes_one_users_data_and_nothing_else(
    service: ChatService, tmp_path: Path
) -> None:
    store = service.store
    path = Path(store.path)
    await _fill(store, "telegram:1:100", "zebracorn")
    await store.reset("telegram:1:100")
    await _fill(store, "telegram:1:100", "zebracorn-two")
    await service.set_persona("telegram:1:100", "You are a pirate.")
    await store.add_vote(Vote("telegram:1:100", "zebracorn vote", "a", "b", "a"))
    await _fill(store, "telegram:1:200", "keepme")
    await service.set_persona("telegram:1:200", "You are a poet.")
    await store.add_vote(Vote("telegram:1:200", "keep vote", "a", "b", "b"))

    assert await service.forget("telegram:1:100") == 4
    assert await store.all_messages("telegram:1:100") == []
    assert _rows(path, "SELECT * FROM conversations WHERE key = ?", "telegram:1:100") == []
    assert _rows(path, "SELECT * FROM profiles WHERE key = ?", "telegram:1:100") == []
    assert _rows(path, "SELECT * FROM votes WHERE key = ?", "telegram:1:100") == []
    # the other user is untouched
    assert len(await store.all_messages("telegram:1:200")) == 2
    assert await service.get_persona("telegram:1:200") == "You are a poet."
    assert len(_rows(path, "SELECT * FROM votes WHERE key = ?", "telegram:1:200")) == 1
    # and the deleted words are gone from the file itself (secure_delete + WAL truncate)
    raw = _file_bytes(path)
    assert b"zebracorn" not in raw and b"keepme" in raw


async def test_forget_drops_the_engines_cached_state(service: ChatService) -> None:
    engine = service.engine
    if not hasattr(engine, "forget"):
        pytest.skip("this engine keeps no per-conversation state that forget could drop")
    key = "discord:7:7"

    def holds(key: str) -> bool:  # a warm slot or a saved state in RAM (core.llama_engine)
        slots = getattr(engine, "_slots", [])
        return key in getattr(engine, "store", ()) or any(s.owner == key for s in slots)

    await service.ask(key, "Remember the word marmalade.")
    assert holds(key)
    await service.forget(key)
    assert not holds(key)


async def _prune_fixture(path: Path) -> None:
    store = await MemoryStore.open(path)
    await _fill(store, "cli:old", "ancient")
    await store.set_persona("cli:old", "old persona")
    await _fill(store, "cli:new", "fresh")
    await store.aclose()


def test_prune_deletes_only_old_conversations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "prune.sqlite"
    asyncio.run(_prune_fixture(path))
    long_ago = time.time() - 100 * 86400
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE messages SET created_at = ? WHERE conversation_id IN"
            " (SELECT id FROM conversations WHERE key = 'cli:old')",
            (long_ago,),
        )
        db.execute("UPDATE conversations SET created_at = ? WHERE key = 'cli:old'", (long_ago,))
        db.execute("UPDATE profiles SET updated_at = ? WHERE key = 'cli:old'", (long_ago,))
    assert cli_main(["prune", "--older-than", "90d", "--db", str(path)]) == 0
    assert "deleted 1 conversations (2 messages), 1 personas" in capsys.readouterr().out
    assert _rows(path, "SELECT key FROM conversations") == [("cli:new",)]
    assert len(_rows(path, "SELECT * FROM messages")) == 2
    # The persona of a pruned user goes with them (issue 13, item 9).
    assert _rows(path, "SELECT persona FROM profiles WHERE key = 'cli:old'") == []
    # bad input: a clear error, nothing deleted
    assert cli_main(["prune", "--older-than", "soon", "--db", str(path)]) == 1
    assert "not a duration" in capsys.readouterr().err
    assert len(_rows(path, "SELECT * FROM messages")) == 2


async def _stats_fixture(path: Path) -> None:
    store = await MemoryStore.open(path)
    await _fill(store, "telegram:1:1", "a")
    await _fill(store, "telegram:1:2", "b")
    await _fill(store, "discord:5:5", "c")
    await store.aclose()


def test_stats_and_forget_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stats.sqlite"
    asyncio.run(_stats_fixture(path))
    assert cli_main(["stats", "--db", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    by = {p["platform"]: p for p in stats["platforms"]}
    assert by["telegram"]["users"] == 2 and by["telegram"]["turns"] == 2
    assert by["telegram"]["tokens"] == 12 and by["discord"]["replies"] == 1
    assert stats["slowest"][0]["latency"] == 0.5
    assert cli_main(["stats", "--db", str(path)]) == 0
    assert "telegram" in capsys.readouterr().out
    assert cli_main(["forget", "--user", "telegram:1:1", "--db", str(path)]) == 0
    assert "deleted 2 messages" in capsys.readouterr().out
    assert _rows(path, "SELECT DISTINCT key FROM conversations ORDER BY key") == [
        ("discord:5:5",),
        ("telegram:1:2",),
    ]


def test_durations() -> None:
    assert parse_duration("90d") == 90 * 86400
    assert parse_duration("12h") == 43200 and parse_duration("2w") == 14 * 86400
    assert parse_duration("7") == 7 * 86400
    for bad in ("", "-3d", "0d", "3 days", "d"):
        with pytest.raises(InvalidInput):
            parse_duration(bad)


async def test_a_consumer_that_stops_early_frees_the_conversation(service: ChatService) -> None:
    records: list[TurnRecord] = []

    class Collect:
        def on_turn(self, record: TurnRecord) -> None:
            records.append(record)

    service.observers.append(Collect())
    key = "web:leaver"
    gen = service.reply(key, "Count from one to fifty in words.")
    async for event in gen:
        if isinstance(event, Delta):
            break
    await gen.aclose()
    assert not service.busy(key)  # a new message is accepted right away
    assert [r.outcome for r in records] == ["abandoned"]
    assert (await service.ask(key, "hi")).text
    assert [r.outcome for r in records][-1] in {"stop", "length"}
