"""What a platform hands the conversation layer: one message or command, reduced to facts.

The platform adapters (``bots.telegram``, ``bots.discord``) build these from their library's
objects after applying their own rules (is the bot addressed? may this person use it here?),
so everything below is decided from plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

from bots.chat.texts import Refusal

QUOTE_LIMIT = 1000
"""Characters of a replied-to message quoted into the prompt (long quotes crowd out history)."""


@dataclass(frozen=True)
class Attachment:
    """A file, image or other non-text part of a message.

    Not read yet: the layer says so. ``ref`` is the platform's handle for fetching it later
    (a Telegram ``file_id``, a Discord attachment URL), so reading text files can be added
    without changing what adapters pass in.
    """

    kind: str
    """``file``, ``photo``, ``voice``, ``sticker``, ``location``…"""
    name: str = ""
    size: int | None = None
    content_type: str | None = None
    ref: str = ""


@dataclass(frozen=True)
class ReplyTo:
    """The message an incoming message replies to."""

    message_id: str
    from_self: bool
    """Posted by this bot (maybe an answer in the sender's own conversation)."""
    author: str
    text: str


@dataclass(frozen=True)
class Incoming:
    """One message for the layer; ``scope`` + ``message_id`` identify it."""

    scope: str
    """The platform's rate-limit domain: ``telegram:CHAT``, ``discord:CHANNEL``."""
    message_id: str
    key: str
    """Whose memory: ``platform:place:user`` (see ``core.memory``)."""
    text: str
    """The person's words, without the bot's own mention."""
    addressed: bool = True
    """Meant for the bot; when False the layer only records that it ignored it."""
    refusal: Refusal | None = None
    """Set when the platform's access rules turn the sender away."""
    reply_to: ReplyTo | None = None
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class CommandCall:
    """One command (``/name argument``) for the layer."""

    scope: str
    message_id: str
    """The command message's id (Telegram) or the interaction's (Discord)."""
    key: str
    name: str
    argument: str = ""
    refusal: Refusal | None = None
    is_admin: bool = False
    private: bool = False
    handle: str = ""
    """How people mention the bot here (``@name``), for the greeting."""


def quote_into_prompt(text: str, reply_to: ReplyTo | None) -> str:
    """Prefix the replied-to message, so the model sees what "this" refers to."""
    if reply_to is None or not reply_to.text.strip():
        return text
    quoted = reply_to.text.strip()
    if len(quoted) > QUOTE_LIMIT:
        quoted = quoted[:QUOTE_LIMIT].rstrip() + " …"
    body = "\n".join("> " + line for line in quoted.split("\n"))
    return f"{reply_to.author} wrote:\n{body}\n\n{text}"


def command_argument(text: str) -> str:
    """What follows ``/command`` or ``/command@botname`` (may span several lines)."""
    parts = text.strip().split(maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


def persona_reset_requested(argument: str) -> bool:
    """``/persona reset`` (or ``default``) restores the default persona on every platform."""
    return argument.strip().lower() in {"reset", "default"}
