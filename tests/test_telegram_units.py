"""Fast tests of the Telegram bot's pure parts: formatting, rules, pacing, config, redaction."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import pytest

from bots.chat.incoming import ReplyTo, command_argument, quote_into_prompt
from bots.chat.live import min_growth
from bots.chat.pacer import Pacer, Pacers
from bots.chat.texts import Refusal
from bots.telegram import redact as telegram_redact
from bots.telegram.chunks import telegram_chunks_async as chunks
from bots.telegram.chunks import utf16_len
from bots.telegram.format import escape, markdown_to_html
from bots.telegram.frontend import check_settings, create
from bots.telegram.rules import (
    AccessPolicy,
    Entity,
    Facts,
    api_url,
    conversation_key,
    incoming,
    is_addressed,
    scope_of,
    strip_mentions,
)
from core.config import Config, Secret, TelegramConfig, load_config
from core.errors import ConfigError
from tests.fakes.telegram_api import EntityError, visible_text

# -- Markdown → Telegram HTML ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("plain <b> & stuff", "plain &lt;b&gt; &amp; stuff"),
        ("**bold** and *it* and _it_", "<b>bold</b> and <i>it</i> and <i>it</i>"),
        ("snake_case_name and 2*3*4", "snake_case_name and 2*3*4"),
        ("use `a<b>` here", "use <code>a&lt;b&gt;</code> here"),
        ("~~gone~~", "<s>gone</s>"),
        ("# Title", "<b>Title</b>"),
        ("- one\n* two", "- one\n• two"),  # "-" is not markup: it stays (issue 12)
        ("> quoted\n> more\nafter", "<blockquote>quoted\nmore</blockquote>\nafter"),
        (
            "[docs](https://example.com/a_b*c*?x=1&y=2)",
            '<a href="https://example.com/a_b*c*?x=1&amp;y=2">docs</a>',
        ),
        ("[js](javascript:alert(1))", "[js](javascript:alert(1))"),
        (
            "```python\nif a < b:\n    print('**x**')\n```",
            "<pre><code class=\"language-python\">if a &lt; b:\n    print('**x**')</code></pre>",
        ),
        ("```\nunclosed <code>", "<pre><code>unclosed &lt;code&gt;</code></pre>"),
        ("**a *b** c*", "<b>a *b</b> c*"),
    ],
)
def test_markdown_to_html(markdown: str, html: str) -> None:
    assert markdown_to_html(markdown) == html
    visible_text(html)  # and Telegram would accept it


def test_rendering_is_always_accepted_and_never_longer() -> None:
    """Random model-ish Markdown: Telegram's parser accepts it; the visible text never grows."""
    pieces = ["**", "*", "_", "__", "~~", "`", "```", "```py\n", "<", ">", "&", "&amp;", "# ",
              "> ", "- ", "[x](https://e.com/a_b)", "[y](", ")", "\n", "\n\n", " ", "word",
              "<|im_end|>", "snake_case", "😀", "\\"]  # fmt: skip
    rng = random.Random(4)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        html = markdown_to_html(text)
        try:
            shown = visible_text(html)
        except EntityError as exc:  # pragma: no cover - the assertion message is the point
            pytest.fail(f"rejected {text!r} → {html!r}: {exc}")
        assert len(shown) <= len(text) + 1, (text, html)


def test_escape() -> None:
    assert escape('<a href="x">&</a>') == '&lt;a href="x"&gt;&amp;&lt;/a&gt;'


async def test_chunks_fit_after_rendering() -> None:
    text = ("**Word** " * 300 + "\n\n") * 3 + "```\n" + "x = 1\n" * 400 + "```"
    for chunk in await chunks(text):
        assert utf16_len(visible_text(markdown_to_html(chunk)) + " ▌") <= 4096


async def test_chunks_respect_utf16_length() -> None:
    text = ("😀 emoji everywhere. " * 400).strip()  # 8,000 chars, 8,800 UTF-16 units
    parts = await chunks(text)
    assert all(utf16_len(c + " ▌") <= 4096 for c in parts)
    assert " ".join(parts).split() == text.split()


# -- rules -----------------------------------------------------------------------------------


def msg(text: str, *, chat_type: str = "supergroup", **kw: object) -> Facts:
    entities = []
    at = text.find("@finechat_bot")
    if at >= 0:
        entities.append(Entity("mention", at, len("@finechat_bot")))
    defaults: dict[str, object] = {
        "chat_id": -5,
        "chat_type": chat_type,
        "user_id": 1,
        "user_is_bot": False,
        "message_id": 9,
        "text": text,
        "entities": tuple(entities),
    }
    defaults.update(kw)
    return Facts(**defaults)  # type: ignore[arg-type]


