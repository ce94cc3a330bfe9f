"""The Discord adapter's pure parts: access rules, triggers, routing, pacing, config, factory."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from bots.chat.pacer import Pacer
from bots.chat.texts import Refusal
from bots.discord.routing import resolve_routing
from bots.discord.rules import (
    AccessPolicy,
    Facts,
    Where,
    conversation_key,
    prompt_text,
    should_answer,
    thread_name,
)
from core.config import Config, DiscordConfig, Secret, load_config
from core.errors import ConfigError

BOT = 900


def msg(**kw: object) -> Facts:
    base: dict[str, object] = {"author_id": 5, "author_is_bot": False}
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def test_triggers() -> None:
    assert not should_answer(msg(), bot_id=BOT)
    assert should_answer(msg(mentions_bot=True), bot_id=BOT)
    assert should_answer(msg(replies_to_bot=True), bot_id=BOT)
    assert should_answer(msg(is_dm=True), bot_id=BOT)
    assert should_answer(msg(is_thread=True, bot_in_thread=True), bot_id=BOT)
    assert not should_answer(msg(is_thread=True, bot_in_thread=False), bot_id=BOT)
    assert not should_answer(msg(mentions_bot=True, author_is_bot=True), bot_id=BOT)
    assert not should_answer(msg(is_dm=True, author_id=BOT), bot_id=BOT)


def test_key_and_text() -> None:
    assert conversation_key(20, 5) == "discord:20:5"
    assert prompt_text(f"<@{BOT}> hello <@!{BOT}>there", bot_id=BOT) == "hello there"
    assert prompt_text("<@123> hi", bot_id=BOT) == "<@123> hi"
    assert thread_name("  a  b\nsecond line") == "a b"
    assert len(thread_name("x" * 300)) == 80
    assert thread_name("\n") == "Conversation"


def test_access_open_by_default() -> None:
    policy = AccessPolicy()
    assert policy.refusal(Where(1, channel_ids=(20,))) is None
    assert policy.refusal(Where(1, is_dm=True)) is None


def test_access_lists_and_inheritance() -> None:
    policy = AccessPolicy(
        allowed_roles=frozenset({30}),
        blocked_users=frozenset({7}),
        allowed_channels=frozenset({19}),  # a category
        blocked_channels=frozenset({21}),
        admin_ids=frozenset({99}),
        allow_dms=False,
    )
    thread_in_category = (555, 20, 19)
    assert policy.refusal(Where(1, frozenset({30}), thread_in_category)) is None
    assert policy.refusal(Where(1, frozenset(), thread_in_category)) is not None  # no role
    assert policy.refusal(Where(7, frozenset({30}), thread_in_category)) is not None  # blocked
    assert policy.refusal(Where(1, frozenset({30}), (22, 18))) is Refusal.CHAT_NOT_ALLOWED
    assert policy.refusal(Where(1, frozenset({30}), (21, 19))) is not None  # blocked channel
    assert policy.refusal(Where(1, is_dm=True)) is Refusal.PRIVATE_DISABLED
    assert policy.refusal(Where(99, is_dm=True)) is None  # admins everywhere
    assert policy.refusal(Where(99, channel_ids=(21,))) is None
    assert policy.is_admin(99) and not policy.is_admin(1)


def test_access_in_dms_uses_user_lists_only() -> None:
    policy = AccessPolicy(allowed_users=frozenset({1}), allowed_roles=frozenset({30}))
    assert policy.refusal(Where(1, is_dm=True)) is None
    assert policy.refusal(Where(2, is_dm=True)) is not None


def test_routing_normalises_urls() -> None:
    r = resolve_routing("http://127.0.0.1:8000", "ws://127.0.0.1:8000/gw")
    assert r.api_base == "http://127.0.0.1:8000/api/v10"
    assert resolve_routing("https://proxy.example/api/v10/", "").api_base == (
        "https://proxy.example/api/v10"
    )
    assert resolve_routing("", "").gateway == "wss://gateway.discord.gg/"


async def test_pacers_space_writes_per_channel() -> None:
    from bots.chat.pacer import Pacers

    pacers = Pacers(0.2, 0.2)
    stamps: dict[str, list[float]] = {"a": [], "b": []}

    async def write(channel: str) -> None:
        await pacers.get(channel, group=True).turn()
        stamps[channel].append(time.monotonic())

    await asyncio.gather(*(write(c) for c in ("a", "a", "a", "b", "b")))
    for times in stamps.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= 0.19 for g in gaps), gaps
    assert isinstance(pacers.get("a", group=True), Pacer)


def test_config_lists_from_toml_and_env(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "f.toml"
    path.write_text(
        '[discord]\nallowed_users = [1, 2]\napi_base_url = "http://127.0.0.1:9/api/v10"\n'
        'gateway_url = "ws://127.0.0.1:9/"\nauto_thread = true\n',
        encoding="utf-8",
    )
    cfg = load_config(
        path, env={"FINECHAT_DISCORD__ADMIN_IDS": "5, 6", "DISCORD_BOT_TOKEN": "tok-xyz"}
    )
    assert cfg.discord.allowed_users == (1, 2)
    assert cfg.discord.admin_ids == (5, 6)
    assert cfg.discord.auto_thread and cfg.discord.token.reveal() == "tok-xyz"
    assert "tok-xyz" not in repr(cfg.discord.token)
    with pytest.raises(ConfigError, match="discord.allowed_users"):
        load_config(None, env={"FINECHAT_DISCORD__ALLOWED_USERS": "x"})
    with pytest.raises(ConfigError, match="discord.api_base_url"):
        load_config(None, env={"FINECHAT_DISCORD__API_BASE_URL": "discord.com"})
    with pytest.raises(ConfigError, match="discord.reply_timeout"):
        load_config(None, env={"FINECHAT_DISCORD__REPLY_TIMEOUT": "0"})
    assert load_config(None, env={}).discord.reply_timeout == 600.0
    with pytest.raises(ConfigError, match="tokens are not read"):
        bad = Path(str(tmp_path)) / "bad.toml"
        bad.write_text('[discord]\ntoken = "x"\n', encoding="utf-8")
        load_config(bad, env={})


def test_factory_needs_token_and_enabled() -> None:
    from dataclasses import replace

    from bots.discord_frontend import create

    service = object()
    assert create(Config(), service) is None  # type: ignore[arg-type]
    token = replace(DiscordConfig(), token=Secret("abc"))
    assert create(replace(Config(), discord=replace(token, enabled=False)), service) is None  # type: ignore[arg-type]
    frontend = create(replace(Config(), discord=token), service)  # type: ignore[arg-type]
    assert frontend is not None and frontend.name == "discord"
