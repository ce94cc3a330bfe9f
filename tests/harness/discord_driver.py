"""The scenario driver for Discord: discord.py on the fake gateway and REST API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bots.chat.layer import Handled
from bots.discord.frontend import DiscordFrontend
from bots.discord.rules import conversation_key
from core.config import DiscordConfig, Secret
from tests.fakes import discord_api as dc
from tests.fakes.discord_api import FakeDiscord
from tests.harness.driver import PRIVATE, WAIT_S, ChatDriver, Pending, Person, Reply, Where

EDIT = r"/channels/\d+/messages/\d+"


@dataclass
class DiscordDriver(ChatDriver):
    fake: FakeDiscord = field(default_factory=FakeDiscord)
    platform: str = "discord"
    like_discord_429: bool = True
    """Rate limits carry Discord's ``Via`` header (discord.py waits by itself) or not."""
    auto_thread: bool = False
    frontend: DiscordFrontend | None = None
    _threads: dict[int, int] = field(default_factory=dict)

    def config(self) -> DiscordConfig:
        s = self.settings
        return DiscordConfig(
            token=Secret(dc.TOKEN),
            api_base_url=self.fake.url,
            gateway_url=self.fake.gateway_url,
            guild_ids=(dc.GUILD_ID,),
            edit_interval=s.edit_interval,
            reply_timeout=s.reply_timeout,
            allowed_users=tuple(p.discord_id for p in s.allowed_users),
            admin_ids=tuple(p.discord_id for p in s.admins),
            allow_dms=s.allow_private,
            auto_thread=self.auto_thread,
        )

    def _frontend(self) -> Any:
        assert self.service is not None
        self.frontend = DiscordFrontend(self.config(), self.service, guild_ready_timeout=0.05)
        return self.frontend

    def _layer(self, frontend: Any) -> Any:
        return frontend.layer

    # -- places ----------------------------------------------------------------------------

    async def channel(self, person: Person, where: Where) -> int:
        if where.kind == "private":
            return await self.fake.open_dm(person.discord_id)
        if where.kind == "group":
            return dc.CHANNEL_ID
        if where.topic not in self._threads:
            self._threads[where.topic] = await self.fake.create_thread(joined=True)
        return self._threads[where.topic]

    def key(self, person: Person, where: Where = PRIVATE) -> str:
        if where.kind == "private":
            channel = 7000 + person.discord_id  # FakeDiscord.open_dm
        elif where.kind == "group":
            channel = dc.CHANNEL_ID
        else:
            channel = self._threads[where.topic]
        return conversation_key(channel, person.discord_id)

    # -- driving ---------------------------------------------------------------------------

    async def send(
        self,
        person: Person,
        text: str,
        where: Where = PRIVATE,
        *,
        reply_to: str | None = None,
        attachment: bool = False,
        mention: bool = True,
    ) -> Pending:
        channel = await self.channel(person, where)
        addressed = mention and where.kind == "group"
        content = f"<@{dc.BOT_ID}> {text}" if addressed else text
        message_id = await self.fake.user_message(
            person.discord_id,
            content,
            channel_id=channel,
            guild=where.kind != "private",
            mentions=[dc.BOT_ID] if addressed else None,
            reply_to=int(reply_to) if reply_to is not None else None,
            attachments=[{"filename": "a.txt", "content_type": "text/plain"}]
            if attachment
            else None,
        )
        return Pending(self, ("", str(message_id)))

    async def command(
        self, person: Person, name: str, argument: str = "", where: Where = PRIVATE
    ) -> Reply:
        options: dict[str, Any] = {}
        if argument:
            if name == "persona":
                options = {"default": True} if argument == "reset" else {"text": argument}
            else:
                options = {{"ask": "question", "model": "name"}[name]: argument}
        token = await self.fake.interaction(
            person.discord_id,
            name,
            options,
            channel_id=await self.channel(person, where),
            guild=where.kind != "private",
        )
        return await self.wait(("", str(self.fake.interaction_ids[token])))

    # -- what the fake saw -----------------------------------------------------------------

    def limit_next_edit(self, retry_after: float) -> None:
        self.fake.rate_limit_next("PATCH", EDIT, retry_after, like_discord=self.like_discord_429)

    def edit_times(self) -> list[tuple[float, int]]:
        return [(c.at, c.status) for c in self.fake.find("PATCH", EDIT)]

    def typing_count(self, where: Where, person: Person) -> int:
        channel = 7000 + person.discord_id if where.kind == "private" else None
        if where.kind == "group":
            channel = dc.CHANNEL_ID
        elif where.kind == "topic":
            channel = self._threads.get(where.topic)
        return len(self.fake.find("POST", rf"/channels/{channel}/typing"))

    def sent_texts(self) -> list[str]:
        sends = self.fake.find("POST", r"/channels/\d+/messages") + [
            c for c in self.fake.calls if c.method == "POST" and "/webhooks/" in c.path
        ]
        return [str((c.body or {}).get("content", "")) for c in sorted(sends, key=lambda c: c.at)]

    async def wait_sent(self, predicate: Callable[[list[str]], bool]) -> None:
        await self.fake.wait_for(lambda _: predicate(self.sent_texts()), WAIT_S)

    def threads(self, reply: Reply) -> list[int | None]:
        out: list[int | None] = []
        for mid in reply.message_ids:
            channel = int(self.fake.messages[int(mid)]["channel_id"])
            out.append(channel if channel in self.fake.threads else None)
        return out

    def _match(self, handled: Handled) -> tuple[str, str]:
        return "", handled.message_id

    def _texts(self, handled: Handled) -> list[str]:
        return [
            str(self.fake.messages[int(mid)]["content"])
            for mid in handled.message_ids
            if mid and int(mid) in self.fake.messages
        ]