def test_when_the_bot_is_addressed() -> None:
    assert is_addressed(msg("hi", chat_type="private"), "finechat_bot", 77)
    assert not is_addressed(msg("hi all"), "finechat_bot", 77)
    assert is_addressed(msg("hey @finechat_bot, 2+2?"), "finechat_bot", 77)
    reply = ReplyTo("3", from_self=True, author="Finechat", text="4")
    assert is_addressed(msg("why?", reply_to=reply), "finechat_bot", 77)
    other = ReplyTo("3", from_self=False, author="Bob", text="lunch?")
    assert not is_addressed(msg("yes", reply_to=other), "finechat_bot", 77)
    assert is_addressed(
        msg("hi", entities=(Entity("text_mention", 0, 2, user_id=77),)), "finechat_bot", 77
    )


def test_strip_mentions_and_commands() -> None:
    assert strip_mentions("@finechat_bot what is 2+2?", "finechat_bot") == "what is 2+2?"
    assert strip_mentions("ask @FINECHAT_BOT now", "finechat_bot") == "ask now"
    assert strip_mentions("@finechat_bot, hi\nthere", "finechat_bot") == "hi\nthere"
    assert strip_mentions("@finechat_bots are fun", "finechat_bot") == "@finechat_bots are fun"
    assert command_argument("/persona@finechat_bot You are\nterse.") == "You are\nterse."
    assert command_argument("/persona") == ""
    assert conversation_key(-100, 7) == "telegram:-100:7"


def test_forum_topics_have_their_own_key_and_share_the_chat_pacer() -> None:
    """General topic and ordinary supergroups keep today's key; forum topics add theirs."""
    assert conversation_key(-100, 7, None) == "telegram:-100:7"
    assert conversation_key(-100, 7, 42) == "telegram:-100/42:7"
    in_topic = msg("@finechat_bot hi", topic_id=42, chat_id=-100, user_id=7)
    plain = msg("@finechat_bot hi", chat_id=-100, user_id=7)
    a = incoming(in_topic, AccessPolicy(), "finechat_bot", 77)
    b = incoming(plain, AccessPolicy(), "finechat_bot", 77)
    assert a.key == "telegram:-100/42:7" and b.key == "telegram:-100:7"
    assert a.scope == b.scope == scope_of(-100)
    assert a.addressed and a.text == "hi"


def test_bots_and_unaddressed_group_messages_are_ignored() -> None:
    assert not incoming(msg("hi all"), AccessPolicy(), "finechat_bot", 77).addressed
    bot = msg("@finechat_bot hi", user_is_bot=True)
    assert not incoming(bot, AccessPolicy(), "finechat_bot", 77).addressed
    assert incoming(msg("hi", chat_type="private"), AccessPolicy(), "finechat_bot", 77).addressed


def test_quote_into_prompt() -> None:
    reply = ReplyTo("1", from_self=False, author="Alice", text="line one\nline two")
    assert quote_into_prompt("what?", reply) == "Alice wrote:\n> line one\n> line two\n\nwhat?"
    assert quote_into_prompt("what?", None) == "what?"
    long = ReplyTo("1", from_self=False, author="A", text="x" * 5000)
    assert len(quote_into_prompt("q", long)) < 1100


@pytest.mark.parametrize(
    ("policy", "chat", "chat_type", "user", "expected"),
    [
        (AccessPolicy(), 5, "private", 5, None),
        (AccessPolicy(allow_private=False), 5, "private", 5, Refusal.PRIVATE_DISABLED),
        (AccessPolicy(allowed_user_ids=frozenset({1})), 2, "private", 2, Refusal.USER_NOT_ALLOWED),
        (AccessPolicy(allowed_user_ids=frozenset({1})), -9, "group", 1, None),
        (AccessPolicy(allowed_chat_ids=frozenset({-9})), -8, "group", 1, Refusal.CHAT_NOT_ALLOWED),
        (AccessPolicy(allowed_chat_ids=frozenset({-9})), 1, "private", 1, None),
        (
            AccessPolicy(allowed_user_ids=frozenset({1}), admin_ids=frozenset({3})),
            -8,
            "group",
            3,
            None,
        ),
        (
            AccessPolicy(allow_private=False, admin_ids=frozenset({3})),
            3,
            "private",
            3,
            None,
        ),
    ],
)
def test_access(
    policy: AccessPolicy, chat: int, chat_type: str, user: int, expected: Refusal | None
) -> None:
    assert policy.refusal(chat, chat_type, user) is expected


# -- pacing ----------------------------------------------------------------------------------


