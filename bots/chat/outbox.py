"""The seam between the conversation layer and a chat platform.

An :class:`Outbox` writes one reply's messages (send, edit, delete) and knows the platform's
message size and formatting; a :class:`Place` is where a message or command came from and
makes outboxes for it. Platform errors are translated into the three exceptions below, so
the layer decides about retries, pacing and lost messages in one place:

* :class:`RetryLater` — HTTP 429: the whole chat waits exactly ``retry_after``, then retries.
* :class:`MessageGone` — the message to edit was deleted: the text is posted anew.
* :class:`Rejected` — the platform will never accept this call: not retried.

Anything else (network trouble) is retried a few times with backoff for final text, and
skipped for intermediate edits.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Protocol, TypeVar

H = TypeVar("H")


class Style(Enum):
    """How a chunk is shown."""

    STREAMING = "streaming"
    """Part of an answer still being written: plain text (it may end with a cursor)."""
    FINAL = "final"
    """A finished answer: the platform renders its Markdown."""
    PLAIN = "plain"
    """A note from the bot itself (command answers, refusals): shown as it is."""


class RetryLater(Exception):
    """The platform rate-limited this chat; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after:.3f} s")
        self.retry_after = max(0.0, retry_after)


class MessageGone(Exception):
    """The message to edit no longer exists (deleted by someone)."""


class Rejected(Exception):
    """The platform refused this call for good (retrying the same call cannot help)."""


class Outbox(Protocol[H]):
    """Where one reply's messages go; ``H`` is the platform's handle of a sent message.

    An outbox belongs to one reply: the platform may treat its first message specially (a
    reply reference, the response to a slash command).
    """

    async def split(self, text: str, *, suffix: str = "") -> list[str]:
        """``text`` as message-sized chunks (none for blank text); ``suffix`` — the streaming
        cursor — ends the last one, within the limit. Never holds the event loop for long."""
        ...

    def restyles(self, chunk: str) -> bool:
        """Whether :attr:`Style.FINAL` shows ``chunk`` differently from the streamed text."""
        ...

    async def send(self, text: str, style: Style) -> H: ...

    async def edit(self, handle: H, text: str, style: Style) -> H: ...

    async def delete(self, handle: H) -> None: ...

    def message_id(self, handle: H) -> str:
        """The platform's id of a sent message (stored to map replies to turns)."""
        ...


class Place(Protocol):
    """Where an incoming message or command came from, as far as answering it goes."""

    scope: str
    """The chat whose rate limit every write shares (one :class:`~bots.chat.pacer.Pacer`)."""
    group: bool
    """A group chat: slower edits, larger edit steps."""
    ephemeral: bool
    """Notes here are seen only by the person (Discord interactions): never throttled."""

    def outbox(self, *, note: bool = False) -> Outbox[Any]:
        """A fresh outbox for an answer, or for a short ``note`` from the bot."""
        ...

    async def typing(self) -> None:
        """Show "typing…" (best effort; may raise, the caller ignores failures)."""
        ...

    async def acknowledge(self) -> None:
        """Called before a model answer starts (Discord defers an interaction here)."""
        ...
