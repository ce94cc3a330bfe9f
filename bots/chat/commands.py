"""The commands that answer with one message, with one wording on every platform.

``/ask`` and ``/retry`` start a model answer and are run by :mod:`bots.chat.layer`; the rest
are here. A :class:`~core.errors.FinechatError` (unknown model, nothing to retry…) is shown
as it is; the layer turns anything else into the apology.
"""

from __future__ import annotations

from bots.chat import texts
from bots.chat.incoming import CommandCall, persona_reset_requested
from core.service import ChatService

ADMIN_ONLY = frozenset({"model"})
STREAMING = frozenset({"ask", "retry"})
"""Commands answered by the model rather than by a note."""


class Commands:
    def __init__(self, service: ChatService, names: tuple[str, ...]) -> None:
        self.service = service
        self.names = names

    async def answer(self, call: CommandCall) -> str:
        """The note that answers ``call`` (any name but :data:`STREAMING`)."""
        service, key, argument = self.service, call.key, call.argument.strip()
        match call.name:
            case "start":
                return texts.greeting(
                    service.model_name, private=call.private, handle=call.handle, names=self.names
                )
            case "help":
                return texts.help_text(self.names)
            case "reset":
                await service.reset(key)
                return texts.RESET_DONE
            case "cancel":
                return texts.CANCELLING if service.cancel(key) else texts.NOTHING_TO_CANCEL
            case "persona":
                if not argument:
                    return texts.persona_shown(await service.get_persona(key))
                if persona_reset_requested(argument):
                    await service.set_persona(key, None)
                    return texts.PERSONA_RESET
                await service.set_persona(key, argument)
                return texts.PERSONA_SET
            case "stats":
                return texts.stats_text(await service.stats(key))
            case "forget":
                return texts.forgotten(await service.forget(key))
            case "model":
                if not argument:
                    available = service.available_models()
                    return texts.models_listing(available, await service.model_of(key))
                await service.set_model(key, argument)
                return texts.model_set(await service.model_of(key))
        return texts.help_text(self.names)
