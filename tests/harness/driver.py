"""One scenario API for both bots: ``say(person, text, where) → Reply`` and ``command``.

A :class:`ChatDriver` runs a real front-end (python-telegram-bot or discord.py) against its
fake server on 127.0.0.1, over a real :class:`~core.service.ChatService` with real SQLite
memory and, by default, the :class:`~tests.harness.engine.ScriptedEngine`. It waits on the
conversation layer's own record of each handled message (``ChatLayer.observers``), never on
sleeps, so a scenario reads like what a person does and sees:

    reply = await chat.say(ALICE, "recall", GROUP)
    assert reply.text == "You told me: …"

Scenarios name people and places in platform-free words; each driver maps them (a Telegram
supergroup with an @mention, a Discord channel with a <@mention>, a forum topic, a thread…).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from bots.chat.layer import Handled
from core.config import ChatConfig, GenerationConfig, LimitsConfig
from core.engine import Engine
from core.memory import MemoryStore
from core.service import ChatService

WAIT_S = 60.0
"""A safety net so a broken scenario fails instead of hanging; never a speed goal."""


@dataclass(frozen=True)
class Person:
    name: str
    telegram_id: int
    discord_id: int


ALICE = Person("Alice", 1001, 101)
BOB = Person("Bob", 1002, 102)
CAROL = Person("Carol", 1003, 103)
ADA = Person("Ada", 1004, 105)
"""The admin in every scenario unless it says otherwise."""


@dataclass(frozen=True)
class Where:
    kind: Literal["private", "group", "topic"]
    topic: int = 0
    """Which forum topic (Telegram) or thread (Discord) — any small number."""


PRIVATE = Where("private")
GROUP = Where("group")


def topic(n: int) -> Where:
    return Where("topic", n)


@dataclass(frozen=True)
class Settings:
    """What scenarios may change, in platform-free words."""

    allowed_users: tuple[Person, ...] = ()
    allow_private: bool = True
    admins: tuple[Person, ...] = (ADA,)
    reply_timeout: float = 600.0
    edit_interval: float = 0.02
    typing_interval: float = 4.0
    replies_per_minute: int = 0
    """``[limits] replies_per_minute`` (0 = no limit); admins are exempt as in ``serve``."""


@dataclass
class Reply:
    """What the person sees for one message or command, once the bot is done with it."""

    outcome: str
    texts: list[str]
    message_ids: list[str]
    scope: str
    ttft_seconds: float | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.texts)


@dataclass
class Pending:
    """A message sent and not yet answered (for scenarios with several at once)."""

    driver: ChatDriver
    match: tuple[str, str]

    async def reply(self) -> Reply:
        return await self.driver.wait(self.match)


@dataclass
class ChatDriver(ABC):
    """Shared lifecycle and bookkeeping; subclasses speak one platform's fake."""

    engine: Engine
    db: Path
    settings: Settings = field(default_factory=Settings)
    service: ChatService | None = None
    handled: dict[tuple[str, str], Handled] = field(default_factory=dict)
    _events: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    _store: MemoryStore | None = None
    _stop: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None

    platform: str = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, **changes: Any) -> None:
        """Open memory, build the service, start the bot with ``settings`` (+ ``changes``)."""
        self.settings = replace(self.settings, **changes)
        self._store = await MemoryStore.open(self.db)
        per_minute = self.settings.replies_per_minute
        self.service = ChatService(
            self.engine,
            self._store,
            chat=ChatConfig(system_prompt="You are a test bot.", max_input_chars=40_000),
            generation=GenerationConfig(temperature=0.0, max_tokens=20_000, seed=1),
            limits=LimitsConfig(replies_per_minute=per_minute) if per_minute else None,
            exempt_people=frozenset(self.person_id(a) for a in self.settings.admins),
        )
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        frontend = self._frontend()
        self._task = asyncio.create_task(frontend.run(self._stop, ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({self._task, waiter}, timeout=WAIT_S, return_when="FIRST_COMPLETED")
        waiter.cancel()
        if not ready.is_set():
            failed, self._task = self._task, None
            await self._store.aclose()
            self._store = None
            if failed.done():
                failed.result()  # the start-up error
            failed.cancel()
            raise AssertionError(f"{self.platform} bot did not start")
        self._layer(frontend).observers.append(self._observe)

    async def stop(self) -> None:
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, WAIT_S)
        if self._store is not None:
            await self._store.aclose()
        self._stop = self._task = self._store = None

    async def restart(self, **changes: Any) -> None:
        """A new process, as far as the bot can tell: new client, new store connection."""
        await self.stop()
        await self.start(**changes)

    # -- scenarios -------------------------------------------------------------------------

    async def say(
        self,
        person: Person,
        text: str,
        where: Where = PRIVATE,
        *,
        reply_to: str | None = None,
        attachment: bool = False,
        mention: bool = True,
    ) -> Reply:
        """``person`` writes ``text`` in ``where`` (addressing the bot there); the bot's reply."""
        pending = await self.send(
            person, text, where, reply_to=reply_to, attachment=attachment, mention=mention
        )
        return await pending.reply()

    @abstractmethod
    async def send(
        self,
        person: Person,
        text: str,
        where: Where = PRIVATE,
        *,
        reply_to: str | None = None,
        attachment: bool = False,
        mention: bool = True,
    ) -> Pending: ...

    @abstractmethod
    async def command(
        self, person: Person, name: str, argument: str = "", where: Where = PRIVATE
    ) -> Reply: ...

    def person_id(self, person: Person) -> str:
        """Who ``person`` is for ``[limits]``: the platform's user id, across all chats."""
        number = person.telegram_id if self.platform == "telegram" else person.discord_id
        return f"{self.platform}:{number}"

    @abstractmethod
    def key(self, person: Person, where: Where = PRIVATE) -> str:
        """The conversation key the bot uses for ``person`` in ``where``."""

    # -- what the fake saw -----------------------------------------------------------------

    @abstractmethod
    def limit_next_edit(self, retry_after: float) -> None:
        """The next message edit gets HTTP 429 with ``retry_after``."""

    @abstractmethod
    def edit_times(self) -> list[tuple[float, int]]:
        """(time, HTTP status) of every message edit, in order."""

    @abstractmethod
    def typing_count(self, where: Where, person: Person) -> int: ...

    @abstractmethod
    def sent_texts(self) -> list[str]:
        """Every text the bot posted (first versions), in order."""

    @abstractmethod
    async def wait_sent(self, predicate: Callable[[list[str]], bool]) -> None:
        """Until ``predicate(sent_texts())`` holds (re-checked on every API call)."""

    @abstractmethod
    def threads(self, reply: Reply) -> list[int | None]:
        """The forum topic / thread each message of ``reply`` went to (None: the chat)."""

    # -- bookkeeping -----------------------------------------------------------------------

    def _observe(self, handled: Handled) -> None:
        match = self._match(handled)
        self.handled[match] = handled
        self._events.setdefault(match, asyncio.Event()).set()

    async def wait(self, match: tuple[str, str]) -> Reply:
        event = self._events.setdefault(match, asyncio.Event())
        await asyncio.wait_for(event.wait(), WAIT_S)
        handled = self.handled[match]
        return Reply(
            handled.outcome,
            self._texts(handled),
            list(handled.message_ids),
            handled.scope,
            handled.ttft_seconds,
        )

    @abstractmethod
    def _frontend(self) -> Any: ...

    @abstractmethod
    def _layer(self, frontend: Any) -> Any: ...

    @abstractmethod
    def _match(self, handled: Handled) -> tuple[str, str]: ...

    @abstractmethod
    def _texts(self, handled: Handled) -> list[str]:
        """What the person sees now of the bot's messages for ``handled``."""
