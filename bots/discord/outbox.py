"""Discord's side of the :class:`~bots.chat.outbox.Outbox` seam: REST calls for one reply.

Discord renders Markdown itself, so every style sends the same content (cut so that each
message renders on its own: :mod:`bots.discord.chunks`). No message ever pings
anyone (``@everyone``, roles, users, or the replied-to author): model output is hostile.
discord.py's errors become the layer's: 429 → :class:`RetryLater` (discord.py retries the
ones carrying Discord's ``Via`` header itself; proxies and fakes may omit it), ``NotFound`` →
:class:`MessageGone`, other 4xx → :class:`Rejected`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import discord

from bots.chat.outbox import MessageGone, Outbox, Rejected, RetryLater, Style
from bots.discord.chunks import discord_chunks_async as chunks

NO_MENTIONS = discord.AllowedMentions.none()


def rate_limit_of(exc: discord.HTTPException) -> float | None:
    """``retry_after`` of a 429 that discord.py raised instead of retrying, else None."""
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
def translated() -> Iterator[None]:
    try:
        yield
    except discord.NotFound as exc:
        raise MessageGone(str(exc.status)) from None
    except discord.RateLimited as exc:
        raise RetryLater(exc.retry_after) from None
    except discord.HTTPException as exc:
        retry_after = rate_limit_of(exc)
        if retry_after is not None:
            raise RetryLater(retry_after) from None
        if 400 <= exc.status < 500:
            raise Rejected(f"HTTP {exc.status}") from None
        raise


@dataclass
class ChannelOutbox:
    """A reply in a channel: the first message references the person's, follow-ups don't."""

    channel: discord.abc.Messageable
    reference: discord.Message | None = None
    _sent_any: bool = field(default=False, init=False)

    async def split(self, text: str, *, suffix: str = "") -> list[str]:
        return await chunks(text, suffix=suffix)

    def restyles(self, chunk: str) -> bool:
        return False

    async def send(self, text: str, style: Style) -> discord.Message:
        with translated():
            if self.reference is not None and not self._sent_any:
                ref = self.reference.to_reference(fail_if_not_exists=False)
                sent = await self.channel.send(
                    text, reference=ref, mention_author=False, allowed_mentions=NO_MENTIONS
                )
            else:
                sent = await self.channel.send(text, allowed_mentions=NO_MENTIONS)
        self._sent_any = True
        return sent

    async def edit(self, handle: discord.Message, text: str, style: Style) -> discord.Message:
        with translated():
            return await handle.edit(content=text, allowed_mentions=NO_MENTIONS)

    async def delete(self, handle: discord.Message) -> None:
        with translated():
            await handle.delete()

    def message_id(self, handle: discord.Message) -> str:
        return str(handle.id)


@dataclass
class InteractionOutbox(ChannelOutbox):
    """An answer to a deferred slash command: the original response, then follow-ups."""

    interaction: discord.Interaction[Any] | None = None

    async def send(self, text: str, style: Style) -> discord.Message:
        assert self.interaction is not None
        with translated():
            if not self._sent_any:
                sent: discord.Message = await self.interaction.edit_original_response(
                    content=text, allowed_mentions=NO_MENTIONS
                )
            else:
                sent = await self.interaction.followup.send(
                    text, wait=True, allowed_mentions=NO_MENTIONS
                )
        self._sent_any = True
        return sent


@dataclass
class NoteOutbox(ChannelOutbox):
    """A command's short answer, seen only by the person who used it (ephemeral)."""

    interaction: discord.Interaction[Any] | None = None

    async def send(self, text: str, style: Style) -> discord.Message:
        assert self.interaction is not None
        with translated():
            if not self.interaction.response.is_done():
                result = await self.interaction.response.send_message(
                    text, ephemeral=True, allowed_mentions=NO_MENTIONS
                )
                if isinstance(result.resource, discord.InteractionMessage):
                    return result.resource
                return await self.interaction.original_response()
            return await self.interaction.followup.send(
                text, ephemeral=True, wait=True, allowed_mentions=NO_MENTIONS
            )


@dataclass
class ChannelPlace:
    """A channel, thread or DM a message came from."""

    channel: discord.abc.Messageable
    reference: discord.Message | None
    scope: str
    group: bool
    ephemeral: bool = False

    def outbox(self, *, note: bool = False) -> Outbox[Any]:
        return ChannelOutbox(self.channel, self.reference)

    async def typing(self) -> None:
        await self.channel.typing()

    async def acknowledge(self) -> None:
        return None


@dataclass
class InteractionPlace:
    """A slash command: notes are ephemeral, answers go into the (deferred) response."""

    interaction: discord.Interaction[Any]
    scope: str
    group: bool
    ephemeral: bool = True

    def outbox(self, *, note: bool = False) -> Outbox[Any]:
        channel: Any = self.interaction.channel
        if note:
            return NoteOutbox(channel, None, interaction=self.interaction)
        return InteractionOutbox(channel, None, interaction=self.interaction)

    async def typing(self) -> None:
        return None

    async def acknowledge(self) -> None:
        """Defer within Discord's three seconds; the answer then edits the response."""
        if not self.interaction.response.is_done():
            await self.interaction.response.defer(thinking=True)
