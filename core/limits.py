"""Per-person limits: replies per minute, completion tokens per rolling day, settings changes.

A *person* is whoever sends: a Telegram or Discord user (``telegram:USER_ID``), a web login, or
the client address of an anonymous web visitor or an API client. Their conversations are many
(one per chat), their limit is one: it is counted across all of a person's chats on a platform.

Counts live in the memory database (table ``usage``), so a restart does not reset them. The
table holds a keyed hash of the person (the key is a per-installation secret), the platform,
the time and the completion tokens, and rows older than a day are dropped: it says how much,
never who or what. Every reply counts — a retry or a regenerated answer is a reply too — and
a reply is counted when it is admitted, so two chats of one person cannot both slip under the
limit. A reply that crosses the token quota finishes; the next one is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from core.config import LimitsConfig
from core.errors import LimitExceeded
from core.memory import MemoryStore

MINUTE = 60.0
DAY = 86400.0
#: How often old usage rows are dropped (they are never read after a day).
_PRUNE_EVERY_S = 600.0

REPLY = "reply"
WRITE = "write"
REFUSED = "refused"


def person_of_key(key: str) -> str:
    """The person behind a conversation key, for front-ends that do not say (best effort).

    Telegram and Discord keys end with the user id (``telegram:CHAT:USER``), so every chat of
    one user maps to ``telegram:USER``; other keys (``web:LOGIN``, ``cli:NAME``) are their own
    person, and a sub-conversation ``KEY#arena-a`` belongs to the person of ``KEY``.
    """
    base = key.split("#", 1)[0]
    platform, _, rest = base.partition(":")
    if platform in {"telegram", "discord"} and rest:
        return f"{platform}:{rest.rsplit(':', 1)[-1]}"
    return base


def platform_of_person(person: str) -> str:
    platform, sep, _ = person.partition(":")
    return platform if sep and platform else "unknown"


def wait_text(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3 h 5 min``: when a limit resets, rounded up."""
    s = max(1, math.ceil(seconds))
    if s < 60:
        return f"{s} s"
    minutes = math.ceil(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


@dataclass(frozen=True)
class Usage:
    """One person's usage against their limits (0 = no limit)."""

    replies_last_minute: int
    replies_per_minute: int
    tokens_last_day: int
    tokens_per_day: int
    exempt: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for a ``/stats`` answer."""
        replies = f"{self.replies_last_minute}" + (
            f"/{self.replies_per_minute}" if self.replies_per_minute else ""
        )
        tokens = f"{self.tokens_last_day:,}" + (
            f"/{self.tokens_per_day:,}" if self.tokens_per_day else ""
        )
        line = f"Usage: {replies} replies in the last minute, {tokens} tokens in the last 24 h"
        return line + (" (no limits for admins)" if self.exempt else "")


class Ticket:
    """An admitted reply: report its completion tokens when it ends, or refund it."""

    def __init__(self, limiter: Limiter | None, usage_id: int | None) -> None:
        self._limiter = limiter
        self._id = usage_id
        self._closed = False

    async def finish(self, completion_tokens: int) -> None:
        if self._closed:
            return
        self._closed = True
        if self._limiter is not None and self._id is not None and completion_tokens > 0:
            await self._limiter.store.usage_set_tokens(self._id, int(completion_tokens))

    async def refund(self) -> None:
        """Nothing was generated (the engine refused, the input was bad): it does not count."""
        if self._closed:
            return
        self._closed = True
        if self._limiter is not None and self._id is not None:
            await self._limiter.store.usage_delete(self._id)


NO_TICKET = Ticket(None, None)


class Limiter:
    """Checks and records usage per person; see the module docstring."""

    def __init__(
        self,
        store: MemoryStore,
        config: LimitsConfig,
        *,
        exempt: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self.exempt = frozenset(exempt)
        """People never limited (the bots' admins), as ``platform:id``."""
        self.clock = clock
        self.refusals: Counter[tuple[str, str]] = Counter()
        """(platform, limit) → refusals since start (``/metrics``)."""
        self._lock = asyncio.Lock()
        self._secret: bytes | None = None
        self._pruned_at = 0.0

    async def _hash(self, person: str) -> str:
        if self._secret is None:
            self._secret = bytes.fromhex(await self.store.installation_salt())[:64]
        digest = hashlib.blake2b(person.encode("utf-8", "replace"), key=self._secret)
        return digest.hexdigest()[:32]

    def is_exempt(self, person: str, exempt: bool = False) -> bool:
        return exempt or person in self.exempt

    async def admit_reply(self, person: str, *, exempt: bool = False) -> Ticket:
        """Count one reply for ``person``, or raise :class:`LimitExceeded` (nothing counted)."""
        platform = platform_of_person(person)
        async with self._lock:
            now = self.clock()
            who = await self._hash(person)
            if not self.is_exempt(person, exempt):
                refusal = await self._reply_refusal(who, now)
                if refusal is not None:
                    await self._refuse(who, platform, now, refusal)
            usage_id = await self.store.usage_add(who, platform, REPLY, now)
            await self._maybe_prune(now)
        return Ticket(self, usage_id)

    async def admit_write(self, person: str, *, exempt: bool = False) -> None:
        """Count one persona/settings change, or raise :class:`LimitExceeded`."""
        cap = self.config.settings_per_minute
        if cap <= 0 or self.is_exempt(person, exempt):
            return
        platform = platform_of_person(person)
        async with self._lock:
            now = self.clock()
            who = await self._hash(person)
            events = await self.store.usage_events(who, WRITE, now - MINUTE)
            if len(events) >= cap:
                wait = events[len(events) - cap][0] + MINUTE - now
                await self._refuse(
                    who,
                    platform,
                    now,
                    LimitExceeded(
                        f"You've reached the limit of {cap} changes per minute. "
                        f"It resets in {wait_text(wait)}.",
                        retry_after=wait,
                        limit="settings_per_minute",
                    ),
                )
            await self.store.usage_add(who, platform, WRITE, now)

    async def usage(self, person: str, *, exempt: bool = False) -> Usage:
        now = self.clock()
        who = await self._hash(person)
        day = await self.store.usage_events(who, REPLY, now - DAY)
        return Usage(
            replies_last_minute=sum(1 for at, _ in day if at > now - MINUTE),
            replies_per_minute=self.config.replies_per_minute,
            tokens_last_day=sum(tokens for _, tokens in day),
            tokens_per_day=self.config.tokens_per_day,
            exempt=self.is_exempt(person, exempt),
        )

    async def _reply_refusal(self, who: str, now: float) -> LimitExceeded | None:
        cfg = self.config
        if cfg.replies_per_minute > 0:
            cap = cfg.replies_per_minute
            recent = await self.store.usage_events(who, REPLY, now - MINUTE)
            if len(recent) >= cap:
                wait = recent[len(recent) - cap][0] + MINUTE - now
                return LimitExceeded(
                    f"You've reached the limit of {cap} replies per minute. "
                    f"It resets in {wait_text(wait)}.",
                    retry_after=wait,
                    limit="replies_per_minute",
                )
        if cfg.tokens_per_day > 0:
            cap = cfg.tokens_per_day
            day = await self.store.usage_events(who, REPLY, now - DAY)
            used = sum(tokens for _, tokens in day)
            if used >= cap:
                wait = DAY
                for at, tokens in day:  # oldest first: when enough has aged out
                    used -= tokens
                    if used < cap:
                        wait = at + DAY - now
                        break
                return LimitExceeded(
                    f"You've reached your daily limit of {cap:,} tokens. "
                    f"It resets in {wait_text(wait)}.",
                    retry_after=wait,
                    limit="tokens_per_day",
                )
        return None

    async def _refuse(self, who: str, platform: str, now: float, exc: LimitExceeded) -> None:
        self.refusals[(platform, exc.limit)] += 1
        await self.store.usage_add(who, platform, REFUSED, now)
        raise exc

    async def _maybe_prune(self, now: float) -> None:
        if now - self._pruned_at >= _PRUNE_EVERY_S:
            self._pruned_at = now
            await self.store.usage_prune(now - DAY - MINUTE)
