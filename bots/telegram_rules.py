"""Who may talk to the bot, when it answers, and what the model is asked — no I/O here.

The PTB layer (:mod:`bots.telegram_bot`) turns an update into an :class:`Incoming` and asks
these functions what to do, so the rules are unit-tested without a network or a model.

Rules:

* Private chats: every text message is a turn (if private chats are allowed).
* Groups: only when the bot is addressed — an ``@botname`` mention, a reply to one of the bot's
  messages, or ``/ask``. Other chatter is ignored silently.
* Never answer other bots (two bots answering each other loop forever).
* Memory is per user within each chat (``telegram:{chat_id}:{user_id}``): a group is not one
  shared context.
* Access: admins may always use the bot. Otherwise ``allowed_user_ids`` (when set) and, in
  groups, ``allowed_chat_ids`` (when set) must both let the message through, and private chats
  need ``allow_private``. A refused person is told so politely once (then left alone for a
  while, so a spammer cannot make the bot spam); the bot stays silent in groups unless
  addressed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

QUOTE_LIMIT = 1000
"""Characters of a replied-to message quoted into the prompt (long quotes would crowd out history)."""


@dataclass(frozen=True)
class AccessPolicy:
    allowed_user_ids: frozenset[int] = frozenset()
    allowed_chat_ids: frozenset[int] = frozenset()
    admin_ids: frozenset[int] = frozenset()
    allow_private: bool = True


@dataclass(frozen=True)
class Entity:
    """A Telegram message entity, offsets in UTF-16 code units as Telegram counts them."""

    type: str
    offset: int
    length: int
    user_id: int | None = None


@dataclass(frozen=True)
class ReplyTo:
    """The message an incoming message replies to (Telegram gives one level only)."""

    message_id: int
    from_bot_self: bool
    author: str
    text: str


@dataclass(frozen=True)
class Incoming:
    """The platform-neutral view of one incoming text message."""

    chat_id: int
    chat_type: str
    """``private``, ``group``, ``supergroup`` or ``channel``."""
    user_id: int
    user_is_bot: bool
    message_id: int
    text: str
    entities: Sequence[Entity] = field(default_factory=tuple)
    reply_to: ReplyTo | None = None

    @property
    def is_private(self) -> bool:
        return self.chat_type == "private"

    @property
    def is_group(self) -> bool:
        return self.chat_type in {"group", "supergroup"}


class Access(Enum):
    ALLOWED = "allowed"
    PRIVATE_DISABLED = "private_disabled"
    USER_NOT_ALLOWED = "user_not_allowed"
    CHAT_NOT_ALLOWED = "chat_not_allowed"


REFUSALS = {
    Access.PRIVATE_DISABLED: (
        "Sorry — I only answer in the group chats I've been set up for, not in private messages."
    ),
    Access.USER_NOT_ALLOWED: (
        "Sorry — this bot is private and you're not on its list of users. "
        "Please ask the person who runs it if you'd like access."
    ),
    Access.CHAT_NOT_ALLOWED: (
        "Sorry — I'm not enabled in this chat. Please ask the person who runs me to add it."
    ),
}


def conversation_key(chat_id: int, user_id: int) -> str:
    """Memory key: one conversation per person per chat."""
    return f"telegram:{chat_id}:{user_id}"


def check_access(policy: AccessPolicy, chat_id: int, chat_type: str, user_id: int) -> Access:
    if user_id in policy.admin_ids:
        return Access.ALLOWED
    if chat_type == "private" and not policy.allow_private:
        return Access.PRIVATE_DISABLED
    if policy.allowed_user_ids and user_id not in policy.allowed_user_ids:
        return Access.USER_NOT_ALLOWED
    if (
        chat_type != "private"
        and policy.allowed_chat_ids
        and chat_id not in policy.allowed_chat_ids
    ):
        return Access.CHAT_NOT_ALLOWED
    return Access.ALLOWED


def is_admin(policy: AccessPolicy, user_id: int) -> bool:
    return user_id in policy.admin_ids


def _utf16_slice(text: str, offset: int, length: int) -> tuple[int, int]:
    """Python string indices for a UTF-16 (offset, length) span."""
    units = 0
    start = end = len(text)
    for index, char in enumerate(text):
        if units == offset:
            start = index
        if units == offset + length:
            end = index
            break
        units += 2 if ord(char) > 0xFFFF else 1
    return start, end


def mentions_bot(msg: Incoming, bot_username: str, bot_id: int) -> bool:
    handle = "@" + bot_username.lower()
    for ent in msg.entities:
        if ent.type == "text_mention" and ent.user_id == bot_id:
            return True
        if ent.type == "mention":
            start, end = _utf16_slice(msg.text, ent.offset, ent.length)
            if msg.text[start:end].lower() == handle:
                return True
    return False


def strip_mentions(text: str, bot_username: str) -> str:
    """The message without ``@botname`` (the model need not see its own handle)."""
    handle = "@" + bot_username
    lowered, target = text.lower(), handle.lower()
    out, i = [], 0
    while True:
        j = lowered.find(target, i)
        if j < 0:
            out.append(text[i:])
            break
        after = j + len(target)
        if after < len(text) and (text[after].isalnum() or text[after] == "_"):
            out.append(text[i:after])  # a longer handle that merely starts with ours
        else:
            out.append(text[i:j])
        i = after
    joined = re.sub(r"[ \t]{2,}", " ", "".join(out))
    return re.sub(r"^[\s,:;]+", "", joined).strip()


def is_addressed(msg: Incoming, bot_username: str, bot_id: int) -> bool:
    """Whether a message is meant for the bot (always in private chats)."""
    if msg.is_private:
        return True
    if msg.reply_to is not None and msg.reply_to.from_bot_self:
        return True
    return mentions_bot(msg, bot_username, bot_id)


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
