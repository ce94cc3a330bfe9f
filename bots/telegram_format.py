"""The model's Markdown as Telegram HTML: formatting kept where it is unambiguous, all else escaped.

Telegram's HTML parse mode knows a handful of tags and rejects a whole message for one stray
``<`` or a misnested tag ("can't parse entities"). Models write loose Markdown, so everything is
escaped first and only well-formed constructs become tags: fenced code, inline code, bold,
italic, strikethrough, links with http(s) targets, headings and quotes. Code and links are set
aside as placeholders before the emphasis rules run, so an ``_`` in a URL or a ``*`` in code is
never read as emphasis. Each rule's match produces its own opening and closing tag, and emphasis
content may not contain a tag, so the output always nests properly. Should Telegram still
refuse it, the caller falls back to the plain text (see :mod:`bots.telegram_stream`).

Only the visible text counts against Telegram's 4,096-character limit, and rendering only ever
removes Markdown markers, so a chunk cut to the limit as Markdown stays within it as HTML.
"""

from __future__ import annotations

import html
import re

_FENCE_OPEN = re.compile(r"^\s*(```+|~~~+)\s*([\w#+.-]*)\s*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s()<>]+)\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)([^<>\n]+?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=[^\s*])([^<>*\n]*?[^\s*<>])\*(?![\w*])")
_ITALIC_UNDERSCORE = re.compile(r"(?<![\w_])_(?=[^\s_])([^<>_\n]*?[^\s_<>])_(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)([^<>\n]+?)(?<=\S)~~")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[*+-]\s+(?=\S)")
_QUOTE = re.compile(r"^&gt;\s?(.*)$")
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")


def escape(text: str) -> str:
    """Escape the three characters Telegram's HTML mode treats specially."""
    return html.escape(text, quote=False)


def markdown_to_html(text: str) -> str:
    """Render Markdown ``text`` as Telegram-safe HTML (see module docstring)."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    prose: list[str] = []
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            prose.append(lines[i])
            i += 1
            continue
        if prose:
            out.append(_render_prose(prose))
            prose = []
        marker, lang = m.group(1), m.group(2)
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(marker[:3]) and not lines[i].strip().strip(marker[0])
        ):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence (or the end of an unclosed block)
        out.append(_render_code_block("\n".join(body), lang))
    if prose:
        out.append(_render_prose(prose))
    return "\n".join(out)


def _render_code_block(code: str, lang: str) -> str:
    if not code.strip():
        code = code or " "
    attr = f' class="language-{escape(lang)}"' if lang and lang.replace("-", "").isalnum() else ""
    return f"<pre><code{attr}>{escape(code)}</code></pre>"


def _render_prose(lines: list[str]) -> str:
    rendered: list[str] = []
    quote: list[str] = []

    def flush_quote() -> None:
        if quote:
            rendered.append("<blockquote>" + "\n".join(quote) + "</blockquote>")
            quote.clear()

    for raw in lines:
        line = escape(raw)
        q = _QUOTE.match(line)
        if q:
            quote.append(_render_inline(q.group(1)))
            continue
        flush_quote()
        h = _HEADING.match(line)
        if h:
            rendered.append(f"<b>{_render_inline(h.group(1))}</b>")
            continue
        line = _BULLET.sub(lambda b: b.group(1) + "• ", line)
        rendered.append(_render_inline(line))
    flush_quote()
    return "\n".join(rendered)


def _render_inline(escaped: str) -> str:
    """Inline Markdown on one already-escaped line."""
    held: list[str] = []

    def hold(fragment: str) -> str:
        held.append(fragment)
        return f"\x00{len(held) - 1}\x00"

    text = _INLINE_CODE.sub(lambda m: hold(f"<code>{m.group(2)}</code>"), escaped)
    text = _LINK.sub(
        lambda m: hold(f'<a href="{m.group(2).replace(chr(34), "&quot;")}">{m.group(1)}</a>'),
        text,
    )
    text = _BOLD.sub(lambda m: f"<b>{m.group(2)}</b>", text)
    text = _STRIKE.sub(lambda m: f"<s>{m.group(1)}</s>", text)
    text = _ITALIC_STAR.sub(lambda m: f"<i>{m.group(1)}</i>", text)
    text = _ITALIC_UNDERSCORE.sub(lambda m: f"<i>{m.group(1)}</i>", text)
    while _PLACEHOLDER.search(text):
        text = _PLACEHOLDER.sub(lambda m: held[int(m.group(1))], text)
    return text
