"""Turn whatever a platform hands us into text the model can take, or say clearly why not."""

from __future__ import annotations

import re

from core.errors import InvalidInput

# C0/C1 control characters except tab and newline; NUL included. They carry no meaning in a
# chat message, confuse tokenizers, and SQLite/terminals handle them badly.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_user_text(raw: str | bytes, *, max_chars: int) -> str:
    """Return the message as clean text, or raise :class:`InvalidInput` with a short reason."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                "That message is not valid UTF-8 text, so I can't read it."
            ) from None
    elif isinstance(raw, str):
        text = raw
    else:
        raise InvalidInput("Only text messages are supported.")
    text = _SURROGATE.sub("\ufffd", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text).strip()
    if not text:
        raise InvalidInput("Your message is empty; please send some text.")
    if len(text) > max_chars:
        raise InvalidInput(
            f"Your message is too long ({len(text):,} characters; the limit is {max_chars:,}). "
            "Please shorten it or split it up."
        )
    return text