def test_edit_steps_grow_and_are_stricter_in_groups() -> None:
    steps = [min_growth(n, group=False) for n in (0, 500, 2000, 4000)]
    assert steps == sorted(steps) and steps[0] < steps[-1]
    assert min_growth(100, group=True) > min_growth(100, group=False)


def test_pacers_are_per_chat_and_bounded() -> None:
    pacers = Pacers(1.0, 3.0, max_chats=2)
    private, group = pacers.get("telegram:1", group=False), pacers.get("telegram:-5", group=True)
    assert private.interval == 1.0 and group.interval == 3.0
    assert pacers.get("telegram:1", group=False) is private
    pacers.get("telegram:2", group=False)  # evicts the least recently used (-5)
    assert pacers.get("telegram:-5", group=True) is not group


async def test_pacer_spaces_calls_and_holds_for_retry_after() -> None:
    pacer = Pacer(0.2)
    start = time.monotonic()
    await pacer.turn()
    await pacer.turn()
    assert time.monotonic() - start >= 0.2 - 0.01
    pacer.hold(0.3)
    held = time.monotonic()
    await pacer.turn(urgent=True)  # urgent skips spacing, never a flood hold
    assert time.monotonic() - held >= 0.3 - 0.01
    fresh = Pacer(5.0)
    quick = time.monotonic()
    await fresh.turn()
    await fresh.turn(urgent=True)
    assert time.monotonic() - quick < 0.5


# -- configuration and start-up --------------------------------------------------------------


def test_api_url_forms() -> None:
    assert api_url("https://api.telegram.org") == "https://api.telegram.org/bot"
    assert api_url("http://127.0.0.1:8081/") == "http://127.0.0.1:8081/bot"
    assert api_url("http://127.0.0.1:8081/bot") == "http://127.0.0.1:8081/bot"
    assert api_url("http://h/bot", "file") == "http://h/file/bot"
    assert api_url("http://h/bot{token}/test") == "http://h/bot{token}/test"


def test_config_keys_from_toml_and_env(tmp_path: object) -> None:
    env = {
        "TELEGRAM_BOT_TOKEN": "42:abc",
        "FINECHAT_TELEGRAM__BASE_URL": "http://127.0.0.1:9/",
        "FINECHAT_TELEGRAM__ALLOWED_USER_IDS": "1, 2",
        "FINECHAT_TELEGRAM__ADMIN_IDS": "3",
        "FINECHAT_TELEGRAM__ALLOW_PRIVATE": "false",
    }
    cfg = load_config(env=env).telegram
    assert cfg.token.reveal() == "42:abc"
    assert cfg.base_url == "http://127.0.0.1:9/"
    assert cfg.allowed_user_ids == [1, 2] and cfg.admin_ids == [3]
    assert cfg.allow_private is False
    assert "42:abc" not in repr(cfg)
    with pytest.raises(ConfigError, match="telegram.allowed_chat_ids"):
        load_config(env={"FINECHAT_TELEGRAM__ALLOWED_CHAT_IDS": "x"})


def test_factory_needs_a_token_and_checks_settings() -> None:
    assert create(Config(), service=None) is None  # type: ignore[arg-type]
    disabled = TelegramConfig(enabled=False, token=Secret("1:x"))
    assert create(Config(telegram=disabled), service=None) is None  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="telegram.edit_interval"):
        check_settings(TelegramConfig(token=Secret("1:x"), edit_interval=0))
    with pytest.raises(ConfigError, match="telegram.base_url"):
        check_settings(TelegramConfig(token=Secret("1:x"), base_url="ftp://x"))


def test_token_is_scrubbed_from_every_log_record(caplog: pytest.LogCaptureFixture) -> None:
    secret = "987:SECRET-abc"
    telegram_redact.register(secret)
    try:
        log = logging.getLogger("httpx.somewhere.new")
        with caplog.at_level(logging.INFO):
            log.info("HTTP Request: POST https://api.telegram.org/bot%s/getMe", secret)
            try:
                raise ValueError(f"bad url https://x/bot{secret}/sendMessage")
            except ValueError:
                log.exception("failed")
        assert secret not in caplog.text
        assert "/bot<telegram-token>/getMe" in caplog.text
        assert telegram_redact.scrub(f"a {secret} b") == "a <telegram-token> b"
    finally:
        telegram_redact.unregister(secret)
    assert telegram_redact.scrub(secret) == secret


async def test_pacer_is_fifo_under_contention() -> None:
    pacer = Pacer(0.05)
    order: list[int] = []

    async def take(i: int) -> None:
        await pacer.turn()
        order.append(i)

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(take(i)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
