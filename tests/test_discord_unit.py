"""The Discord adapter's pure parts: access rules, triggers, routing, pacing, config, factory."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from bots.discord_access import AccessPolicy, Place
from bots.discord_events import Incoming, conversation_key, prompt_text, should_answer, thread_name
from bots.discord_routing import resolve_routing
from bots.discord_stream import EditPacer
from core.config import Config, DiscordConfig, Secret, load_config
from core.errors import ConfigError

BOT = 900


def msg(**kw: object) -> Incoming:
    base: dict[str, object] = {
        "message_id": 1,
        "author_id": 5,
        "author_is_bot": False,
        "content": "hi",
        "channel_id": 20,
        "guild_id": 10,
    }
    base.update(kw)
    return Incoming(**base)  # type: ignore[arg-type]


def test_triggers() -> None:
    assert not should_answer(msg(), bot_id=BOT)
    assert should_answer(msg(mentions_bot=True), bot_id=BOT)
    assert should_answer(msg(reply_to_bot_message_id=77), bot_id=BOT)
    assert should_answer(msg(is_dm=True, guild_id=None), bot_id=BOT)
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
    assert policy.refusal(Place(1, channel_ids=(20,))) is None
    assert policy.refusal(Place(1, is_dm=True)) is None


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
    assert policy.refusal(Place(1, frozenset({30}), thread_in_category)) is None
    assert policy.refusal(Place(1, frozenset(), thread_in_category)) is not None  # no role
    assert policy.refusal(Place(7, frozenset({30}), thread_in_category)) is not None  # blocked
    assert "channel" in (policy.refusal(Place(1, frozenset({30}), (22, 18))) or "")
    assert policy.refusal(Place(1, frozenset({30}), (21, 19))) is not None  # blocked channel
    assert "direct messages" in (policy.refusal(Place(1, is_dm=True)) or "")
    assert policy.refusal(Place(99, is_dm=True)) is None  # admins everywhere
    assert policy.refusal(Place(99, channel_ids=(21,))) is None
    assert policy.is_admin(99) and not policy.is_admin(1)


def test_access_in_dms_uses_user_lists_only() -> None:
    policy = AccessPolicy(allowed_users=frozenset({1}), allowed_roles=frozenset({30}))
    assert policy.refusal(Place(1, is_dm=True)) is None
    assert policy.refusal(Place(2, is_dm=True)) is not None


def test_routing_normalises_urls() -> None:
    r = resolve_routing("http://127.0.0.1:8000", "ws://127.0.0.1:8000/gw")
    assert r.api_base == "http://127.0.0.1:8000/api/v10"
    assert resolve_routing("https://proxy.example/api/v10/", "").api_base == (
        "https://proxy.example/api/v10"
    )
    assert resolve_routing("", "").gateway == "wss://gateway.discord.gg/"


async def test_edit_pacer_spaces_edits_per_channel() -> None:
    pacer = EditPacer(0.2)
    stamps: dict[int, list[float]] = {1: [], 2: []}

    async def edit(channel: int) -> None:
        async with pacer.slot(channel):
            stamps[channel].append(time.monotonic())

    await asyncio.gather(*(edit(c) for c in (1, 1, 1, 2, 2)))
    for times in stamps.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= 0.19 for g in gaps), gaps
    # Different channels do not wait for each other.
    assert abs(stamps[1][0] - stamps[2][0]) < 0.1


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
