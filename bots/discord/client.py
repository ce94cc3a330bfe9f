"""The Discord adapter: discord.py events in, the conversation layer out.

:class:`DiscordChat` turns a ``discord.Message`` into plain facts and hands them to the
:class:`~bots.chat.layer.ChatLayer`; :class:`FinechatClient` is a thin ``discord.Client`` that
forwards ``on_message`` and owns the slash-command tree (:mod:`bots.discord.commands`).
Nothing here is global: the front-end builds both and passes everything in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord
from discord import app_commands

from bots.chat.incoming import Attachment, Incoming, ReplyTo
from bots.chat.layer import ChatLayer
from bots.discord import rules
from bots.discord.outbox import NO_MENTIONS, ChannelPlace
from bots.discord.rules import AccessPolicy, Facts, Where

log = logging.getLogger("finechat.discord")


def channel_chain(channel: Any) -> tuple[int, ...]:
    """The channel/thread id, then its parent channel, then the category (access inheritance)."""
    ids: list[int] = [channel.id]
    if isinstance(channel, discord.Thread):
        if channel.parent_id:
            ids.append(channel.parent_id)
        parent = channel.parent
        category = getattr(parent, "category_id", None) if parent is not None else None
        if category:
            ids.append(int(category))
    elif getattr(channel, "category_id", None):
        ids.append(channel.category_id)
    return tuple(ids)


def where_of(user: discord.User | discord.Member, channel: Any, guild_id: int | None) -> Where:
    roles = frozenset(r.id for r in user.roles) if isinstance(user, discord.Member) else frozenset()
    return Where(
        user_id=user.id,
        role_ids=roles,
        channel_ids=channel_chain(channel) if channel is not None else (),
        is_dm=guild_id is None,
    )


def attachments_of(message: discord.Message) -> tuple[Attachment, ...]:
    return tuple(
        Attachment("file", a.filename, a.size, a.content_type, a.url) for a in message.attachments
    )


@dataclass
class DiscordChat:
    """Everything the Discord adapter needs, passed in (no globals)."""

    layer: ChatLayer
    policy: AccessPolicy
    auto_thread: bool = False

    async def on_message(self, bot_id: int, message: discord.Message) -> None:
        if message.author.id == bot_id:
            return
        try:
            incoming, place = await self._translate(bot_id, message)
        except Exception as exc:  # never let one message take the bot down
            log.error("message %s could not be read: %s", message.id, type(exc).__name__)
            return
        await self.layer.message(incoming, place)

    async def _translate(
        self, bot_id: int, message: discord.Message
    ) -> tuple[Incoming, ChannelPlace]:
        channel = message.channel
        guild_id = message.guild.id if message.guild else None
        reply_to = await self._reply_to(bot_id, message)
        facts = Facts(
            author_id=message.author.id,
            author_is_bot=message.author.bot,
            is_dm=guild_id is None,
            is_thread=isinstance(channel, discord.Thread),
            bot_in_thread=isinstance(channel, discord.Thread)
            and (channel.owner_id == bot_id or channel.me is not None),
            mentions_bot=any(u.id == bot_id for u in message.mentions),
            replies_to_bot=reply_to is not None and reply_to.from_self,
        )
        addressed = rules.should_answer(facts, bot_id=bot_id)
        refusal = (
            self.policy.refusal(where_of(message.author, channel, guild_id)) if addressed else None
        )
        text = rules.prompt_text(message.content, bot_id=bot_id)
        target: discord.abc.Messageable = channel
        reference: discord.Message | None = message
        if (
            addressed
            and refusal is None
            and text
            and self.auto_thread
            and reply_to is None
            and isinstance(channel, discord.TextChannel)
        ):
            try:
                target = await message.create_thread(name=rules.thread_name(text))
                reference = None
            except discord.HTTPException as exc:  # no permission: answer in the channel
                log.warning("auto_thread: could not open a thread: HTTP %s", exc.status)
        target_id = int(getattr(target, "id", channel.id))
        incoming = Incoming(
            scope=rules.scope_of(target_id),
            message_id=str(message.id),
            key=rules.conversation_key(target_id, message.author.id),
            text=text,
            addressed=addressed,
            refusal=refusal,
            reply_to=reply_to,
            attachments=attachments_of(message),
        )
        place = ChannelPlace(target, reference, incoming.scope, group=guild_id is not None)
        return incoming, place

    async def _reply_to(self, bot_id: int, message: discord.Message) -> ReplyTo | None:
        ref = message.reference
        if ref is None or ref.message_id is None:
            return None
        resolved = ref.resolved
        if isinstance(resolved, discord.Message):
            return ReplyTo(
                str(ref.message_id),
                from_self=resolved.author.id == bot_id,
                author=resolved.author.display_name,
                text=resolved.content,
            )
        # Not resolved by Discord (cold cache): our memory knows our own messages.
        try:
            ours = await self.layer.service.delivered_as("discord:", str(ref.message_id))
        except Exception as exc:
            log.warning("reply target unknown: %s", type(exc).__name__)
            ours = False
        return ReplyTo(str(ref.message_id), from_self=True, author="", text="") if ours else None


CommandInstaller = Callable[[app_commands.CommandTree[Any]], None]


class FinechatClient(discord.Client):
    """A discord.py client whose only jobs are forwarding events and syncing commands."""

    def __init__(
        self,
        chat: DiscordChat,
        *,
        install_commands: CommandInstaller,
        guild_ids: tuple[int, ...] = (),
        **options: Any,
    ) -> None:
        for flag in ("warn_nacl", "warn_dave"):  # a text bot: no "voice not supported" noise
            setattr(discord.VoiceClient, flag, False)
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: switch it on in the developer portal
        super().__init__(intents=intents, allowed_mentions=NO_MENTIONS, **options)
        self.chat = chat
        self.tree: app_commands.CommandTree[Any] = app_commands.CommandTree(self)
        install_commands(self.tree)
        self.guild_ids = guild_ids
        self.synced = asyncio.Event()

    async def setup_hook(self) -> None:
        """Sync slash commands: per configured guild (instant), else globally."""
        try:
            if self.guild_ids:
                for gid in self.guild_ids:
                    guild = discord.Object(id=gid)
                    self.tree.copy_global_to(guild=guild)
                    await self.tree.sync(guild=guild)
            else:
                await self.tree.sync()
        except discord.HTTPException as exc:
            log.error("slash commands were not synced: HTTP %s", exc.status)
        self.synced.set()

    async def on_message(self, message: discord.Message) -> None:
        if self.user is None:
            return
        await self.chat.on_message(self.user.id, message)
