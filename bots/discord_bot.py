"""The Discord adapter: discord.py events in, :class:`ChatService` calls out.

:class:`DiscordChat` holds the dependencies (service, access policy, edit pacer) and does the
bridging; :class:`FinechatClient` is a thin ``discord.Client`` that forwards ``on_message`` to it
and owns the slash-command tree (bots/discord_commands.py). Nothing here is global: the front-end
(bots/discord_frontend.py) builds both and passes everything in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import discord
from discord import app_commands

from bots.discord_access import AccessPolicy, Place
from bots.discord_events import (
    Incoming,
    conversation_key,
    prompt_text,
    should_answer,
    thread_name,
)
from bots.discord_stream import EditPacer, GoneError, LiveReply, Outbox, RetryLater
from core.errors import FinechatError
from core.service import ChatService, Delta, Done, ReplyEvent, Started

log = logging.getLogger("finechat.discord")

NO_MENTIONS = discord.AllowedMentions.none()
"""Model output can never ping anyone (@everyone, roles, users, or the replied-to author)."""

APOLOGY = "Sorry — something went wrong while answering. Please try again in a moment."
TYPING_REFRESH_S = 8.0  # Discord shows "typing…" for about 10 s per request
MESSAGE_LIMIT = 2000
REFUSAL_QUIET_S = 600.0  # after telling a user "not allowed", stay silent this long


# -- outboxes: where a streamed answer is written ---------------------------------------------


def rate_limit_of(exc: discord.HTTPException) -> float | None:
    """``retry_after`` of a 429 that discord.py raised instead of retrying (it retries only
    429s carrying Discord's ``Via`` header; proxies and fakes may omit it), else None."""
    if isinstance(exc, discord.RateLimited):
        return exc.retry_after
    if exc.status != 429:
        return None
    headers = getattr(exc.response, "headers", None) or {}
    for name in ("X-RateLimit-Reset-After", "Retry-After"):
        with contextlib.suppress(TypeError, ValueError, KeyError):
            return max(0.0, float(headers[name]))
    body: Any = getattr(exc.response, "_body", None)  # aiohttp keeps the body it read
    with contextlib.suppress(TypeError, ValueError, KeyError, AttributeError):
        return max(0.0, float(json.loads(body)["retry_after"]))
    return 1.0


@contextlib.contextmanager
def _outbox_errors() -> Iterator[None]:
    try:
        yield
    except discord.NotFound:
        raise GoneError from None
    except discord.HTTPException as exc:
        retry_after = rate_limit_of(exc)
        if retry_after is None:
            raise
        raise RetryLater(retry_after) from None


class ChannelOutbox:
    """Reply in a channel: the first message references the user's, follow-ups don't."""

    def __init__(self, channel: discord.abc.Messageable, reference: discord.Message | None) -> None:
        self.channel = channel
        self.reference = reference

    async def send(self, content: str, *, first: bool) -> discord.Message:
        with _outbox_errors():
            if first and self.reference is not None:
                ref = self.reference.to_reference(fail_if_not_exists=False)
                return await self.channel.send(
                    content, reference=ref, mention_author=False, allowed_mentions=NO_MENTIONS
                )
            return await self.channel.send(content, allowed_mentions=NO_MENTIONS)

    async def edit(self, handle: discord.Message, content: str) -> discord.Message:
        with _outbox_errors():
            return await handle.edit(content=content, allowed_mentions=NO_MENTIONS)

    async def delete(self, handle: discord.Message) -> None:
        await handle.delete()


class InteractionOutbox:
    """Answer a deferred slash command: the original response, then follow-ups."""

    def __init__(self, interaction: discord.Interaction[Any]) -> None:
        self.interaction = interaction

    async def send(self, content: str, *, first: bool) -> discord.Message:
        with _outbox_errors():
            if first:
                return await self.interaction.edit_original_response(
                    content=content, allowed_mentions=NO_MENTIONS
                )
            return await self.interaction.followup.send(
                content, wait=True, allowed_mentions=NO_MENTIONS
            )

    async def edit(self, handle: discord.Message, content: str) -> discord.Message:
        with _outbox_errors():
            return await handle.edit(content=content, allowed_mentions=NO_MENTIONS)

    async def delete(self, handle: discord.Message) -> None:
        await handle.delete()


# -- translation: discord.py objects to plain facts ---------------------------------------------


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


def place_of(user: discord.User | discord.Member, channel: Any, guild_id: int | None) -> Place:
    roles = frozenset(r.id for r in user.roles) if isinstance(user, discord.Member) else frozenset()
    return Place(
        user_id=user.id,
        role_ids=roles,
        channel_ids=channel_chain(channel) if channel is not None else (),
        is_dm=guild_id is None,
    )


def incoming_from(message: discord.Message, bot_id: int, reply_to_bot: int | None) -> Incoming:
    channel = message.channel
    is_thread = isinstance(channel, discord.Thread)
    return Incoming(
        message_id=message.id,
        author_id=message.author.id,
        author_is_bot=message.author.bot,
        content=message.content,
        channel_id=channel.id,
        guild_id=message.guild.id if message.guild else None,
        is_dm=message.guild is None,
        is_thread=is_thread,
        bot_in_thread=isinstance(channel, discord.Thread)
        and (channel.owner_id == bot_id or channel.me is not None),
        mentions_bot=any(u.id == bot_id for u in message.mentions),
        reply_to_bot_message_id=reply_to_bot,
    )


# -- the bridge ---------------------------------------------------------------------------------


@dataclass
class DiscordChat:
    """Everything the Discord adapter needs, passed in (no globals)."""

    service: ChatService
    policy: AccessPolicy
    pacer: EditPacer
    auto_thread: bool = False
    last_done: Done | None = None
    """The latest finished reply (timings for diagnostics and the latency test)."""
    delivered: int = 0
    """Replies fully written to Discord so far (answers and error notes alike)."""
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)
    _refused: dict[tuple[int, int], float] = field(default_factory=dict, repr=False)

    async def wait_delivered(self, count: int, limit: float = 60.0) -> None:
        """Wait until ``count`` replies have been delivered (monitoring, tests)."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.delivered >= count), limit)

    async def _mark_delivered(self) -> None:
        async with self._progress:
            self.delivered += 1
            self._progress.notify_all()

    async def on_message(self, bot_id: int, message: discord.Message) -> None:
        try:
            await self._on_message(bot_id, message)
        except Exception as exc:  # never let one message take the bot down; never show a traceback
            log.error("message %s failed: %s", message.id, _describe(exc))

    async def _on_message(self, bot_id: int, message: discord.Message) -> None:
        if message.author.bot or message.author.id == bot_id:
            return
        reply_to_bot = await self._replied_bot_message(bot_id, message)
        incoming = incoming_from(message, bot_id, reply_to_bot)
        if not should_answer(incoming, bot_id=bot_id):
            return
        try:
            await self._answer(bot_id, message, incoming)
        except Exception as exc:  # the person asked us: they get a short apology, never a trace
            log.error("message %s failed: %s", message.id, _describe(exc))
            with contextlib.suppress(Exception):
                await message.reply(APOLOGY, mention_author=False, allowed_mentions=NO_MENTIONS)

    async def _answer(self, bot_id: int, message: discord.Message, incoming: Incoming) -> None:
        reply_to_bot = incoming.reply_to_bot_message_id
        guild_id = incoming.guild_id
        refusal = self.policy.refusal(place_of(message.author, message.channel, guild_id))
        if refusal is not None:
            log.info("refused user %s in channel %s", message.author.id, incoming.channel_id)
            if self._should_tell_refusal(message.author.id, incoming.channel_id):
                await message.reply(refusal, mention_author=False, allowed_mentions=NO_MENTIONS)
            return
        text = prompt_text(message.content, bot_id=bot_id)
        if not text:
            await message.reply(
                "Yes? Write your question after the mention.",
                mention_author=False,
                allowed_mentions=NO_MENTIONS,
            )
            return
        channel: discord.abc.Messageable = message.channel
        reference: discord.Message | None = message
        if (
            self.auto_thread
            and guild_id is not None
            and not incoming.is_thread
            and reply_to_bot is None
            and isinstance(message.channel, discord.TextChannel)
        ):
            try:
                channel = await message.create_thread(name=thread_name(text))
                reference = None
            except discord.HTTPException as exc:  # no permission: answer in the channel
                log.warning("auto_thread: could not open a thread: %s", _describe(exc))
        channel_id = getattr(channel, "id", incoming.channel_id)
        key = conversation_key(channel_id, message.author.id)
        parent_id = await self._parent_turn(key, reply_to_bot)
        events = self.service.reply(
            key, text, parent_id=parent_id, platform_message_id=str(message.id)
        )
        await self.stream(events, ChannelOutbox(channel, reference), channel_id, channel)

    def _should_tell_refusal(self, user_id: int, channel_id: int) -> bool:
        """One refusal note per user and channel per quiet period: no spam, no ping-pong."""
        now = time.monotonic()
        last = self._refused.get((user_id, channel_id))
        if last is not None and now - last < REFUSAL_QUIET_S:
            return False
        if len(self._refused) > 10_000:
            self._refused.clear()
        self._refused[(user_id, channel_id)] = now
        return True

    async def _replied_bot_message(self, bot_id: int, message: discord.Message) -> int | None:
        ref = message.reference
        if ref is None or ref.message_id is None:
            return None
        resolved = ref.resolved
        if isinstance(resolved, discord.Message):
            return ref.message_id if resolved.author.id == bot_id else None
        # Not resolved by Discord (cold cache): ask our own memory, which knows our messages.
        turn = await self.service.store.find_by_platform_id("discord:", str(ref.message_id))
        return ref.message_id if turn is not None and turn.role == "assistant" else None

    async def _parent_turn(self, key: str, bot_message_id: int | None) -> int | None:
        """The stored answer a reply continues from (a branch), if it is in this user's memory."""
        if bot_message_id is None:
            return None
        store = self.service.store
        turn = await store.find_by_platform_id(key, str(bot_message_id))
        if turn is None or turn.role != "assistant":
            return None
        if await store.conversation_key(turn.conversation_id) != key:
            return None  # someone else's answer: this user continues their own conversation
        return turn.id

    async def stream(
        self,
        events: AsyncIterator[ReplyEvent],
        outbox: Outbox[discord.Message],
        channel_id: int,
        typing_target: discord.abc.Messageable | None = None,
    ) -> list[discord.Message]:
        """Write a reply stream to Discord: typing during prefill, then paced edits."""
        live: LiveReply[discord.Message] = LiveReply(
            outbox, self.pacer, channel_id, limit=MESSAGE_LIMIT
        )
        typing = asyncio.create_task(_keep_typing(typing_target)) if typing_target else None
        try:
            async for event in events:
                if isinstance(event, Started):
                    if event.queue_position > 0:
                        live.notice(
                            f"⏳ The model is busy — {event.queue_position} ahead of you in the queue…"
                        )
                elif isinstance(event, Delta):
                    if typing is not None:
                        typing.cancel()
                    live.feed(event.text)
                elif isinstance(event, Done):
                    self.last_done = event
                    if typing is not None:
                        typing.cancel()
                    handles = await live.finish(_final_text(event))
                    if event.message_id is not None and handles:
                        await self.service.store.set_platform_message_id(
                            event.message_id, str(handles[-1].id)
                        )
                    return handles
        except FinechatError as exc:
            await _finish_with(live, str(exc))
        except Exception as exc:
            log.error("reply failed: %s", _describe(exc))
            await _finish_with(live, APOLOGY)
        finally:
            if typing is not None:
                typing.cancel()
            await self._mark_delivered()
        return live.handles


def _final_text(done: Done) -> str:
    if done.finish_reason == "cancelled":
        return f"{done.text}\n\n*(stopped)*" if done.text else "*(stopped)*"
    if done.finish_reason == "error":
        return f"{done.text}\n\n{APOLOGY}" if done.text else APOLOGY
    return done.text or "…(no answer)"


async def _finish_with(live: LiveReply[discord.Message], message: str) -> None:
    try:
        await live.finish(message)
    except Exception as exc:
        log.error("could not deliver an error message: %s", _describe(exc))


async def _keep_typing(channel: discord.abc.Messageable) -> None:
    with contextlib.suppress(Exception):
        while True:
            await channel.typing()
            await asyncio.sleep(TYPING_REFRESH_S)


def _describe(exc: BaseException) -> str:
    """An exception for the log: type and message, never request headers (tokens)."""
    return f"{type(exc).__name__}: {exc}"


# -- the client ---------------------------------------------------------------------------------


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
            log.error("slash commands were not synced: %s", _describe(exc))
        self.synced.set()

    async def on_message(self, message: discord.Message) -> None:
        if self.user is None:
            return
        await self.chat.on_message(self.user.id, message)
