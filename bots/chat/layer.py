"""The conversation layer: what happens to a message or command once a platform hands it over.

Platform adapters translate their library's events into :class:`~bots.chat.incoming.Incoming`
and :class:`~bots.chat.incoming.CommandCall` (applying their own addressing and access rules)
and a :class:`~bots.chat.outbox.Place` to answer in; :class:`ChatLayer` does the rest, the
same way on every platform: refusals (once per quiet period), the attachment note, reply
chains (a reply to one of the bot's answers continues from it, a reply to anything else is
quoted), the model answer through the :class:`~bots.chat.runner.TurnRunner`, and the
commands. Every message handed in ends in one :class:`Handled` record for the observers
(logs, metrics, tests), including the ones it ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bots.chat import texts
from bots.chat.commands import ADMIN_ONLY, Commands
from bots.chat.incoming import CommandCall, Incoming, ReplyTo, quote_into_prompt
from bots.chat.live import LiveReply
from bots.chat.outbox import Place, Style
from bots.chat.pacer import Pacers
from bots.chat.refusals import QUIET_S, RefusalThrottle
from bots.chat.runner import TurnResult, TurnRunner, TurnSettings
from core.errors import FinechatError
from core.service import ChatService

log = logging.getLogger("finechat.bots")


@dataclass(frozen=True)
class Handled:
    """How one incoming message or command ended."""

    scope: str
    message_id: str
    key: str
    outcome: str
    """``ignored``, ``refused``, ``noted`` (the bot said something itself), ``command``, or
    a turn's outcome: ``answered``, ``stopped``, ``timeout``, ``failed``, ``undelivered``."""
    message_ids: tuple[str, ...] = ()
    """The bot's messages for it, in order."""
    ttft_seconds: float | None = None
    first_message_seconds: float | None = None


Observer = Callable[[Handled], None]


