"""Logging for operators: text or JSON lines, one line per turn, secrets never written.

* :func:`setup_logging` installs one stderr handler (``text`` or ``json``) with a
  :class:`SecretFilter`, so bot tokens and API keys are replaced by ``***`` in every record —
  including the URLs that HTTP client libraries log (Telegram puts the token in the path) and
  exception texts.
* :class:`TurnLogger` is a chat-service observer that writes one ``finechat.turn`` record per
  turn: the conversation key hashed (keyed BLAKE2, so ids are not reversible by guessing),
  platform, model, outcome, token counts and timings. Message texts only with
  ``[logging] content = true``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
from typing import Any

from core.config import Config, LoggingConfig
from core.errors import ConfigError
from core.observe import TurnRecord

TURN_LOGGER = "finechat.turn"
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
_MASK = "***"
#: Token shapes worth masking even if nobody registered them (Telegram bot tokens, bearer keys).
_PATTERNS = [
    re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
]

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Mask ``value`` in every log line from now on (tokens, API keys)."""
    value = value.strip()
    if len(value) >= 6:
        with _lock:
            _secrets.add(value)


def register_config_secrets(config: Config) -> None:
    for token in (config.discord.token, config.telegram.token):
        if token:
            register_secret(token.reveal())


def scrub(text: str) -> str:
    """``text`` with registered secrets and token-shaped strings masked."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    text = _PATTERNS[0].sub(_MASK, text)
    return _PATTERNS[1].sub(lambda m: m.group(1) + _MASK, text)


class SecretFilter(logging.Filter):
    """Rewrites each record's message (and exception text) with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what we can
            message = str(record.msg)
        clean = scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus structured ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_text or record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return scrub(json.dumps(out, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """The usual text line, with a turn record's fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return scrub(line)


def _text_value(value: Any) -> str:
    if isinstance(value, str) and (not value or any(c.isspace() for c in value)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


#: Libraries whose DEBUG output carries message payloads (updates, events, SQL parameters).
PAYLOAD_LOGGERS = (
    "telegram",
    "discord",
    "aiosqlite",
    "httpcore",
    "hpack",
    "aiohttp",
    "websockets",
    "gradio",
)


def setup_logging(
    level: str | None = None, fmt: str = "text", *, content: bool = False, stream: Any = None
) -> logging.Handler:
    """Install the finechat handler on the root logger (replacing one installed before).

    Without ``content``, platform libraries stay at INFO or above even under ``debug``: their
    debug lines hold whole updates, message texts included.
    """
    name = (level or "warning").upper()
    if name not in LEVELS:
        raise ConfigError(f"--log-level: unknown level {level!r}")
    if fmt not in {"text", "json"}:
        raise ConfigError(f"--log-format: must be text or json, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SecretFilter())
    handler.set_name("finechat")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "finechat"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    # httpx logs every request at INFO; keep it for debugging only.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if content else max(logging.INFO, root.level)
        )
    return handler


def hash_key(key: str, salt: str = "") -> str:
    """A short stable stand-in for a conversation key (keyed when ``salt`` is set)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=salt.encode("utf-8")[:64])
    return digest.hexdigest()


class TurnLogger:
    """Writes one structured ``finechat.turn`` line per turn (INFO; errors at WARNING)."""

    def __init__(self, config: LoggingConfig | None = None) -> None:
        self.config = config or LoggingConfig()
        self.log = logging.getLogger(TURN_LOGGER)

    def on_turn(self, record: TurnRecord) -> None:
        fields = turn_fields(record, salt=self.config.key_salt, content=self.config.content)
        level = (
            logging.INFO
            if record.ok or record.outcome in {"busy", "invalid", "limited"}
            else logging.WARNING
        )
        self.log.log(level, "turn", extra={"fields": fields})


def turn_fields(record: TurnRecord, *, salt: str = "", content: bool = False) -> dict[str, Any]:
    """The logged fields of a turn; texts only when ``content`` is on."""
    tps = record.tokens_per_second
    fields: dict[str, Any] = {
        "event": "turn",
        "conv": hash_key(record.key, salt),
        "platform": record.platform,
        "kind": record.kind,
        "model": record.model,
        "outcome": record.outcome,
        "prompt_tokens": record.prompt_tokens,
        "cached_tokens": record.cached_tokens,
        "completion_tokens": record.completion_tokens,
        "dropped_turns": record.dropped_turns,
        "queue_position": record.queue_position,
        "ttft_s": None if record.ttft_seconds is None else round(record.ttft_seconds, 4),
        "gen_s": round(record.generation_seconds, 4),
        "wall_s": round(record.wall_seconds, 4),
        "tok_s": None if tps is None else round(tps, 2),
    }
    if content:
        fields["user_text"] = record.user_text
        fields["reply_text"] = record.reply_text
    return fields
