"""Fit system prompt + as many recent turns as possible into the model's context budget.

Counting is done with the model's own tokenizer on the fully rendered template (the only count
that is right for every template); stored per-turn token counts only pick how many turns to
try first, so the common case renders once or twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from core.errors import InvalidInput
from core.template import Message


@dataclass(frozen=True)
class BuiltPrompt:
    tokens: list[int]
    messages: list[Message]
    dropped_turns: int
    """How many older history messages did not fit (front-ends tell the user)."""


def merge_same_role(messages: Sequence[Message]) -> list[Message]:
    """Join consecutive same-role messages (an unanswered, cancelled turn followed by a new one).

    Many chat templates raise on non-alternating roles; merging keeps both texts.
    """
    merged: list[Message] = []
    for m in messages:
        if merged and merged[-1].role == m.role and m.role != "system":
            merged[-1] = Message(m.role, merged[-1].content + "\n\n" + m.content)
        else:
            merged.append(m)
    return merged


def _drop_start(history: Sequence[Message], start: int) -> int:
    """Never let the kept history start with an assistant message (templates expect user first)."""
    while start < len(history) and history[start].role != "user":
        start += 1
    return start


async def build_prompt(
    *,
    system_prompt: str,
    history: Sequence[Message],
    turn_tokens: Sequence[int | None],
    budget: int,
    encode: Callable[[list[Message]], Awaitable[list[int]]],
) -> BuiltPrompt:
    """Pick the longest suffix of ``history`` that fits in ``budget`` tokens, whole turns only.

    ``history`` ends with the new user message, which must always fit; ``turn_tokens`` holds
    each message's stored token count (or None) to guess where to start.
    """
    if not history:
        raise ValueError("history must end with the new user message")
    system = [Message("system", system_prompt)] if system_prompt else []

    def assemble(start: int) -> list[Message]:
        return system + merge_same_role(history[start:])

    # Guess a start index from stored counts (plus a few tokens of template overhead per turn).
    start = 0
    total = sum((t or len(m.content) // 3) + 8 for t, m in zip(turn_tokens, history, strict=True))
    while total > budget and start < len(history) - 1:
        total -= (turn_tokens[start] or len(history[start].content) // 3) + 8
        start += 1
    start = _drop_start(history, start)

    last_user = len(history) - 1
    while True:
        messages = assemble(min(start, last_user))
        tokens = await encode(messages)
        if len(tokens) <= budget:
            break
        if start >= last_user:
            raise InvalidInput(
                f"Your message is too long for this model ({len(tokens):,} tokens with the "
                f"instructions; at most {budget:,} fit). Please shorten it."
            )
        start = _drop_start(history, start + 1)
    # The guess may have dropped more than needed: grow back while earlier turns still fit.
    while start > 0:
        candidate = start - 1
        while candidate > 0 and history[candidate].role != "user":
            candidate -= 1
        if history[candidate].role != "user":
            break
        bigger = await encode(assemble(candidate))
        if len(bigger) > budget:
            break
        start, tokens, messages = candidate, bigger, assemble(candidate)
    return BuiltPrompt(tokens=tokens, messages=messages, dropped_turns=start)
