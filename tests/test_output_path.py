"""The output path is total: every function model output passes through terminates (linear in
its input) and never raises, on any string, and what it produces is what the platform accepts.

Property tests (hypothesis) over arbitrary Unicode — NUL, C0/C1 controls, lone surrogates,
astral emoji, ZWJ sequences, runs of `` ` ~ * _ ``, unterminated fences, lines longer than the
limit — and over 100 KB inputs built by repeating hostile fragments. Every call runs under a
generous termination guard (a worker thread given seconds: it catches a call that never ends,
it is not a speed test). Invariants:

* every chunk is within the platform limit (Telegram: UTF-16 units of the text after entity
  parsing by the fake Bot API's parser; Discord: characters of the content);
* every non-whitespace character of the answer other than Markdown markup reaches the chat,
  in order — link targets and code-block language labels count as reaching it;
* the output is valid UTF-8, and the Telegram HTML always parses (the fake rejects what
  Telegram rejects: unknown tags, misnesting, bare ``<``/``&``) and is never empty.

Then the exact reproductions from issue 12, deterministic.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bots.chat.split import MIN_LIMIT, close_open_fence, split_message
from bots.discord.chunks import discord_chunks
from bots.discord.mentions import ZWSP, neutralize_mentions
from bots.telegram.chunks import CHUNK_LIMIT, MESSAGE_LIMIT, render_answer, utf16_len
from bots.telegram.format import markdown_to_html
from core.textcheck import clean_model_text
from tests.fakes.telegram_api import _TelegramHTML, visible_text

T = TypeVar("T")

SMALL_SECONDS = 5.0
"""Termination guard for one call on a hypothesis-sized input (a few KB at most)."""
BIG_SECONDS = 30.0
"""Termination guard for one call on 100 KB (seconds of work at most, even on a busy machine)."""
BIG = 100_000
MARKUP = frozenset("`*_~#>|[]()")


def guarded(fn: Callable[..., T], *args: Any, seconds: float = SMALL_SECONDS, **kw: Any) -> T:
    """``fn(*args, **kw)``, failing the test if it does not return within ``seconds``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {seconds} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


class _Delivered(_TelegramHTML):
    """The fake Bot API's parser, also keeping link targets and code languages where they
    appear: they reach the reader (as the link, as the code block's label)."""

    def __init__(self) -> None:
        super().__init__()
        self._hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        super().handle_starttag(tag, attrs)
        values = dict(attrs)
        if tag == "a":
            self._hrefs.append(values.get("href") or "")
        cls = values.get("class") or ""
        if tag == "code" and cls.startswith("language-"):
            self.text.append(" " + cls.removeprefix("language-") + " ")

    def handle_endtag(self, tag: str) -> None:
        super().handle_endtag(tag)
        if tag == "a":
            self.text.append(" " + self._hrefs.pop() + " ")


def delivered(html: str) -> str:
    visible_text(html)  # raises like Telegram on anything it would refuse
    parser = _Delivered()
    parser.feed(html)
    parser.close()
    return "".join(parser.text)


def core(text: str) -> list[str]:
    """The characters that must reach the chat: no whitespace, no markup."""
    return [c for c in text if not c.isspace() and c not in MARKUP]


def is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(c == h for h in it) for c in needle)


def valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- strategies ------------------------------------------------------------------------------

FRAGMENTS = [
    "```",
    "```python\n",
    "\n```\n",
    "~~~",
    "~~~~ info\n",
    "````",
    "`",
    "``",
    "*",
    "**",
    "***",
    "_",
    "__",
    "~",
    "~~",
    "#",
    "## ",
    "> ",
    ">",
    "|",
    "| a | b |\n|---|---|\n",
    "[",
    "]",
    "(",
    ")",
    "[link](https://example.com/a_(b))",
    "](http://x",
    "* ",
    "- ",
    "\n",
    "\n\n",
    " ",
    "\t",
    ". ",
    "! ",
    "\\",
    "<",
    ">",
    "&",
    "&amp;",
    "<b>",
    "</i>",
    '"',
    "\x00",
    "\x009\x00",
    "\x01",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\x9f",
    "\r\n",
    "\r",
    "\ud800",
    "\udfff",
    "\ud83d",
    "\ude00",
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "e\u0301",
    "\u200d",
    "\ufe0f",
    "\U0010ffff",
    "\u2028",
    "\u00a0",
    "日本語",
    "word",
    "snake_case_name",
    "2*3*4",
    "@everyone",
    "@here",
    "<@123456789012345678>",
    "<@!42>",
    "<@&7>",
    "<#99>",
]

