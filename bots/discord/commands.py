"""Slash commands: thin declarations over :mod:`bots.chat.commands`.

Each command turns its options into one :class:`~bots.chat.incoming.CommandCall` for the
invoking person's conversation in the channel (or thread) where it is used; the layer checks
access, answers (notes are ephemeral) and streams ``/ask`` and ``/retry`` answers into the
deferred response.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bots.chat.incoming import CommandCall
from bots.chat.texts import COMMANDS
from bots.discord import rules
from bots.discord.client import DiscordChat, where_of
from bots.discord.outbox import InteractionPlace
from bots.discord.rules import AccessPolicy

NAMES = tuple(c.name for c in COMMANDS if c.name != "start")
"""Discord's commands (``start`` is a Telegram convention)."""
_DESCRIPTIONS = {c.name: c.description[:100] for c in COMMANDS}


def call_of(
    interaction: discord.Interaction[Any], name: str, argument: str, policy: AccessPolicy
) -> CommandCall:
    channel_id = interaction.channel_id or interaction.user.id
    me = interaction.client.user
    return CommandCall(
        scope=rules.scope_of(channel_id),
        message_id=str(interaction.id),
        key=rules.conversation_key(channel_id, interaction.user.id),
        name=name,
        argument=argument,
        refusal=policy.refusal(
            where_of(interaction.user, interaction.channel, interaction.guild_id)
        ),
        is_admin=policy.is_admin(interaction.user.id),
        private=interaction.guild_id is None,
        handle=f"@{me.display_name}" if me is not None else "me",
    )


def install_commands(tree: app_commands.CommandTree[Any], chat: DiscordChat) -> None:
    """Add the commands to ``tree``; each reads ``chat.policy`` when used (so a reloaded
    access list applies to commands and messages alike)."""
    layer = chat.layer

    async def run(interaction: discord.Interaction[Any], name: str, argument: str = "") -> None:
        call = call_of(interaction, name, argument, chat.policy)
        place = InteractionPlace(interaction, call.scope, group=interaction.guild_id is not None)
        await layer.command(call, place)

    def simple(name: str) -> app_commands.Command[Any, Any, None]:
        async def callback(interaction: discord.Interaction[Any]) -> None:
            await run(interaction, name)

        return app_commands.Command(name=name, description=_DESCRIPTIONS[name], callback=callback)

    @app_commands.command(name="ask", description=_DESCRIPTIONS["ask"])
    @app_commands.describe(question="What you want to ask")
    async def ask(interaction: discord.Interaction[Any], question: str) -> None:
        await run(interaction, "ask", question)

    @app_commands.command(name="persona", description=_DESCRIPTIONS["persona"])
    @app_commands.describe(
        text="The new system prompt (leave empty to see the current one)",
        default="Go back to the default system prompt",
    )
    async def persona(
        interaction: discord.Interaction[Any], text: str | None = None, default: bool = False
    ) -> None:
        await run(interaction, "persona", "reset" if default else (text or ""))

    @app_commands.command(name="model", description=_DESCRIPTIONS["model"])
    @app_commands.describe(name="Model to use in this conversation")
    async def model(interaction: discord.Interaction[Any], name: str | None = None) -> None:
        await run(interaction, "model", name or "")

    @model.autocomplete("name")
    async def model_names(
        interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=m, value=m)
            for m in layer.service.available_models()
            if current.lower() in m.lower()
        ][:25]

    special: dict[str, app_commands.Command[Any, Any, None]] = {
        "ask": ask,
        "persona": persona,
        "model": model,
    }
    for name in NAMES:
        tree.add_command(special[name] if name in special else simple(name))
