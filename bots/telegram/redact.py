"""Keep the bot token out of every log line and error text.

The Bot API puts the token in the URL path (``/bot<token>/sendMessage``), and libraries log
URLs: httpx logs every request at INFO and PTB logs its base URL at DEBUG; network errors may
quote the URL too. A filter on a few named loggers would miss the next one, so while the bot
runs a log-record factory replaces the token in every record — message, arguments and
formatted traceback — before any handler sees it. :func:`scrub` does the same for exception
text the bot shows or re-raises.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

MASK = "<telegram-token>"

_lock = threading.Lock()
_secrets: set[str] = set()
_installed: Any = None
_previous: Any = None


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced."""
    for secret in list(_secrets):
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def _contains_secret(text: str) -> bool:
    return any(secret and secret in text for secret in list(_secrets))


def _scrubbing_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record: logging.LogRecord = _previous(*args, **kwargs)
    if not _secrets:
        return record
    try:
        message = record.getMessage()
    except Exception:  # a malformed format string: leave it to the handler to report
        message = str(record.msg)
    if _contains_secret(message):
        record.msg, record.args = scrub(message), None
    if record.exc_info and record.exc_info[0] is not None:
        formatted = logging.Formatter().formatException(record.exc_info)
        if _contains_secret(formatted):
            record.exc_text = scrub(formatted)
    return record


def register(secret: str) -> None:
    """Start masking ``secret`` in all log records from now on."""
    global _installed, _previous
    if not secret:
        return
    with _lock:
        _secrets.add(secret)
        if _installed is None:
            _previous = logging.getLogRecordFactory()
            logging.setLogRecordFactory(_scrubbing_factory)
            _installed = _scrubbing_factory


def unregister(secret: str) -> None:
    """Stop masking ``secret``; the factory is removed when nothing is left to mask."""
    global _installed, _previous
    with _lock:
        _secrets.discard(secret)
        if not _secrets and _installed is not None and logging.getLogRecordFactory() is _installed:
            logging.setLogRecordFactory(_previous)
            _installed = _previous = None
