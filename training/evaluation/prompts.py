"""The evaluation prompt set: conversations whose last assistant turn is the reference answer.

Two row shapes are accepted, because they are what people have on disk: FineTome/ShareGPT
(``{"conversations": [{"from": "human", "value": ...}, ...]}``) and OpenAI-style
(``{"messages": [{"role": "user", "content": ...}, ...]}``). The default set ships with the
package (``heldout.jsonl``): hand-written conversations in FineTome's schema, so they are held
out of any FineTome fine-tune by construction and need no download.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.template import Message, Role
from training.evaluation.errors import EvalError

DEFAULT_PROMPTS = Path(__file__).with_name("heldout.jsonl")

_ROLES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation item: the conversation so far, and the reference answer (if any)."""

    id: str
    context: tuple[Message, ...]
    reference: str | None

    def with_system(self, system_prompt: str) -> tuple[Message, ...]:
        """The context with ``system_prompt`` in front unless the row brings its own."""
        if not system_prompt or (self.context and self.context[0].role == "system"):
            return self.context
        return (Message("system", system_prompt), *self.context)


@dataclass(frozen=True)
class PromptSet:
    path: str
    sha256: str
    prompts: tuple[EvalPrompt, ...]


def _message(item: Any, where: str) -> Message:
    if not isinstance(item, dict):
        raise EvalError(f"{where}: each message must be an object")
    role_raw = item.get("from", item.get("role"))
    text = item.get("value", item.get("content"))
    if not isinstance(role_raw, str) or role_raw.lower() not in _ROLES:
        raise EvalError(
            f"{where}: unknown role {role_raw!r} (use human/gpt/system or user/assistant)"
        )
    if not isinstance(text, str):
        raise EvalError(f"{where}: message text must be a string")
    return Message(_ROLES[role_raw.lower()], text)


def parse_row(row: Any, where: str, default_id: str) -> EvalPrompt:
    """Turn one decoded JSON row into an :class:`EvalPrompt`, or say precisely what is wrong."""
    if not isinstance(row, dict):
        raise EvalError(f"{where}: a row must be a JSON object")
    items = row.get("conversations", row.get("messages"))
    if not isinstance(items, list) or not items:
        raise EvalError(f"{where}: needs a non-empty 'conversations' or 'messages' list")
    messages = [_message(m, f"{where} message {i + 1}") for i, m in enumerate(items)]
    reference: str | None = None
    if messages[-1].role == "assistant":
        reference = messages.pop().content
    if not any(m.role == "user" for m in messages) or messages[-1].role != "user":
        raise EvalError(f"{where}: the conversation must end with a user turn (then the reference)")
    if any(m.role == "system" for m in messages[1:]):
        raise EvalError(f"{where}: a system message may only come first")
    raw_id = row.get("id", default_id)
    return EvalPrompt(str(raw_id), tuple(messages), reference)


def load_prompts(path: str | Path | None = None, *, limit: int | None = None) -> PromptSet:
    """Read a jsonl prompt set (default: the shipped held-out set); ``limit`` keeps the first N."""
    file = Path(path) if path else DEFAULT_PROMPTS
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise EvalError(f"cannot read prompt file {file}: {exc.strerror or exc}") from None
    prompts: list[EvalPrompt] = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file.name} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"{where}: not valid JSON ({exc.msg})") from None
        prompts.append(parse_row(row, where, default_id=f"line-{n}"))
    if limit is not None:
        prompts = prompts[:limit]
    if not prompts:
        raise EvalError(f"{file}: no prompts")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise EvalError(f"{file}: prompt ids must be unique")
    return PromptSet(str(file), hashlib.sha256(data).hexdigest(), tuple(prompts))


def messages_json(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]