class ChatLayer:
    """One per bot: holds the pacers, the runner, the refusal throttle and the commands."""

    def __init__(
        self,
        service: ChatService,
        pacers: Pacers,
        *,
        settings: TurnSettings | None = None,
        commands: tuple[str, ...] = texts.COMMAND_NAMES,
        refusal_quiet_s: float = QUIET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.pacers = pacers
        self.runner = TurnRunner(service, settings or TurnSettings(), pacers)
        self.commands = Commands(service, commands)
        self.refusals = RefusalThrottle(refusal_quiet_s, clock)
        self.observers: list[Observer] = []

    # -- entry points ----------------------------------------------------------------------

    async def message(self, incoming: Incoming, place: Place) -> Handled:
        """Handle one incoming message; never raises (failures become the apology)."""
        try:
            handled = await self._message(incoming, place)
        except Exception as exc:
            log.error("message failed: %s", type(exc).__name__)
            ids = await self.note(place, texts.APOLOGY)
            handled = self._handled(
                incoming.scope, incoming.message_id, incoming.key, "failed", ids
            )
        self._notify(handled)
        return handled

    async def command(self, call: CommandCall, place: Place) -> Handled:
        """Handle one command; never raises (failures become the apology)."""
        try:
            handled = await self._command(call, place)
        except Exception as exc:
            log.error("/%s failed: %s", call.name, type(exc).__name__)
            ids = await self.note(place, texts.APOLOGY)
            handled = self._handled(call.scope, call.message_id, call.key, "failed", ids)
        self._notify(handled)
        return handled

    async def note(self, place: Place, text: str) -> list[str]:
        """Post a short message from the bot itself (plain, split if long); the ids posted."""
        reply: LiveReply[Any] = LiveReply(
            place.outbox(note=True), self.pacers.get(place.scope, group=place.group)
        )
        try:
            return await reply.finish(text, Style.PLAIN)
        except Exception as exc:
            log.warning("could not post a note: %s", type(exc).__name__)
            return reply.message_ids

    async def shutdown(self, grace: float = 15.0) -> None:
        """Stop the answers in flight; each ends with the "restarting" note."""
        await self.runner.shutdown(grace)

    # -- messages --------------------------------------------------------------------------

    async def _message(self, incoming: Incoming, place: Place) -> Handled:
        scope, mid, key = incoming.scope, incoming.message_id, incoming.key
        if not incoming.addressed:
            return self._handled(scope, mid, key, "ignored")
        if incoming.refusal is not None:
            return await self._refuse(scope, mid, key, incoming.refusal, place)
        notes: list[str] = []
        text = incoming.text.strip()
        if incoming.attachments:
            note = texts.ATTACHMENTS_NOT_READ if text else texts.NOT_TEXT
            notes = await self.note(place, note)
        if not text:
            if not notes:
                notes = await self.note(place, texts.ONLY_MENTION)
            return self._handled(scope, mid, key, "noted", notes)
        result = await self._answer(place, key, text, incoming.reply_to, mid)
        return self._handled(scope, mid, key, result.outcome, notes, result)

    async def _answer(
        self, place: Place, key: str, text: str, reply_to: ReplyTo | None, message_id: str
    ) -> TurnResult:
        if self.runner.stopping:  # arrived during shutdown: nothing would finish it
            return TurnResult("stopped", tuple(await self.note(place, texts.SHUTDOWN)))
        parent_id: int | None = None
        if reply_to is not None and reply_to.from_self:
            parent_id = await self.service.parent_turn(key, reply_to.message_id)
            if parent_id is not None:
                reply_to = None  # the conversation itself holds that message
        prompt = quote_into_prompt(text, reply_to)
        await place.acknowledge()
        events = self.service.reply(
            key, prompt, parent_id=parent_id, platform_message_id=message_id
        )
        return await self.runner.run(place, key, events)

    async def _refuse(
        self, scope: str, mid: str, key: str, refusal: texts.Refusal, place: Place
    ) -> Handled:
        log.info("refused %s (%s)", scope, refusal.value)
        ids: list[str] = []
        if place.ephemeral or self.refusals.first(key):
            ids = await self.note(place, texts.REFUSALS[refusal])
        return self._handled(scope, mid, key, "refused", ids)

    # -- commands --------------------------------------------------------------------------

    async def _command(self, call: CommandCall, place: Place) -> Handled:
        scope, mid, key = call.scope, call.message_id, call.key
        refusal = call.refusal
        if refusal is None and call.name in ADMIN_ONLY and not call.is_admin:
            refusal = texts.Refusal.ADMIN_ONLY
        if refusal is not None:
            return await self._refuse(scope, mid, key, refusal, place)
        if call.name == "ask":
            text = call.argument.strip()
            if not text:
                return self._handled(
                    scope, mid, key, "noted", await self.note(place, texts.ASK_WHAT)
                )
            result = await self._answer(place, key, text, None, mid)
            return self._handled(scope, mid, key, result.outcome, (), result)
        if call.name == "retry":
            if self.runner.stopping:
                return self._handled(
                    scope, mid, key, "stopped", await self.note(place, texts.SHUTDOWN)
                )
            await place.acknowledge()
            result = await self.runner.run(place, key, self.service.retry(key))
            return self._handled(scope, mid, key, result.outcome, (), result)
        try:
            answer = await self.commands.answer(call)
        except FinechatError as exc:
            answer = str(exc)
        return self._handled(scope, mid, key, "command", await self.note(place, answer))

    # -- records ---------------------------------------------------------------------------

    @staticmethod
    def _handled(
        scope: str,
        mid: str,
        key: str,
        outcome: str,
        ids: list[str] | tuple[str, ...] = (),
        result: TurnResult | None = None,
    ) -> Handled:
        if result is None:
            return Handled(scope, mid, key, outcome, tuple(ids))
        return Handled(
            scope,
            mid,
            key,
            outcome,
            (*ids, *result.message_ids),
            result.ttft_seconds,
            result.first_message_seconds,
        )

    def _notify(self, handled: Handled) -> None:
        for observer in list(self.observers):
            try:
                observer(handled)
            except Exception as exc:  # an observer must never break a chat
                log.warning("observer failed: %s", type(exc).__name__)
