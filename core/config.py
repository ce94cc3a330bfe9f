"""One TOML file plus environment overrides, validated up front.

Validation happens at start so that a typo in ``finechat.toml`` fails with the name of the bad
key instead of surfacing later as a confusing runtime error. Secrets (bot tokens) are never
read from the TOML file itself: only from the environment or from a file the TOML points to,
and they are kept in :class:`Secret` so that ``repr`` and logging never reveal them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from core.errors import ConfigError


class Secret:
    """A string that never shows itself in ``repr``/``str`` (so never in logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class RemoteConfig:
    """An OpenAI-compatible server (llama-server, vLLM, Ollama, llama_cpp.server) as the engine.

    Set ``base_url`` (e.g. ``http://127.0.0.1:8080/v1``) to use it instead of a local GGUF. The
    API key is read only from the environment variable named by ``api_key_env``, never from TOML.
    ``tokenizer`` counts tokens: ``auto`` asks the endpoint (``/tokenize``, ``/extras/tokenize``);
    a local GGUF path (read vocabulary-only) serves endpoints that have no tokenizer.
    """

    base_url: str = ""
    """Endpoint root such as ``http://127.0.0.1:8080/v1`` (empty: serve a local GGUF)."""
    model: str = ""
    """Model id to request (empty: the one the endpoint lists first)."""
    api_key_env: str = "FINECHAT_REMOTE_API_KEY"
    """Name of the environment variable that holds the endpoint's API key (the key itself never goes in this file)."""
    tokenizer: str = "auto"
    """``auto`` (ask the endpoint to count tokens) or the path of a local GGUF to count them with."""
    connect_timeout: float = 5.0
    """Seconds to wait for a connection to the endpoint."""
    read_timeout: float = 60.0
    """Seconds to wait for the next piece of an answer."""
    retries: int = 2
    """Retries of a request that failed with 429, 5xx or a connection error (0-10)."""
    backoff: float = 0.5
    """Seconds before the first retry; doubled for each further one."""
    max_concurrent: int = 4
    """Requests sent to the endpoint at once; more wait in line."""
    extended_sampling: bool = True
    """Also send top_k and repeat_penalty (llama.cpp, vLLM and Ollama accept them; strict OpenAI servers may not)."""
    token_cache_mb: float = 16.0
    """Memory for remembered token counts of message bodies (history is re-counted each turn)."""


@dataclass(frozen=True)
class LoggingConfig:
    """Log format and privacy: message texts are logged only with ``content = true``.

    ``key_salt`` keys the hash that stands in for conversation keys in the turn log.
    """

    level: str = "warning"
    """debug, info, warning, error or critical."""
    format: str = "text"
    """``text`` for people, ``json`` (one object per line) for log collectors."""
    content: bool = False
    """Also log message texts (off: the turn log has sizes and timings only)."""
    key_salt: str = ""
    """Secret that keys the hash standing in for conversation keys in the turn log (empty: a random salt kept in the database)."""


@dataclass(frozen=True)
class ModelConfig:
    """Which GGUF to serve and how to load it.

    ``path`` wins over ``repo``/``file``; with neither, the bundled SmolLM2 is used.
    """

    path: str = ""
    """Local GGUF file to serve."""
    repo: str = ""
    """Hugging Face repository to download the GGUF from (with ``file``), once, into the hub cache."""
    file: str = ""
    """GGUF file name inside ``repo``."""
    revision: str = ""
    """Branch, tag or commit of ``repo`` (empty: the default branch)."""
    n_ctx: int = 4096
    """Context of each conversation slot, in tokens."""
    n_threads: int = 0
    """0 = every core this process may use. Never run two engines on the same cores."""
    n_batch: int = 256
    """Prompt tokens evaluated per llama.cpp batch."""
    name: str = ""
    """What users pick with ``/model`` (default: the GGUF's own name, or the table name)."""
    idle_unload_seconds: float = 900.0
    """Unload the model after this long without use (0 = keep it loaded)."""
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    """``[model.remote]``: serve through an OpenAI-compatible endpoint instead of a GGUF."""
    slots: int = 4
    """Conversations decoded together (continuous batching); each keeps its KV cache warm."""
    state_cache_mb: int = 512
    """Host RAM for KV states of conversations that lost their slot (0 disables)."""
    max_queue: int = 64
    """Waiting generations beyond which new ones are refused with a 'busy' answer."""


@dataclass(frozen=True)
class GenerationConfig:
    """Default sampling settings; a conversation may override them."""

    temperature: float = 0.7
    """0 = always the most likely token; higher = more varied (0-5)."""
    top_p: float = 0.95
    """Nucleus sampling: keep the smallest set of tokens whose probabilities add up to this (0-1]."""
    top_k: int = 40
    """Keep only the k most likely tokens (0 = no limit)."""
    repeat_penalty: float = 1.1
    """Penalty for repeating recent tokens (1 = none)."""
    max_tokens: int = 512
    """Longest answer, in tokens (must be smaller than model.n_ctx)."""
    seed: int = -1
    """Sampling seed (-1 = random each time)."""


@dataclass(frozen=True)
class ChatConfig:
    """Conversation rules shared by every front-end."""

    system_prompt: str = "You are a helpful, concise assistant."
    """The default persona (system prompt); a person may set their own."""
    max_input_chars: int = 16000
    """Longest message a person may send, in characters."""
    history_turns: int = 200
    """Most stored messages considered for the prompt (older ones are left out first)."""


@dataclass(frozen=True)
class LimitsConfig:
    """Per-person limits, counted across a person's chats on one platform (0 = no limit).

    A person is a Telegram or Discord user id, a web login, or the client address of an
    anonymous web visitor or an API client. Counts live in the database, so a restart does not
    reset them; bot admins are exempt.
    """

    replies_per_minute: int = 20
    """Replies (including retries) one person may start in any rolling 60 seconds."""
    tokens_per_day: int = 0
    """Completion tokens one person may receive in any rolling 24 hours."""
    settings_per_minute: int = 30
    """Persona and settings changes (and, on the web, renames, deletions and 👍/👎) one person may make in any rolling 60 seconds."""


@dataclass(frozen=True)
class ApiConfig:
    """Request limits of the OpenAI-compatible API (``/v1``)."""

    max_body_bytes: int = 1_048_576
    """Largest request body, in bytes; a bigger one is refused with 413."""
    max_messages: int = 64
    """Most messages one request may carry."""
    max_tokens: int = 2048
    """The most ``max_tokens`` a request may ask for (also capped by the model's context)."""


@dataclass(frozen=True)
class DatabaseConfig:
    """The SQLite memory: conversations, personas, settings, votes and feedback."""

    path: str = "finechat.sqlite"
    """The SQLite file (created on first use; WAL mode, safe to copy with ``sqlite3 .backup``)."""


@dataclass(frozen=True)
class WebConfig:
    """The web chat (Gradio page, arena, ``/healthz``, ``/metrics``, OpenAI-compatible API)."""

    enabled: bool = True
    """Run the web chat in ``finechat serve``."""
    host: str = "127.0.0.1"
    """Interface to listen on (``0.0.0.0`` = every interface; then set ``auth_file``)."""
    port: int = 7860
    """TCP port."""
    root_path: str = ""
    """URL prefix when served behind a reverse proxy (e.g. ``/finechat``)."""
    auth_file: str = ""
    """``user:password`` lines: the web chat asks for a login and keeps memory per user."""
    trusted_proxies: tuple[str, ...] = ()
    """Reverse proxies (addresses or CIDR networks) whose ``X-Forwarded-For`` is believed."""


@dataclass(frozen=True)
class DiscordConfig:
    """The Discord bot (bots/discord/). Id lists are Discord snowflakes; empty = no limit."""

    enabled: bool = True
    """Run the Discord bot in ``finechat serve`` when a token is set."""
    token_file: str = ""
    """File holding the bot token (``DISCORD_BOT_TOKEN`` wins when set)."""
    token: Secret = field(default_factory=lambda: Secret(""))
    """Only from ``DISCORD_BOT_TOKEN`` or ``token_file``, never from this file."""
    api_base_url: str = "https://discord.com/api/v10"
    """REST base (a Discord API proxy for shared rate limits, or a test fake)."""
    gateway_url: str = "wss://gateway.discord.gg/"
    """Gateway websocket URL (a proxy, or a test fake)."""
    allowed_users: tuple[int, ...] = ()
    """Only these users may talk to the bot (empty: everyone)."""
    blocked_users: tuple[int, ...] = ()
    """Users the bot ignores, whatever the other rules say."""
    allowed_roles: tuple[int, ...] = ()
    """Only members with one of these roles may talk to the bot (empty: any role)."""
    blocked_roles: tuple[int, ...] = ()
    """Members with one of these roles are ignored."""
    allowed_channels: tuple[int, ...] = ()
    """The bot answers only in these channels (empty: all). A thread inherits its parent channel's rule, a channel its category's."""
    blocked_channels: tuple[int, ...] = ()
    """Channels (or categories) where the bot never answers."""
    admin_ids: tuple[int, ...] = ()
    """Users who may use admin-only commands (/model); always allowed."""
    allow_dms: bool = True
    """Answer direct messages."""
    guild_ids: tuple[int, ...] = ()
    """Guilds whose slash commands are synced on start (instant); empty = global sync."""
    auto_thread: bool = False
    """Open a thread for each new conversation started by a mention in a channel."""
    edit_interval: float = 1.0
    """Seconds between streamed edits in one channel (Discord rate-limits edits)."""
    reply_timeout: float = 600.0
    """Seconds a reply may take (queue included) before the person gets an apology."""


@dataclass(frozen=True)
class TelegramConfig:
    """The Telegram bot (bots/telegram/). Id lists are Telegram ids; empty = no limit."""

    enabled: bool = True
    """Run the Telegram bot in ``finechat serve`` when a token is set."""
    token_file: str = ""
    """File holding the bot token (``TELEGRAM_BOT_TOKEN`` wins when set)."""
    token: Secret = field(default_factory=lambda: Secret(""))
    """Only from ``TELEGRAM_BOT_TOKEN`` or ``token_file``, never from this file."""
    base_url: str = "https://api.telegram.org"
    """Bot API server root (a self-hosted telegram-bot-api, or a test fake); ``/bot`` is added."""
    allowed_user_ids: list[int] = field(default_factory=list)
    """Only these users may talk to the bot (empty: everyone)."""
    blocked_user_ids: list[int] = field(default_factory=list)
    """Users the bot ignores, even when an allow list names them."""
    allowed_chat_ids: list[int] = field(default_factory=list)
    """Groups the bot answers in (empty: every group it is added to)."""
    admin_ids: list[int] = field(default_factory=list)
    """Users who may use admin-only commands (/model); always allowed."""
    allow_private: bool = True
    """Answer in private chats."""
    edit_interval: float = 1.0
    """Seconds between message edits in a private chat."""
    group_edit_interval: float = 3.0
    """Seconds between message edits in a group (Telegram allows ~20 messages a minute)."""
    typing_interval: float = 4.0
    """Seconds between "typing…" signals while an answer is being prepared."""
    reply_timeout: float = 600.0
    """Seconds a reply may take (queue included) before the person gets an apology."""
    poll_timeout: int = 30
    """getUpdates long-poll seconds."""


@dataclass(frozen=True)
class Config:
    """The whole configuration; every section has working defaults."""

    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    web: WebConfig = field(default_factory=WebConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    """Extra named models (``[models.NAME]`` tables); ``[model]`` stays the default."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)


#: Keys that may only come from the environment or a token file, never from TOML.
_SECRET_KEYS = {("discord", "token"), ("telegram", "token")}
#: Environment variables that hold secrets, per section.
TOKEN_ENV = {"discord": "DISCORD_BOT_TOKEN", "telegram": "TELEGRAM_BOT_TOKEN"}
#: Shorthand environment overrides (besides the generic FINECHAT_SECTION__KEY form).
_ENV_SHORTCUTS = {
    "FINECHAT_MODEL": ("model", "path"),
    "FINECHAT_DB": ("database", "path"),
}


def _coerce(value: Any, target: Any, where: str) -> Any:
    """Convert TOML/env values to the dataclass field type, or name the key that is wrong."""
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if target is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if target is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    origin = getattr(target, "__origin__", None)
    if origin in (list, tuple):
        (item_type,) = {a for a in target.__args__ if a is not Ellipsis}
        items = value
        if isinstance(value, str):  # environment: comma-separated
            items = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        out = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if target is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: cannot be set here")


def _apply_named(current: dict[str, ModelConfig], values: Mapping[str, Any], section: str) -> Any:
    """``[models.NAME]`` tables: each one a full model section, merged over what is there."""
    out = dict(current)
    for name, table in values.items():
        where = f"{section}.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: must be a table ([{where}])")
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError(f"{where}: model names may use letters, digits, '-', '_' and '.'")
        out[name] = _apply(out.get(name, ModelConfig()), table, where)
    return out


def _apply(section_obj: Any, values: Mapping[str, Any], section: str) -> Any:
    if isinstance(section_obj, dict):
        return _apply_named(section_obj, values, section)
    hints = get_type_hints(type(section_obj))
    known = {f.name for f in fields(section_obj)}
    updates: dict[str, Any] = {}
    for key, raw in values.items():
        where = f"{section}.{key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(known))})")
        if (section, key) in _SECRET_KEYS:
            env = TOKEN_ENV[section]
            raise ConfigError(
                f"{where}: tokens are not read from the config file; set {env} or {section}.token_file"
            )
        if is_dataclass(hints[key]):  # a nested table such as [model.remote]
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{where}: must be a table ([{where}])")
            updates[key] = _apply(getattr(section_obj, key), raw, where)
            continue
        updates[key] = _coerce(raw, hints[key], where)
    return replace(section_obj, **updates)


def _validate(cfg: Config) -> None:
    checks: list[tuple[bool, str]] = [
        (cfg.model.n_ctx >= 256, "model.n_ctx: must be at least 256"),
        (cfg.model.n_threads >= 0, "model.n_threads: must be >= 0 (0 = automatic)"),
        (cfg.model.n_batch >= 8, "model.n_batch: must be at least 8"),
        (1 <= cfg.model.slots <= 256, "model.slots: must be between 1 and 256"),
        (cfg.model.state_cache_mb >= 0, "model.state_cache_mb: must be >= 0"),
        (cfg.model.max_queue >= 0, "model.max_queue: must be >= 0"),
        (0.0 <= cfg.generation.temperature <= 5.0, "generation.temperature: must be in [0, 5]"),
        (0.0 < cfg.generation.top_p <= 1.0, "generation.top_p: must be in (0, 1]"),
        (cfg.generation.top_k >= 0, "generation.top_k: must be >= 0"),
        (cfg.generation.max_tokens >= 1, "generation.max_tokens: must be >= 1"),
        (
            cfg.generation.max_tokens < cfg.model.n_ctx,
            "generation.max_tokens: must be smaller than model.n_ctx",
        ),
        (cfg.chat.max_input_chars >= 1, "chat.max_input_chars: must be >= 1"),
        (cfg.chat.history_turns >= 1, "chat.history_turns: must be >= 1"),
        (0 < cfg.web.port < 65536, "web.port: must be a TCP port (1-65535)"),
        (bool(cfg.database.path), "database.path: must not be empty"),
        (cfg.discord.edit_interval >= 0.2, "discord.edit_interval: must be at least 0.2 seconds"),
        (cfg.discord.reply_timeout > 0, "discord.reply_timeout: must be greater than 0"),
        (
            cfg.discord.api_base_url.startswith(("http://", "https://")),
            "discord.api_base_url: must be an http(s) URL",
        ),
        (
            cfg.discord.gateway_url.startswith(("ws://", "wss://")),
            "discord.gateway_url: must be a ws(s) URL",
        ),
        (
            cfg.telegram.base_url.startswith(("http://", "https://")),
            "telegram.base_url: must start with http:// or https://",
        ),
        *(
            (getattr(cfg.telegram, key) > 0, f"telegram.{key}: must be greater than 0")
            for key in ("edit_interval", "group_edit_interval", "typing_interval", "reply_timeout")
        ),
        (
            0 <= cfg.telegram.poll_timeout <= 600,
            "telegram.poll_timeout: must be between 0 and 600 seconds",
        ),
        (
            not (cfg.model.repo and not cfg.model.file),
            "model.file: required when model.repo is set",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _validate_models(cfg)
    _validate_limits(cfg)


def _validate_limits(cfg: Config) -> None:
    """``[limits]``, ``[api]`` and the proxy list of ``[web]``."""
    lim, api = cfg.limits, cfg.api
    checks = [
        (lim.replies_per_minute >= 0, "limits.replies_per_minute: must be >= 0 (0 = no limit)"),
        (lim.tokens_per_day >= 0, "limits.tokens_per_day: must be >= 0 (0 = no limit)"),
        (lim.settings_per_minute >= 0, "limits.settings_per_minute: must be >= 0 (0 = no limit)"),
        (api.max_body_bytes >= 1024, "api.max_body_bytes: must be at least 1024"),
        (api.max_messages >= 1, "api.max_messages: must be >= 1"),
        (api.max_tokens >= 1, "api.max_tokens: must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    import ipaddress

    for i, proxy in enumerate(cfg.web.trusted_proxies):
        try:
            ipaddress.ip_network(proxy.strip(), strict=False)
        except ValueError:
            raise ConfigError(
                f"web.trusted_proxies[{i}]: {proxy!r} is not an IP address or network"
            ) from None


def _validate_models(cfg: Config) -> None:
    """Remote tables, named models and the logging section."""
    log = cfg.logging
    if log.format not in {"text", "json"}:
        raise ConfigError("logging.format: must be 'text' or 'json'")
    if log.level.lower() not in {"debug", "info", "warning", "error", "critical"}:
        raise ConfigError("logging.level: must be debug, info, warning, error or critical")
    for where, m in [("model", cfg.model), *((f"models.{n}", m) for n, m in cfg.models.items())]:
        r = m.remote
        checks = [
            (m.n_ctx >= 256, f"{where}.n_ctx: must be at least 256"),
            (m.idle_unload_seconds >= 0, f"{where}.idle_unload_seconds: must be >= 0"),
            (
                not r.base_url or r.base_url.startswith(("http://", "https://")),
                f"{where}.remote.base_url: must start with http:// or https://",
            ),
            (r.connect_timeout > 0, f"{where}.remote.connect_timeout: must be > 0"),
            (r.read_timeout > 0, f"{where}.remote.read_timeout: must be > 0"),
            (0 <= r.retries <= 10, f"{where}.remote.retries: must be between 0 and 10"),
            (r.backoff >= 0, f"{where}.remote.backoff: must be >= 0"),
            (r.max_concurrent >= 1, f"{where}.remote.max_concurrent: must be >= 1"),
            (bool(r.api_key_env), f"{where}.remote.api_key_env: must name a variable"),
            (r.token_cache_mb >= 0, f"{where}.remote.token_cache_mb: must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def _read_token(section: str, token_file: str, env: Mapping[str, str]) -> Secret:
    value = env.get(TOKEN_ENV[section], "").strip()
    if value:
        return Secret(value)
    if token_file:
        try:
            return Secret(Path(token_file).expanduser().read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError(
                f"{section}.token_file: cannot read {token_file!r} ({exc.strerror})"
            ) from None
    return Secret("")


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Build the configuration from defaults, an optional TOML file, then the environment.

    Environment overrides use ``FINECHAT_<SECTION>__<KEY>`` (e.g. ``FINECHAT_MODEL__N_CTX=2048``),
    plus the shortcuts ``FINECHAT_MODEL`` and ``FINECHAT_DB``.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is None and env.get("FINECHAT_CONFIG"):
        path = env["FINECHAT_CONFIG"]
    if path is not None:
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"config file {str(p)!r}: {exc.strerror}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(p)!r}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r}: invalid TOML ({exc})") from None

    cfg = Config()
    sections = {f.name for f in fields(cfg)}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(sorted(sections))})")
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: must be a table ([{name}])")
        cfg = replace(cfg, **{name: _apply(getattr(cfg, name), values, name)})

    overrides: dict[str, dict[str, Any]] = {}
    for var, value in env.items():
        if var in _ENV_SHORTCUTS:
            sec, key = _ENV_SHORTCUTS[var]
            overrides.setdefault(sec, {})[key] = value
        elif var.startswith("FINECHAT_") and "__" in var:
            sec, _, key = var[len("FINECHAT_") :].lower().partition("__")
            if sec not in sections:
                raise ConfigError(f"{var}: unknown section {sec!r}")
            # FINECHAT_MODEL__REMOTE__BASE_URL and FINECHAT_MODELS__NAME__PATH: nested tables
            *outer, last = key.split("__")
            table: dict[str, Any] = overrides.setdefault(sec, {})
            for part in outer:
                table = table.setdefault(part, {})
            table[last] = value
    for sec, values in overrides.items():
        cfg = replace(cfg, **{sec: _apply(getattr(cfg, sec), values, f"{sec}")})

    cfg = replace(
        cfg,
        discord=replace(cfg.discord, token=_read_token("discord", cfg.discord.token_file, env)),
        telegram=replace(cfg.telegram, token=_read_token("telegram", cfg.telegram.token_file, env)),
    )
    _validate(cfg)
    return cfg


def with_overrides(cfg: Config, **sections: Mapping[str, Any]) -> Config:
    """Apply command-line overrides (already typed) through the same validation."""
    for sec, values in sections.items():
        clean = {k: v for k, v in values.items() if v is not None}
        if clean:
            cfg = replace(cfg, **{sec: _apply(getattr(cfg, sec), clean, sec)})
    _validate(cfg)
    return cfg
