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


# Model output: the same characters go as in user text (C0 except tab and newline, DEL, C1),
# and CR/CRLF become LF, so memory, prompts and every renderer see one line-break convention.
_DROP = {c: None for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]}


def clean_model_text(text: str) -> str:
    """``text`` from a model backend made safe to store and render; total and linear.

    Lone UTF-16 surrogates (a JSON ``\\ud800`` from a remote backend) become U+FFFD, a
    surrogate *pair* spelled as two code points is joined into its character; NUL and the
    other C0 controls except tab and newline are dropped, and so are DEL and the C1 controls
    (U+0080-U+009F: invisible, and in model output mostly mojibake), as :func:`clean_user_text`
    drops them from user text; CRLF and lone CR become LF.
    """
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.translate(_DROP)


class StreamCleaner:
    """:func:`clean_model_text` for text that arrives in pieces.

    A piece may end in the middle of something the cleaner must see whole: the high half of a
    surrogate pair, or the CR of a CRLF. That last character is held back until the next
    piece (or :meth:`flush`), so the cleaned pieces join to exactly ``clean_model_text`` of the
    joined raw pieces.
    """

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece if self._held else piece
        self._held = ""
        if text and (text[-1] == "\r" or "\ud800" <= text[-1] <= "\udbff"):
            self._held, text = text[-1], text[:-1]
        return clean_model_text(text)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return clean_model_text(held)


def one_line(raw: str) -> str:
    """``raw`` on one line (titles): control characters dropped, whitespace runs made one space."""
    return " ".join(_CONTROL.sub("", _SURROGATE.sub("\ufffd", raw)).split())
