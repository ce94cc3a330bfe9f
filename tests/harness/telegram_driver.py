"""The scenario driver for Telegram: python-telegram-bot polling the fake Bot API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bots.chat.layer import Handled
from bots.telegram.frontend import TelegramFrontend, create
from bots.telegram.rules import conversation_key
from core.config import Config, Secret, TelegramConfig
from tests.fakes.telegram_api import FakeBotAPI, User
from tests.harness.driver import PRIVATE, WAIT_S, ChatDriver, Pending, Person, Reply, Where

TOKEN = "123456789:AAH-test-token-do-not-leak-0123456789"
GROUP_ID = -100200300
FORUM_ID = -100400500
MENTION = "@finechat_test_bot"


def tg_user(person: Person) -> User:
    return User(person.telegram_id, person.name, username=person.name.lower())


@dataclass
class TelegramDriver(ChatDriver):
    api: FakeBotAPI = field(default_factory=lambda: FakeBotAPI(TOKEN))
    platform: str = "telegram"
    frontend: TelegramFrontend | None = None

    def config(self) -> TelegramConfig:
        s = self.settings
        return TelegramConfig(
            token=Secret(TOKEN),
            base_url=self.api.base_url,
            edit_interval=s.edit_interval,
            group_edit_interval=s.edit_interval,
            typing_interval=s.typing_interval,
            reply_timeout=s.reply_timeout,
            poll_timeout=1,
            allowed_user_ids=[p.telegram_id for p in s.allowed_users],
            admin_ids=[p.telegram_id for p in s.admins],
            allow_private=s.allow_private,
        )

    def _frontend(self) -> Any:
        assert self.service is not None
        frontend = create(Config(telegram=self.config()), self.service)
        assert isinstance(frontend, TelegramFrontend)
        self.frontend = frontend
        return frontend

    def _layer(self, frontend: Any) -> Any:
        return frontend.bot.layer

    # -- places ----------------------------------------------------------------------------

    def place(self, person: Person, where: Where) -> tuple[int, str, int | None]:
        """(chat id, chat type, forum topic) of ``where`` for ``person``."""
        if where.kind == "private":
            return person.telegram_id, "private", None
        if where.kind == "group":
            return GROUP_ID, "supergroup", None
        return FORUM_ID, "supergroup", 100 + where.topic

    def key(self, person: Person, where: Where = PRIVATE) -> str:
        chat, _, topic = self.place(person, where)
        return conversation_key(chat, person.telegram_id, topic)

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
        chat, chat_type, topic = self.place(person, where)
        body = f"{MENTION} {text}" if mention and chat_type != "private" else text
        content = None
        if attachment:
            content = {"document": {"file_id": "f1", "file_unique_id": "u1", "file_name": "a.txt"}}
            if body:
                content["caption"] = body
        message_id = self.api.send_text(
            chat,
            tg_user(person),
            body,
            chat_type=chat_type,
            topic=topic,
            reply_to=(chat, int(reply_to)) if reply_to is not None else None,
            instead_of_text=content,
        )
        return Pending(self, (f"telegram:{chat}", str(message_id)))

    async def command(
        self, person: Person, name: str, argument: str = "", where: Where = PRIVATE
    ) -> Reply:
        text = f"/{name} {argument}".strip()
        pending = await self.send(person, text, where, mention=False)
        return await pending.reply()

    # -- what the fake saw -----------------------------------------------------------------

    def limit_next_edit(self, retry_after: float) -> None:
        self.api.fail("editMessageText", "retry_after", retry_after=retry_after)

    def edit_times(self) -> list[tuple[float, int]]:
        return [(c.at, c.status) for c in self.api.calls_to("editMessageText")]

    def typing_count(self, where: Where, person: Person) -> int:
        chat, _, topic = self.place(person, where)
        return sum(
            1
            for c in self.api.calls_to("sendChatAction", chat)
            if c.params.get("message_thread_id") == topic
        )

    def sent_texts(self) -> list[str]:
        return [str(c.params.get("text", "")) for c in self.api.calls_to("sendMessage")]

    async def wait_sent(self, predicate: Callable[[list[str]], bool]) -> None:
        await self.api.wait_for(lambda: predicate(self.sent_texts()), WAIT_S)

    def threads(self, reply: Reply) -> list[int | None]:
        chat = int(reply.scope.split(":", 1)[1])
        return [self.api.messages[(chat, int(mid))].thread_id for mid in reply.message_ids]

    def _match(self, handled: Handled) -> tuple[str, str]:
        return handled.scope, handled.message_id

    def _texts(self, handled: Handled) -> list[str]:
        chat = int(handled.scope.split(":", 1)[1])
        out = []
        for mid in handled.message_ids:
            message = self.api.messages.get((chat, int(mid)))
            if message is not None:
                out.append(message.text)
        return out
