"""Per-person limits (issue 13, item 3): through the service, Telegram and the web chat.

A scripted engine answers (the model does not matter here; it counts words as tokens), the
memory is real SQLite, Telegram is the real python-telegram-bot client against the fake Bot
API, the web chat is the real app driven with gradio_client.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from core.admin import cmd_stats
from core.cli import build_parser
from core.config import (
    ChatConfig,
    Config,
    DatabaseConfig,
    GenerationConfig,
    LimitsConfig,
    TelegramConfig,
    WebConfig,
)
from core.errors import LimitExceeded
from core.memory import MemoryStore
from core.runtime import admin_people
from core.service import ChatService
from tests.fakes.scripted_engine import ScriptedEngine
from tests.harness.driver import ADA, ALICE, GROUP, ChatDriver
from tests.harness.fixtures import chat
from tests.web_support import serve_web

__all__ = ["chat"]

ANSWER = "one two three four five six seven eight"  # 8 tokens


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(
    store: MemoryStore, limits: LimitsConfig, **kw: Any
) -> tuple[ChatService, ScriptedEngine, Clock]:
    engine = ScriptedEngine(ANSWER)
    service = ChatService(
        engine,
        store,
        chat=ChatConfig(system_prompt="Be brief."),
        generation=GenerationConfig(max_tokens=64),
        limits=limits,
        **kw,
    )
    clock = Clock()
    assert service.limiter is not None
    service.limiter.clock = clock
    return service, engine, clock


async def test_replies_per_minute_across_chats_retry_included_and_persisted(tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite"
    store = await MemoryStore.open(db)
    service, engine, clock = make(store, LimitsConfig(replies_per_minute=3))
    # One Telegram user in two chats is one person; a retry is a reply too.
    await service.ask("telegram:-100:42", "first")
    await service.ask("telegram:42:42", "second")
    async for _ in service.retry("telegram:42:42"):
        pass
    before = await service.history("telegram:42:42")
    n_generated = len(engine.requests)
    with pytest.raises(LimitExceeded) as refused:
        await service.ask("telegram:42:42", "fourth")
    text = str(refused.value)
    assert "limit" in text and "resets in" in text
    assert 0 < refused.value.retry_after <= 60
    assert await service.history("telegram:42:42") == before  # not stored
    assert len(engine.requests) == n_generated  # nothing generated
    # Someone else is not affected; another platform's user 42 is someone else.
    assert (await service.ask("telegram:42:7", "hello")).text == ANSWER
    assert (await service.ask("discord:1:42", "hello")).text == ANSWER
    stats = await service.stats("telegram:42:42")
    assert stats["usage"]["replies_last_minute"] == 3
    assert "3/3 replies" in stats["usage_line"]
    await store.aclose()

    # A restart does not reset the count...
    store = await MemoryStore.open(db)
    service, engine, clock = make(store, LimitsConfig(replies_per_minute=3))
    clock.now += 30
    with pytest.raises(LimitExceeded):
        await service.ask("telegram:42:42", "after a restart")
    # ...the minute passing does.
    clock.now += 31
    assert (await service.ask("telegram:42:42", "later")).text == ANSWER
    await store.aclose()


async def test_token_quota_finishes_the_crossing_reply_then_refuses(tmp_path: Path) -> None:
    store = await MemoryStore.open(tmp_path / "m.sqlite")
    service, _, clock = make(store, LimitsConfig(replies_per_minute=0, tokens_per_day=10))
    key = "web:ada"
    assert (await service.ask(key, "one")).completion_tokens == 8
    crossing = await service.ask(key, "two")  # 16 > 10: this one still finishes
    assert crossing.text == ANSWER and crossing.finish_reason == "stop"
    with pytest.raises(LimitExceeded) as refused:
        await service.ask(key, "three")
    assert "daily limit of 10 tokens" in str(refused.value)
    assert "resets in 24 h" in str(refused.value)
    clock.now += 86400 - 100  # both replies still inside the rolling day
    with pytest.raises(LimitExceeded):
        await service.ask(key, "four")
    clock.now += 101  # the first reply ages out: 8 tokens left in the window
    assert (await service.ask(key, "five")).text == ANSWER
    await store.aclose()


async def test_admins_are_exempt_and_refusals_never_reach_the_engine(tmp_path: Path) -> None:
    store = await MemoryStore.open(tmp_path / "m.sqlite")
    config = Config(telegram=TelegramConfig(admin_ids=[7]))
    service, _, _ = make(
        store, LimitsConfig(replies_per_minute=1), exempt_people=admin_people(config)
    )
    for _ in range(3):
        await service.ask("telegram:7:7", "admin")  # from the config's admin list
        await service.ask("cli:me", "flagged", exempt=True)  # or the adapter's flag
        await service.ask("web:x", "as a person", person="web:addr:198.51.100.2", exempt=True)
    await service.ask("web:y", "one", person="web:addr:198.51.100.3")
    with pytest.raises(LimitExceeded):
        await service.ask("web:z", "two", person="web:addr:198.51.100.3")
    # Persona and settings changes are limited too (settings_per_minute).
    service2, _, _ = make(store, LimitsConfig(settings_per_minute=2))
    await service2.set_persona("web:p", "A pirate.")
    await service2.update_settings("web:p", {"temperature": 0.5})
    with pytest.raises(LimitExceeded, match="limit"):
        await service2.set_persona("web:p", "A poet.")
    assert await service2.get_persona("web:p") == "A pirate."
    await store.aclose()


# -- the bots (both platforms, through the scenario harness) --------------------------------


@pytest.mark.bot_settings(replies_per_minute=2)
async def test_a_person_over_the_limit_gets_a_short_answer_on_either_bot(
    chat: ChatDriver,
) -> None:
    """Reproduction: nothing limited how much one person asked for across chats."""
    assert (await chat.say(ALICE, "say: one")).text == "one"
    assert (await chat.say(ALICE, "say: two", GROUP)).text == "two"  # another chat, same person
    generated = chat.engine.submitted
    refusal = await chat.say(ALICE, "say: three")
    assert "limit" in refusal.text and "resets in" in refusal.text
    assert chat.engine.submitted == generated  # nothing was generated for it
    history = await chat.service.history(chat.key(ALICE))
    assert [t.text for t in history][-1] == "one"  # and it was not stored
    stats = await chat.command(ALICE, "stats")
    assert "2/2 replies in the last minute" in stats.text
    for n in range(3):  # admins are exempt
        assert (await chat.say(ADA, f"say: admin {n}")).text == f"admin {n}"
    # Internal errors never reach the chat (item 11).
    apology = await chat.say(ADA, "fail")
    assert "/secret" not in apology.text and "scripted failure" not in apology.text


# -- the web chat, /stats, /metrics and finechat stats -----------------------------------------


@pytest.mark.slow
async def test_web_visitors_are_limited_per_address_and_counters_show_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = ScriptedEngine(ANSWER)
    db = tmp_path / "web.sqlite"
    web = WebConfig(port=0, trusted_proxies=("127.0.0.1",))
    limits = LimitsConfig(replies_per_minute=2, settings_per_minute=2)
    async with serve_web(engine, db, web, limits=limits) as served:

        def client(address: str) -> Client:
            return Client(
                served.url,
                verbose=False,
                analytics_enabled=False,
                download_files=False,
                headers={"X-Forwarded-For": address},
            )

        def chat(c: Client, text: str, bid: str) -> Any:
            return c.predict(text, 0.0, 32, bid, api_name="/chat")

        one = await asyncio.to_thread(client, "198.51.100.10")
        # Two browsers (fresh anonymous ids) from one address are one visitor for the limit.
        await asyncio.to_thread(chat, one, "hi", "b1" * 11)
        await asyncio.to_thread(chat, one, "hi", "b2" * 11)
        with pytest.raises(AppError) as refused:
            await asyncio.to_thread(chat, one, "hi", "b3" * 11)
        assert "limit" in str(refused.value) and "resets in" in str(refused.value)
        assert await served.service.history("web:anon-" + "b3" * 11) == []
        other = await asyncio.to_thread(client, "198.51.100.11")
        chatbot, *_ = await asyncio.to_thread(chat, other, "hi", "b4" * 11)
        assert chatbot[-1]["content"]

        # The persona and settings endpoints are limited too.
        for _ in range(2):
            await asyncio.to_thread(other.predict, "A pirate.", "b4" * 11, api_name="/persona")
        with pytest.raises(AppError, match="limit"):
            await asyncio.to_thread(other.predict, 0.3, 32, "b4" * 11, api_name="/settings")

        async with httpx.AsyncClient() as http:
            metrics = (await http.get(served.url + "metrics")).text
        assert (
            'finechat_limit_refusals_total{limit="replies_per_minute",platform="web"} 1.0'
            in metrics
        )
        assert (
            'finechat_limit_refusals_total{limit="settings_per_minute",platform="web"} 1.0'
            in metrics
        )
        assert 'finechat_limit{limit="replies_per_minute"} 2.0' in metrics

    capsys.readouterr()
    config = Config(database=DatabaseConfig(path=str(db)), limits=limits)
    args = build_parser().parse_args(["stats", "--json"])
    assert await cmd_stats(config, args) == 0
    report = json.loads(capsys.readouterr().out)
    usage = {(u["platform"], u["kind"]): u for u in report["usage_24h"]}
    assert usage[("web", "reply")]["events"] == 3 and usage[("web", "reply")]["people"] == 2
    assert usage[("web", "refused")]["events"] == 2
    assert report["limits"]["replies_per_minute"] == 2
    args = build_parser().parse_args(["stats"])
    assert await cmd_stats(config, args) == 0
    assert "refused" in capsys.readouterr().out


def test_limits_config_keys() -> None:
    from core.config import load_config

    cfg = load_config(
        env={
            "FINECHAT_LIMITS__REPLIES_PER_MINUTE": "5",
            "FINECHAT_LIMITS__TOKENS_PER_DAY": "20000",
            "FINECHAT_API__MAX_BODY_BYTES": "2048",
            "FINECHAT_API__MAX_MESSAGES": "8",
            "FINECHAT_API__MAX_TOKENS": "300",
            "FINECHAT_WEB__TRUSTED_PROXIES": "10.0.0.0/8, ::1",
        }
    )
    assert cfg.limits == LimitsConfig(5, 20000, 30)
    assert (cfg.api.max_body_bytes, cfg.api.max_messages, cfg.api.max_tokens) == (2048, 8, 300)
    assert cfg.web.trusted_proxies == ("10.0.0.0/8", "::1")
    defaults = Config()
    assert defaults.limits.tokens_per_day == 0 and defaults.limits.replies_per_minute == 20
    assert defaults.api.max_body_bytes == 1_048_576 and defaults.api.max_messages == 64
    from core.errors import ConfigError

    for bad in (
        {"FINECHAT_LIMITS__TOKENS_PER_DAY": "-1"},
        {"FINECHAT_WEB__TRUSTED_PROXIES": "not-an-address"},
        {"FINECHAT_API__MAX_MESSAGES": "0"},
    ):
        with pytest.raises(ConfigError):
            load_config(env=bad)
