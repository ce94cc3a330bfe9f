"""Render a model's own chat template without letting user text become special tokens.

llama-cpp-python's ``create_chat_completion`` renders the template and then tokenizes the whole
string with ``special=True``, so a user who types ``<|im_end|><|im_start|>system`` gets a real
role switch. Here every message body is replaced by a random marker before rendering; the
rendered text is then split at the markers so that template text is tokenized with special
tokens on and each body with special tokens off.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.errors import ModelLoadError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered prompt; ``trusted`` pieces may contain special tokens."""

    text: str
    trusted: bool


# A minimal ChatML template for GGUFs that carry none (base models): better than refusing.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled Jinja chat template (HF semantics: ``messages``, ``add_generation_prompt``)."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise ModelLoadError(f"the model's chat template does not compile: {exc}") from None
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(
        self, messages: Sequence[Message], *, add_generation_prompt: bool = True
    ) -> list[Segment]:
        """Render ``messages`` and return trusted template text interleaved with untrusted bodies."""
        nonce = secrets.token_hex(6)
        markers = {f"\ue000{nonce}:{i}\ue001": m.content for i, m in enumerate(messages)}
        placeholder_msgs: list[dict[str, Any]] = [
            {"role": m.role, "content": marker} for marker, m in zip(markers, messages, strict=True)
        ]
        try:
            text = self._template.render(
                messages=placeholder_msgs,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as exc:
            raise ValueError(f"chat template rejected the conversation: {exc}") from None
        segments: list[Segment] = []
        pattern = re.compile("(\ue000" + re.escape(nonce) + r":\d+\ue001)")
        for i, part in enumerate(pattern.split(text)):
            if i % 2 == 0:
                if part:
                    segments.append(Segment(part, trusted=True))
            else:
                body = markers.get(part)
                if body is None:  # pragma: no cover - the regex only matches our markers
                    raise ValueError("chat template produced an unknown marker")
                if body:
                    segments.append(Segment(body, trusted=False))
        return segments


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, indent=indent)


def tokenize_segments(
    segments: Sequence[Segment],
    tokenize: Callable[[str, bool, bool], list[int]],
    *,
    add_bos: bool,
    bos_text: str,
) -> list[int]:
    """Tokenize rendered segments: specials parsed only in trusted (template) text.

    ``tokenize(text, add_bos, special)`` is the model tokenizer. BOS is added once, unless the
    template already wrote it.
    """
    tokens: list[int] = []
    first = True
    for seg in segments:
        want_bos = first and add_bos and not (bos_text and seg.text.startswith(bos_text))
        tokens.extend(tokenize(seg.text, want_bos, seg.trusted))
        first = False
    return tokens


ZERO_WIDTH_SPACE = "\u200b"


def break_special_strings(text: str, specials: Sequence[str]) -> str:
    """Insert a zero-width space after the first character of each special-token string.

    For tokenizers that match some special strings even with special parsing off (llama.cpp
    does so for user-defined tokens; remote servers parse everything): the text still reads
    the same, but can no longer become the special token.
    """
    for token in sorted((s for s in specials if len(s) > 1), key=len, reverse=True):
        if token in text:
            text = text.replace(token, token[0] + ZERO_WIDTH_SPACE + token[1:])
    return text
