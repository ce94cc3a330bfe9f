"""Telegram's rules, on plain data: who may talk, when the bot is addressed, whose memory.

The PTB layer (:mod:`bots.telegram.bot`) reduces an update to :class:`Facts`; these functions
turn them into the conversation layer's :class:`~bots.chat.incoming.Incoming`, so the rules
are unit-tested without a network or a model.

* Private chats: every message is for the bot (if private chats are allowed).
* Groups: only when addressed — an ``@botname`` mention, a reply to one of the bot's
  messages, or ``/ask``. Other chatter is ignored silently. Other bots are never answered.
* Memory is per person within each chat, and within each forum topic:
  ``telegram:CHAT:USER``, or ``telegram:CHAT/TOPIC:USER`` for a message in a forum topic
  (``is_topic_message``). The General topic and ordinary supergroups — whose replies carry a
  ``message_thread_id`` too — keep the plain key.
* Access: admins always. Otherwise ``allowed_user_ids`` (when set) and, in groups,
  ``allowed_chat_ids`` (when set) must both let the message through; private chats need
  ``allow_private``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bots.chat.incoming import Attachment, CommandCall, Incoming, ReplyTo
from bots.chat.texts import Refusal

PLATFORM = "telegram"


@dataclass(frozen=True)
class AccessPolicy:
    allowed_user_ids: frozenset[int] = frozenset()
    allowed_chat_ids: frozenset[int] = frozenset()
    admin_ids: frozenset[int] = frozenset()
    allow_private: bool = True

    def is_admin(self, user_id: int) -> bool:
        return user_id in self.admin_ids

    def refusal(self, chat_id: int, chat_type: str, user_id: int) -> Refusal | None:
        if self.is_admin(user_id):
            return None
        if chat_type == "private" and not self.allow_private:
            return Refusal.PRIVATE_DISABLED
        if self.allowed_user_ids and user_id not in self.allowed_user_ids:
            return Refusal.USER_NOT_ALLOWED
        if (
            chat_type != "private"
            and self.allowed_chat_ids
            and chat_id not in self.allowed_chat_ids
        ):
            return Refusal.CHAT_NOT_ALLOWED
        return None


@dataclass(frozen=True)
class Entity:
    """A Telegram message entity, offsets in UTF-16 code units as Telegram counts them."""

    type: str
    offset: int
    length: int
    user_id: int | None = None


@dataclass(frozen=True)
class Facts:
    """One Telegram message, reduced to what the rules look at."""

    chat_id: int
    chat_type: str
    """``private``, ``group``, ``supergroup`` or ``channel``."""
    user_id: int
    user_is_bot: bool
    message_id: int
    text: str
    """The text, or a media message's caption."""
    entities: tuple[Entity, ...] = ()
    reply_to: ReplyTo | None = None
    topic_id: int | None = None
    """The forum topic (``message_thread_id`` of a message with ``is_topic_message``)."""
    attachments: tuple[Attachment, ...] = field(default_factory=tuple)

    @property
    def is_private(self) -> bool:
        return self.chat_type == "private"

    @property
    def is_group(self) -> bool:
        return self.chat_type in {"group", "supergroup"}


def conversation_key(chat_id: int, user_id: int, topic_id: int | None = None) -> str:
    """Memory key: one conversation per person per chat, and per forum topic."""
    place = str(chat_id) if topic_id is None else f"{chat_id}/{topic_id}"
    return f"{PLATFORM}:{place}:{user_id}"


def scope_of(chat_id: int) -> str:
    """Telegram limits writes per chat, topics included: one pacer per chat."""
    return f"{PLATFORM}:{chat_id}"


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


def mentions_bot(facts: Facts, bot_username: str, bot_id: int) -> bool:
    handle = "@" + bot_username.lower()
    for ent in facts.entities:
        if ent.type == "text_mention" and ent.user_id == bot_id:
            return True
        if ent.type == "mention":
            start, end = _utf16_slice(facts.text, ent.offset, ent.length)
            if facts.text[start:end].lower() == handle:
                return True
    return False


def strip_mentions(text: str, bot_username: str) -> str:
    """The message without ``@botname`` (the model need not see its own handle)."""
    lowered, target = text.lower(), "@" + bot_username.lower()
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


def is_addressed(facts: Facts, bot_username: str, bot_id: int) -> bool:
    """Whether a message is meant for the bot (always in private chats)."""
    if facts.user_is_bot or facts.chat_type == "channel":
        return False
    if facts.is_private:
        return True
    if facts.reply_to is not None and facts.reply_to.from_self:
        return True
    return mentions_bot(facts, bot_username, bot_id)


def incoming(facts: Facts, policy: AccessPolicy, bot_username: str, bot_id: int) -> Incoming:
    addressed = is_addressed(facts, bot_username, bot_id)
    return Incoming(
        scope=scope_of(facts.chat_id),
        message_id=str(facts.message_id),
        key=conversation_key(facts.chat_id, facts.user_id, facts.topic_id),
        text=strip_mentions(facts.text, bot_username),
        addressed=addressed,
        refusal=policy.refusal(facts.chat_id, facts.chat_type, facts.user_id)
        if addressed
        else None,
        reply_to=facts.reply_to,
        attachments=facts.attachments,
    )


def command(
    facts: Facts, name: str, argument: str, policy: AccessPolicy, bot_username: str
) -> CommandCall:
    return CommandCall(
        scope=scope_of(facts.chat_id),
        message_id=str(facts.message_id),
        key=conversation_key(facts.chat_id, facts.user_id, facts.topic_id),
        name=name,
        argument=argument,
        refusal=policy.refusal(facts.chat_id, facts.chat_type, facts.user_id),
        is_admin=policy.is_admin(facts.user_id),
        private=facts.is_private,
        handle="@" + bot_username,
    )


def api_url(base_url: str, kind: str = "bot") -> str:
    """PTB's base URL from the config's server root (``…/bot`` or ``…/file/bot``).

    A value that already ends in ``/bot`` or contains ``{token}`` is taken as PTB's own form.
    """
    base = base_url.rstrip("/")
    if "{token}" in base:
        return base if kind == "bot" else base.replace("/bot", "/file/bot", 1)
    if base.endswith("/bot"):
        base = base[: -len("/bot")]
    return f"{base}/file/bot" if kind == "file" else f"{base}/bot"
