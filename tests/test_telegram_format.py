"""Markdown → Telegram HTML (:mod:`bots.telegram.format`) on the answers models write."""

from __future__ import annotations

import pytest

from bots.telegram.chunks import CHUNK_LIMIT, render_answer, telegram_chunks, utf16_len
from bots.telegram.format import escape, markdown_to_html
from tests.fakes.telegram_api import visible_text


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("plain <b> & stuff", "plain &lt;b&gt; &amp; stuff"),
        ("**bold** and *it* and _it_", "<b>bold</b> and <i>it</i> and <i>it</i>"),
        ("snake_case_name and 2*3*4 and __init__", "snake_case_name and 2*3*4 and __init__"),
        ("use `a<b>` here", "use <code>a&lt;b&gt;</code> here"),
        ("``a ` b``", "<code>a ` b</code>"),
        ("~~gone~~ but ~not~", "<s>gone</s> but ~not~"),
        ("# Title **x**", "<b>Title x</b>"),
        ("## Learning C# ##", "<b>Learning C#</b>"),
        ("- one\n* two\n  * three", "- one\n• two\n  • three"),
        ("> quoted\n> more\nafter", "<blockquote>quoted\nmore</blockquote>\nafter"),
        (
            "[docs](https://example.com/a_b*c*?x=1&y=2)",
            '<a href="https://example.com/a_b*c*?x=1&amp;y=2">docs</a>',
        ),
        (
            "[wiki](https://en.wikipedia.org/wiki/Python_(language))",
            '<a href="https://en.wikipedia.org/wiki/Python_(language)">wiki</a>',
        ),
        ("[js](javascript:alert(1))", "[js](javascript:alert(1))"),
        (
            "```python\nif a < b:\n    print('**x**')\n```",
            "<pre><code class=\"language-python\">if a &lt; b:\n    print('**x**')</code></pre>",
        ),
        ("```\nunclosed <code>", "<pre><code>unclosed &lt;code&gt;</code></pre>"),
        ("```not a language!\nx", "<pre><code>not a language!\nx</code></pre>"),
        ("**a *b** c*", "<b>a *b</b> c*"),
        ("*a _b_ c*", "<i>a b c</i>"),
        ("***both***", "<b><i>both</i></b>"),
        ("| a | b |\n|---|:-:|\n| 1 | 2 |", "<pre>| a | b |\n|---|:-:|\n| 1 | 2 |</pre>"),
        ("```\n```", "```\n```"),  # nothing visible would remain: the Markdown as text
        ("`\x000\x00`", "<code>0</code>"),
        ("\ud800 ok", "\ufffd ok"),
    ],
)
def test_markdown_to_html(markdown: str, html: str) -> None:
    assert markdown_to_html(markdown) == html
    visible_text(html)  # and Telegram would accept it


def test_escape() -> None:
    assert escape('<a href="x">&</a>') == '&lt;a href="x"&gt;&amp;&lt;/a&gt;'


def test_chunks_fit_after_rendering() -> None:
    text = ("**Word** " * 300 + "\n\n") * 3 + "```\n" + "x = 1\n" * 400 + "```"
    for chunk in render_answer(text):
        assert utf16_len(visible_text(chunk.html)) <= 4096
        assert utf16_len(chunk.markdown) <= CHUNK_LIMIT


def test_chunks_respect_utf16_length() -> None:
    text = ("😀 emoji everywhere. " * 400).strip()  # 8,000 chars, 8,800 UTF-16 units
    chunks = telegram_chunks(text)
    assert all(utf16_len(c) <= CHUNK_LIMIT for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert len(chunks) == 3
