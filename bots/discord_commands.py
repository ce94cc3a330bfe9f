"""Slash commands: /reset /retry /cancel /persona /stats and the admin-only /model.

Each command is a thin call into :class:`ChatService` for the invoking user's conversation in
the channel (or thread) where it is used. Answers meant only for the user are ephemeral; /retry
posts a new answer in the channel, streamed like a normal reply.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands

from bots.discord_bot import DiscordChat, InteractionOutbox, place_of
from bots.discord_events import conversation_key
from core.errors import FinechatError

log = logging.getLogger("finechat.discord.commands")

Handler = Callable[[discord.Interaction[Any]], Awaitable[None]]


def key_of(interaction: discord.Interaction[Any]) -> str:
    channel_id = interaction.channel_id or interaction.user.id
    return conversation_key(channel_id, interaction.user.id)


async def _say(interaction: discord.Interaction[Any], text: str, *, ephemeral: bool = True) -> None:
    """Answer once: the initial response, or a follow-up if the command already responded."""
    if interaction.response.is_done():
        await interaction.followup.send(
            text, ephemeral=ephemeral, allowed_mentions=discord.AllowedMentions.none()
        )
    else:
        await interaction.response.send_message(
            text, ephemeral=ephemeral, allowed_mentions=discord.AllowedMentions.none()
        )


def install_commands(tree: app_commands.CommandTree[Any], chat: DiscordChat) -> None:
    """Add the commands to ``tree``; every one checks access first and never leaks tracebacks."""

    async def guarded(
        interaction: discord.Interaction[Any], body: Handler, *, admin: bool = False
    ) -> None:
        refusal = chat.policy.refusal(
            place_of(interaction.user, interaction.channel, interaction.guild_id)
        )
        if refusal is None and admin and not chat.policy.is_admin(interaction.user.id):
            refusal = "Only the bot's admins can use this command."
        try:
            if refusal is not None:
                await _say(interaction, refusal)
                return
            await body(interaction)
        except FinechatError as exc:
            await _say(interaction, str(exc))
        except Exception as exc:
            log.error("/%s failed: %s: %s", _name(interaction), type(exc).__name__, exc)
            try:
                await _say(interaction, "Sorry — that command failed. Please try again.")
            except Exception:  # the interaction may have expired; nothing more to do
                log.warning("could not report the failure of /%s", _name(interaction))

    @app_commands.command(name="reset", description="Start a new conversation with me here")
    async def reset(interaction: discord.Interaction[Any]) -> None:
        async def body(i: discord.Interaction[Any]) -> None:
            await chat.service.reset(key_of(i))
            await _say(i, "🧹 New conversation started — I won't use the earlier messages.")

        await guarded(interaction, body)

    @app_commands.command(name="retry", description="Write a new answer to your last message")
    async def retry(interaction: discord.Interaction[Any]) -> None:
        async def body(i: discord.Interaction[Any]) -> None:
            await i.response.defer(thinking=True)
            channel_id = i.channel_id or i.user.id
            await chat.stream(chat.service.retry(key_of(i)), InteractionOutbox(i), channel_id)

        await guarded(interaction, body)

    @app_commands.command(name="cancel", description="Stop the answer I'm writing for you")
    async def cancel(interaction: discord.Interaction[Any]) -> None:
        async def body(i: discord.Interaction[Any]) -> None:
            stopped = chat.service.cancel(key_of(i))
            await _say(i, "⏹️ Stopped." if stopped else "I'm not writing anything for you now.")

        await guarded(interaction, body)

    @app_commands.command(name="persona", description="Show or set my system prompt for you here")
    @app_commands.describe(
        text="The new system prompt (leave empty to see the current one)",
        default="Go back to the default system prompt",
    )
    async def persona(
        interaction: discord.Interaction[Any], text: str | None = None, default: bool = False
    ) -> None:
        async def body(i: discord.Interaction[Any]) -> None:
            key = key_of(i)
            if default:
                await chat.service.set_persona(key, None)
                await _say(i, "Persona reset to the default.")
            elif text:
                await chat.service.set_persona(key, text)
                await _say(i, "✅ Persona set. It applies from your next message.")
            else:
                current = await chat.service.get_persona(key)
                await _say(i, f"Current persona:\n>>> {current[:1900]}")

        await guarded(interaction, body)

    @app_commands.command(name="stats", description="How much we have talked here")
    async def stats(interaction: discord.Interaction[Any]) -> None:
        async def body(i: discord.Interaction[Any]) -> None:
            s = await chat.service.stats(key_of(i))
            await _say(
                i,
                f"Messages: {s['messages']} · my replies: {s['replies']} · "
                f"tokens: {s['tokens']} · model: {s['model']}",
            )

        await guarded(interaction, body)

    @app_commands.command(name="forget", description="Delete everything I stored about you here")
    async def forget(interaction: discord.Interaction[Any]) -> None:
        async def body(i: discord.Interaction[Any]) -> None:
            removed = await chat.service.forget(key_of(i))
            await _say(i, f"🗑️ Deleted {removed} stored messages and your settings here.")

        await guarded(interaction, body)

    @app_commands.command(name="model", description="Show or choose the model (admins only)")
    @app_commands.describe(name="Model to use in this conversation")
    async def model(interaction: discord.Interaction[Any], name: str | None = None) -> None:
        async def body(i: discord.Interaction[Any]) -> None:
            available = chat.service.available_models()
            if not name:
                await _say(i, "Available models: " + ", ".join(available))
                return
            await chat.service.set_model(key_of(i), name)
            await _say(i, f"Model set to {name}.")

        await guarded(interaction, body, admin=True)

    @model.autocomplete("name")
    async def model_names(
        interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=m, value=m)
            for m in chat.service.available_models()
            if current.lower() in m.lower()
        ][:25]

    commands: tuple[app_commands.Command[Any, Any, None], ...] = (
        reset,
        retry,
        cancel,
        persona,
        stats,
        forget,
        model,
    )
    for command in commands:
        tree.add_command(command)


def _name(interaction: discord.Interaction[Any]) -> str:
    return interaction.command.name if interaction.command else "command"
