"""How stored text is shown in the browser: as text, never as live HTML.

Gradio renders chat messages as Markdown and sanitizes the resulting HTML. Sanitizing stops
scripts, but a visitor who pastes ``<img src=x>`` or ``**bold**`` should see exactly what they
typed, so user messages are escaped completely (every ASCII punctuation character gets a
CommonMark backslash escape). Assistant messages keep their Markdown (code blocks, lists) but
raw HTML tags outside code are escaped, so a model talked into emitting HTML shows it as text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from core.memory import Turn

# Characters with Markdown/HTML meaning anywhere in a line (emphasis, code, links, tags,
# entities, tables, strikethrough, math); plain prose punctuation (.,!?:;'"-) stays readable.
_INLINE = re.compile(r"([\\`*_\[\]<>#|~&$])")
# Characters that only mean something at the start of a line: list bullets, numbered items,
# setext underlines.
_LINE_START = re.compile(r"^([ \t]*)([-+=]|\d+[.)])", re.MULTILINE)
_LEADING_WS = re.compile(r"^[ \t]+", re.MULTILINE)
# Fenced blocks (closed, or still streaming to the end of the text) and inline code spans.
_CODE = re.compile(r"(```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]+`)", re.DOTALL)

ChatMessage = dict[str, Any]


def user_markdown(text: str) -> str:
    """Markdown that displays ``text`` literally (no formatting, no HTML, no links)."""
    escaped = _INLINE.sub(r"\\\1", text)
    escaped = _LINE_START.sub(lambda m: m.group(1) + _escape_marker(m.group(2)), escaped)
    # Leading indentation would turn a line into a code block; keep it visible as spaces.
    return _LEADING_WS.sub(
        lambda m: m.group(0).replace("\t", "    ").replace(" ", "\u00a0"), escaped
    )


def _escape_marker(marker: str) -> str:
    return marker[:-1] + "\\" + marker[-1]


def assistant_markdown(text: str) -> str:
    """The model's Markdown with raw HTML outside code shown as text."""
    parts = _CODE.split(text)
    return "".join(
        part if i % 2 else part.replace("\\<", "<").replace("<", "\\<")
        for i, part in enumerate(parts)
    )


def message(role: str, text: str) -> ChatMessage:
    """One Gradio 6 messages-format entry, rendered safely for its role."""
    body = user_markdown(text) if role == "user" else assistant_markdown(text)
    return {"role": role, "content": body}


def to_chat(turns: Iterable[Turn]) -> list[ChatMessage]:
    """Stored turns as the Chatbot's value (system turns are not shown)."""
    return [message(t.role, t.text) for t in turns if t.role in ("user", "assistant")]


def feedback_values(turns: Iterable[Turn]) -> list[str | None]:
    """The Chatbot's ``feedback_value``: per shown answer, "Like", "Dislike" or None."""
    names = {1: "Like", -1: "Dislike"}
    return [names.get(t.feedback or 0) for t in turns if t.role == "assistant"]


def message_text(value: Any) -> str:
    """The text of a message as the browser sends it back (a string, parts, or a list of them)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if value.get("type") == "text":
            return str(value.get("text", ""))
        return message_text(value.get("content", ""))
    if isinstance(value, list | tuple):
        return "".join(message_text(v) for v in value)
    return ""


def speed(completion_tokens: int, ttft: float | None, total: float) -> float | None:
    """Decode speed in tokens/s: tokens after the first over the time after the first."""
    if completion_tokens <= 0 or total <= 0:
        return None
    if ttft is not None and completion_tokens > 1 and total > ttft:
        return (completion_tokens - 1) / (total - ttft)
    return completion_tokens / total


def stats_line(
    *,
    completion_tokens: int,
    prompt_tokens: int,
    ttft: float | None,
    total: float,
    finish_reason: str,
) -> str:
    """One short line under an answer: tokens, time to first token, speed, why it ended."""
    parts = [f"{completion_tokens} tokens"]
    if ttft is not None:
        parts.append(f"first token {ttft:.2f} s")
    tps = speed(completion_tokens, ttft, total)
    if tps is not None:
        parts.append(f"{tps:.1f} tok/s")
    parts.append(f"prompt {prompt_tokens} tokens")
    if finish_reason == "length":
        parts.append("stopped at the max-tokens limit")
    elif finish_reason == "cancelled":
        parts.append("stopped — this partial answer is not kept")
    return " · ".join(parts)


def dropped_note(dropped_turns: int) -> str:
    if dropped_turns <= 0:
        return ""
    s = "" if dropped_turns == 1 else "s"
    return (
        f"Note: {dropped_turns} older message{s} no longer fit in the model's context and "
        "were left out of this answer (they are still saved)."
    )


def escape_status(text: str) -> str:
    """Status lines may quote user input (error messages): show them literally."""
    return user_markdown(text)