any_char = st.characters(exclude_categories=())  # surrogates and controls included
fragment = st.sampled_from(FRAGMENTS)
pieces = st.one_of(fragment, any_char, st.text(min_size=1, max_size=8), st.just("x" * 90))
hostile = st.lists(pieces, max_size=80).map("".join)
limits = st.integers(min_value=MIN_LIMIT, max_value=300)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG_PROPERTY = settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
QUIET_REPR = pytest.mark.filterwarnings("ignore:Generating overly large repr")
big_texts = st.tuples(st.lists(pieces, min_size=1, max_size=6).map("".join), st.integers(1, 3)).map(
    lambda t: (t[0] * (BIG // max(1, len(t[0])) + 1))[: BIG // t[1]]
)


# -- Telegram ----------------------------------------------------------------------------------


def check_telegram(text: str, limit: int, *, seconds: float = SMALL_SECONDS) -> None:
    chunks = guarded(render_answer, text, limit, seconds=seconds)
    seen: list[str] = []
    for chunk in chunks:
        assert valid_utf8(chunk.html) and valid_utf8(chunk.markdown)
        visible = visible_text(chunk.html)
        assert visible.strip(), "Telegram refuses an empty message"
        assert utf16_len(visible) <= limit
        assert utf16_len(chunk.markdown) <= limit  # the plain-text fallback fits too
        seen.extend(core(delivered(chunk.html)))
    assert is_subsequence(core(clean_model_text(text)), seen)


@PROPERTY
@given(text=hostile, limit=limits)
def test_telegram_chunks_fit_parse_and_deliver_everything(text: str, limit: int) -> None:
    check_telegram(text, limit)


@PROPERTY
@given(text=hostile)
def test_telegram_html_keeps_every_character_in_order(text: str) -> None:
    """Without cutting, exactly the non-markup characters arrive (``•`` stands for ``* ``)."""
    html = guarded(markdown_to_html, text)
    assert valid_utf8(html)
    shown = delivered(html)
    assert utf16_len(visible_text(html)) <= utf16_len(text)
    expected = [c for c in core(clean_model_text(text)) if c != "•"]
    assert [c for c in core(shown) if c != "•"] == expected


@QUIET_REPR
@BIG_PROPERTY
@given(text=big_texts)
def test_telegram_100kb(text: str) -> None:
    check_telegram(text, CHUNK_LIMIT, seconds=BIG_SECONDS)


# -- Discord / the shared splitter ---------------------------------------------------------


def check_split(text: str, limit: int, *, suffix: str = "", seconds: float = SMALL_SECONDS) -> None:
    chunks = guarded(discord_chunks, text, limit, suffix=suffix, seconds=seconds)
    for chunk in chunks:
        assert len(chunk) <= limit
        assert chunk.strip() and valid_utf8(chunk)
    if suffix and chunks:
        assert suffix in chunks[-1]
    expected = core(clean_model_text(text).replace(ZWSP, ""))
    assert is_subsequence(expected, core("".join(chunks).replace(ZWSP, "")))


@PROPERTY
@given(text=hostile, limit=limits, cursor=st.booleans())
def test_discord_chunks_fit_and_deliver_everything(text: str, limit: int, cursor: bool) -> None:
    check_split(text, limit, suffix=" ▌" if cursor else "")


@PROPERTY
@given(text=hostile, limit=limits)
def test_split_measures_utf16(text: str, limit: int) -> None:
    chunks = guarded(split_message, text, limit, measure=utf16_len)
    assert all(utf16_len(chunk) <= limit for chunk in chunks)
    assert is_subsequence(core(clean_model_text(text)), core("".join(chunks)))


code_line = st.sampled_from(["x = 1", "    return f(x)  # done", "", "print('a b c')", "}"])
prose_line = st.sampled_from(["Some words here.", "A longer sentence, with commas. And more!", ""])
fence_line = st.sampled_from(["```python", "```", "~~~", "~~~ text", "````", "```c"])
documents = st.lists(st.one_of(code_line, prose_line, fence_line), max_size=60).map("\n".join)


@PROPERTY
@given(text=documents, limit=st.integers(min_value=64, max_value=200))
def test_split_balances_fences(text: str, limit: int) -> None:
    """Cut on line boundaries, every chunk is closed on its own, and a chunk that continues a
    block starts by reopening it with the block's info string."""
    chunks = guarded(split_message, text, limit)
    for chunk in chunks:
        assert len(chunk) <= limit
        assert close_open_fence(chunk) == chunk, chunk
    assert core("".join(chunks)).count("python") >= core(text).count("python")


@QUIET_REPR
@BIG_PROPERTY
@given(text=big_texts)
def test_discord_100kb(text: str) -> None:
    check_split(text, 2000, suffix=" ▌", seconds=BIG_SECONDS)


_LIVE_MENTION = re.compile(r"@(?:everyone|here)|<(?:@[!&]?|#)\d+>")


@PROPERTY
@given(text=hostile)
def test_mentions_neutralised(text: str) -> None:
    out = guarded(neutralize_mentions, text)
    assert valid_utf8(out)
    assert _LIVE_MENTION.search(out) is None
    assert out.replace(ZWSP, "") == clean_model_text(text).replace(ZWSP, "")
    assert neutralize_mentions(out) == out


@PROPERTY
@given(text=hostile)
def test_close_open_fence_closes(text: str) -> None:
    closed = guarded(close_open_fence, text)
    assert closed.startswith(text)
    assert close_open_fence(closed) == closed


# -- the reproductions of issue 12 -----------------------------------------------------------

ADVERSARIAL = {
    "tildes": "~" * 2500,
    "unterminated fence": "```" + "x" * 2100,
    "unterminated fence, long": "```" + "x" * BIG,
    "backticks": "`" * BIG,
    "stars": "*" * BIG,
    "underscores": "_" * BIG,
    "bold openers": "**a " * (BIG // 4),
    "italic openers": "*a " * (BIG // 3),
    "brackets": "[" * (BIG // 2) + "](" * (BIG // 4),
    "links without end": "[a](http://x" * (BIG // 12),
    "mixed markup": "*_`~" * (BIG // 4),
    "fence lines": "```\n~~~\n" * (BIG // 8),
    "NUL placeholders": "`\x000\x00` \x009\x00 " * (BIG // 12),
    "emoji": "😀" * 3000,
    "ZWJ families": "👨‍👩‍👧‍👦" * (BIG // 11),
    "lone surrogates": "\ud800a\udfff" * (BIG // 3),
    "one long line": "word" * (BIG // 4),
    "quotes": ">" * BIG,
    "mentions": "@everyone <@1> " * (BIG // 15),
}


def test_split_reproductions_terminate() -> None:
    assert guarded(split_message, "~" * 2500, 1994) == ["~" * 1994, "~" * 506]
    chunks = guarded(split_message, "```" + "x" * 2100, 1994)
    assert all(len(c) <= 1994 for c in chunks)
    assert "".join(chunks).count("x") == 2100


def test_markdown_reproductions() -> None:
    assert guarded(markdown_to_html, "`\x000\x00`") == "<code>0</code>"
    assert guarded(markdown_to_html, "\x009\x00") == "9"
    # The old renderer's placeholders were NUL-delimited numbers; they are plain text now.
    assert visible_text(guarded(markdown_to_html, "**\x000\x00** `x`")) == "0 x"


def test_three_thousand_emoji_reach_telegram_whole() -> None:
    chunks = guarded(render_answer, "😀" * 3000)
    assert "".join(visible_text(c.html) for c in chunks) == "😀" * 3000
    assert all(utf16_len(visible_text(c.html)) <= MESSAGE_LIMIT for c in chunks)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_100kb(name: str) -> None:
    text = ADVERSARIAL[name]
    check_telegram(text, CHUNK_LIMIT, seconds=BIG_SECONDS)
    check_split(text, 2000, suffix=" ▌", seconds=BIG_SECONDS)
    guarded(neutralize_mentions, text, seconds=BIG_SECONDS)
    guarded(close_open_fence, text, seconds=BIG_SECONDS)
