"""Errors that carry a message safe to show to a person.

Front-ends print ``str(error)`` to users and terminals; these messages therefore never
contain tracebacks, file contents or secrets.
"""

from __future__ import annotations


class FinechatError(Exception):
    """Base class: the message is meant for the person at the other end."""


class ConfigError(FinechatError):
    """The configuration file or an environment override is invalid."""


class ModelLoadError(FinechatError):
    """A model file is missing, unreadable, or not a usable GGUF."""


class InvalidInput(FinechatError):
    """A chat message that cannot be answered as it is (empty, too long, not text)."""


class ConversationBusy(FinechatError):
    """The conversation already has a reply in flight."""


class EngineUnavailable(FinechatError):
    """The inference backend failed or was shut down."""


class EngineBusy(FinechatError):
    """The engine's admission queue is full; the message says when to try again."""


class LimitExceeded(FinechatError):
    """A person reached one of their ``[limits]``; nothing was stored or generated.

    The message names the limit and when it resets; ``retry_after`` is that wait in seconds
    (the HTTP API sends it as ``Retry-After``).
    """

    def __init__(self, message: str, *, retry_after: float, limit: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit
