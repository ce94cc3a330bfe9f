"""What the chat service reports after every turn, for metrics and the turn log.

The service builds one :class:`TurnRecord` per ``reply``/``retry`` call — answered, cancelled,
refused or failed — and hands it to its observers (Prometheus counters, the JSON turn log).
Observers are called synchronously and must be cheap; one that raises is logged and skipped,
never allowed to break a conversation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from core.errors import (
    ConversationBusy,
    EngineBusy,
    EngineUnavailable,
    FinechatError,
    InvalidInput,
    LimitExceeded,
)

log = logging.getLogger("finechat.observe")


@dataclass(frozen=True)
class TurnRecord:
    """One turn's outcome and timings. Texts are present; observers decide whether to keep them."""

    key: str
    platform: str
    kind: str
    """``reply`` or ``retry``."""
    model: str
    outcome: str
    """``stop``/``length``/``cancelled`` when answered, else ``busy``, ``invalid``,
    ``unavailable``, ``overloaded``, ``limited``, ``abandoned`` or ``error``."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    dropped_turns: int = 0
    queue_position: int = 0
    ttft_seconds: float | None = None
    generation_seconds: float = 0.0
    wall_seconds: float = 0.0
    user_text: str = ""
    reply_text: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in {"stop", "length", "cancelled"}

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed after the first token (None when too few tokens to say)."""
        if self.completion_tokens < 2 or self.ttft_seconds is None:
            return None
        decode = self.generation_seconds - self.ttft_seconds
        return (self.completion_tokens - 1) / decode if decode > 0 else None


class TurnObserver(Protocol):
    def on_turn(self, record: TurnRecord) -> None: ...


def outcome_of(exc: BaseException) -> str:
    """A short, stable label for why a turn produced no answer."""
    if isinstance(exc, ConversationBusy):
        return "busy"
    if isinstance(exc, InvalidInput):
        return "invalid"
    if isinstance(exc, LimitExceeded):
        return "limited"
    if isinstance(exc, EngineBusy):
        return "overloaded"
    if isinstance(exc, EngineUnavailable):
        return "unavailable"
    if isinstance(exc, FinechatError):
        return "refused"
    return "error"


def notify(observers: list[TurnObserver], record: TurnRecord) -> None:
    for observer in observers:
        try:
            observer.on_turn(record)
        except Exception as exc:  # metrics must never break a conversation
            log.warning("turn observer %s failed: %s: %s", observer, type(exc).__name__, exc)
