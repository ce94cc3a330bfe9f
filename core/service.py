"""The chat service: the one object every front-end calls.

It ties memory, prompt building and the engine together and keeps the rules that must hold
whatever the platform: one reply in flight per conversation, the user's turn committed before
generation, the assistant's only once the reply completes (a cancelled or failed reply leaves
no half turn), per-person limits (:mod:`core.limits`), and errors that are safe to show to a
person: only :data:`CHAT_SAFE` errors reach a chat with their own text; anything else is
logged with its detail and becomes a generic apology.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from core.config import ChatConfig, GenerationConfig, LimitsConfig
from core.engine import Engine, FinishReason, GenerationRequest, SamplingParams
from core.errors import (
    ConversationBusy,
    EngineBusy,
    EngineUnavailable,
    InvalidInput,
    LimitExceeded,
)
from core.limits import NO_TICKET, Limiter, Ticket, person_of_key
from core.memory import MAX_TITLE_CHARS, ConversationSummary, MemoryStore, Turn, platform_of
from core.observe import TurnObserver, TurnRecord, notify, outcome_of
from core.prompt import build_prompt
from core.template import Message
from core.textcheck import clean_user_text, one_line
from core.transcript import conversation_json, conversation_markdown, conversations_markdown

if TYPE_CHECKING:
    from core.models import ModelRegistry

log = logging.getLogger("finechat.service")

MAX_PERSONA_CHARS = 4000
SETTING_KEYS = {f.name for f in fields(SamplingParams)}
#: Errors whose own message is written for the person in the chat; any other error is logged
#: and replaced by :data:`GENERIC_FAILURE` (a model load error names files, a database error
#: names tables: neither is for a chat).
CHAT_SAFE = (InvalidInput, ConversationBusy, EngineBusy, EngineUnavailable, LimitExceeded)
GENERIC_FAILURE = "Sorry — something went wrong on my side. Please try again in a moment."
CANCELLED_EARLY = "That message was stopped before I could answer it."


class _Claim:
    """A conversation's reply in flight; ``cancel`` stops it (queued or generating)."""

    __slots__ = ("cancel",)

    def __init__(self) -> None:
        self.cancel = asyncio.Event()


@dataclass(frozen=True)
class Started:
    """Sent once the prompt is built and queued."""

    user_message_id: int
    prompt_tokens: int
    dropped_turns: int
    queue_position: int


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    text: str
    finish_reason: FinishReason
    message_id: int | None
    """The stored assistant message, or None when nothing was stored (cancelled, empty)."""
    user_message_id: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    dropped_turns: int
    ttft_seconds: float | None
    total_seconds: float


ReplyEvent = Started | Delta | Done


def sampling_defaults(config: GenerationConfig) -> SamplingParams:
    return SamplingParams(**{f.name: getattr(config, f.name) for f in fields(SamplingParams)})


def validate_settings(settings: Mapping[str, Any], *, n_ctx: int) -> dict[str, Any]:
    """Check user-supplied generation settings; raise InvalidInput naming the bad one."""
    clean: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in SETTING_KEYS:
            raise InvalidInput(
                f"Unknown setting {key!r} (known: {', '.join(sorted(SETTING_KEYS))})."
            )
        if value is None:
            clean[key] = None
            continue
        try:
            num: float = int(value) if key in {"top_k", "max_tokens", "seed"} else float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"Setting {key} must be a number, not {value!r}.") from None
        ok = {
            "temperature": 0 <= num <= 5,
            "top_p": 0 < num <= 1,
            "top_k": num >= 0,
            "repeat_penalty": 0 < num <= 5,
            "max_tokens": 1 <= num < n_ctx,
            "seed": True,
        }[key]
        if not ok:
            raise InvalidInput(f"Setting {key}={value} is out of range.")
        clean[key] = num
    return clean


class ChatService:
    """Reply, reset, persona, settings, history and cancel for any conversation key."""

    def __init__(
        self,
        engine: Engine,
        store: MemoryStore,
        *,
        chat: ChatConfig | None = None,
        generation: GenerationConfig | None = None,
        models: ModelRegistry | None = None,
        limits: LimitsConfig | None = None,
        exempt_people: frozenset[str] = frozenset(),
    ) -> None:
        self.engine = engine
        self.store = store
        self.chat_config = chat or ChatConfig()
        self.defaults = sampling_defaults(generation or GenerationConfig())
        self.limiter: Limiter | None = (
            Limiter(store, limits, exempt=exempt_people) if limits is not None else None
        )
        """Per-person limits (``[limits]``); None = nothing counted (a library or test use)."""
        self._inflight: dict[str, _Claim] = {}
        self.models = models
        """Named models (``[models.NAME]``); None = only ``engine``."""
        self.observers: list[TurnObserver] = []
        """Called with a :class:`TurnRecord` after every reply/retry (metrics, turn log)."""
        self._turn_model: dict[str, str] = {}

    @property
    def model_name(self) -> str:
        """The default model's name."""
        return self.models.default_name if self.models else self.engine.info.name

    @property
    def active_conversations(self) -> int:
        """Replies in flight right now."""
        return len(self._inflight)

    async def _engine_for(self, key: str, model: str | None = None) -> tuple[str, Engine]:
        """The model ``key`` chose (``/model``), or ``model`` when given (the web arena)."""
        if self.models is None:
            return self.model_name, self.engine
        if model is None:
            model = (await self.store.get_profile(key)).settings.get("model")
        try:
            name = self.models.resolve(model)
        except InvalidInput:
            # The model was removed from the configuration since it was chosen: use the default.
            log.warning("conversation chose an unknown model %r; using the default", model)
            name = self.models.default_name
        return name, await self.models.get(name)

    async def _observed(
        self,
        key: str,
        kind: str,
        text: str | bytes,
        events: AsyncGenerator[ReplyEvent, None],
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Pass ``events`` through and report the turn to the observers, however it ends."""
        t0 = time.monotonic()
        started: Started | None = None
        done: Done | None = None
        outcome = "abandoned"
        try:
            async for event in events:
                if isinstance(event, Started):
                    started = event
                elif isinstance(event, Done):
                    done = event
                    outcome = event.finish_reason
                yield event
        except Exception as exc:
            outcome = outcome_of(exc)
            if not isinstance(exc, CHAT_SAFE):
                log.error("%s failed: %s: %s", kind, type(exc).__name__, exc, exc_info=exc)
                raise EngineUnavailable(GENERIC_FAILURE) from None
            raise
        finally:
            # Close the inner generator now (a consumer that stops early must free the
            # conversation at once, not when the generator is garbage collected).
            await events.aclose()
            record = self._record(key, kind, text, outcome, t0, started, done)
            if outcome != "busy":  # a refused second message must not clear the first's model
                self._turn_model.pop(key, None)
            notify(self.observers, record)

    def _record(
        self,
        key: str,
        kind: str,
        text: str | bytes,
        outcome: str,
        t0: float,
        started: Started | None,
        done: Done | None,
    ) -> TurnRecord:
        try:
            platform = platform_of(key)
        except ValueError:
            platform = "invalid"
        return TurnRecord(
            key=key,
            platform=platform,
            kind=kind,
            model=self._turn_model.get(key, self.model_name),
            outcome=outcome,
            prompt_tokens=done.prompt_tokens if done else (started.prompt_tokens if started else 0),
            completion_tokens=done.completion_tokens if done else 0,
            cached_tokens=done.cached_tokens if done else 0,
            dropped_turns=started.dropped_turns if started else 0,
            queue_position=started.queue_position if started else 0,
            ttft_seconds=done.ttft_seconds if done else None,
            generation_seconds=done.total_seconds if done else 0.0,
            wall_seconds=time.monotonic() - t0,
            user_text=text if isinstance(text, str) else "",
            reply_text=done.text if done else "",
        )

    # -- replying --------------------------------------------------------------------------

    async def reply(
        self,
        key: str,
        text: str | bytes,
        *,
        parent_id: int | None = None,
        platform_message_id: str | None = None,
        settings: Mapping[str, Any] | None = None,
        model: str | None = None,
        person: str | None = None,
        exempt: bool = False,
    ) -> AsyncIterator[ReplyEvent]:
        """Answer ``text`` in ``key``'s conversation, streaming :class:`ReplyEvent` s.

        ``parent_id`` continues from an older message (a reply chain branch); by default the
        turn continues the newest message of the active conversation. ``model`` answers with
        that model instead of the conversation's choice (the web arena). ``person`` is whose
        ``[limits]`` the reply counts against (``telegram:USER_ID``, ``discord:USER_ID``,
        ``web:LOGIN``, ``web:addr:IP``; default: derived from ``key``), ``exempt`` skips the
        limits (admins). Raises :class:`FinechatError` subclasses for anything the user should
        be told — :class:`LimitExceeded` before anything is stored or generated.

        Closing the returned generator at any point (``aclose``, or a consumer that stops
        iterating and drops it) cancels the generation.
        """
        ticket = _Admission(self, key, person, exempt)
        inner = self._reply(key, text, parent_id, platform_message_id, settings, model, ticket)
        observed = self._observed(key, "reply", text, inner)
        try:
            async for event in observed:
                yield event
        finally:
            await observed.aclose()  # closing reply() closes the whole chain at once

    async def _reply(
        self,
        key: str,
        text: str | bytes,
        parent_id: int | None,
        platform_message_id: str | None,
        settings: Mapping[str, Any] | None,
        model: str | None,
        admission: _Admission,
    ) -> AsyncGenerator[ReplyEvent, None]:
        platform_of_key(key)
        clean = clean_user_text(text, max_chars=self.chat_config.max_input_chars)
        claim = self._claim(key)
        try:
            ticket = await admission.admit()
            async for event in self._reply_locked(
                key, clean, parent_id, platform_message_id, settings, claim.cancel, model, ticket
            ):
                yield event
        finally:
            await admission.close()
            self._release(key, claim)

    async def _reply_locked(
        self,
        key: str,
        text: str,
        parent_id: int | None,
        platform_message_id: str | None,
        settings: Mapping[str, Any] | None,
        cancel: asyncio.Event,
        model: str | None = None,
        ticket: Ticket = NO_TICKET,
    ) -> AsyncIterator[ReplyEvent]:
        conversation, parent = await self._resolve_parent(key, parent_id)
        model, engine = await self._engine_for(key, model)
        n_user = len(await engine.tokenize(text))
        if cancel.is_set():  # stopped (or forgotten) before anything was stored
            raise InvalidInput(CANCELLED_EARLY)
        user_turn = await self.store.add_message(
            key,
            "user",
            text,
            tokens=n_user,
            parent_id=parent.id if parent else None,
            conversation_id=conversation,
            platform_message_id=platform_message_id,
        )
        async for event in self._generate(
            key, user_turn, settings, cancel, fresh=True, model=model, ticket=ticket
        ):
            yield event

    async def retry(
        self,
        key: str,
        *,
        settings: Mapping[str, Any] | None = None,
        person: str | None = None,
        exempt: bool = False,
    ) -> AsyncIterator[ReplyEvent]:
        """Generate a new answer to the last user message; the old answer stays as a branch.

        A retry is a reply: it counts against ``person``'s limits as :meth:`reply` does.
        """
        admission = _Admission(self, key, person, exempt)
        observed = self._observed(key, "retry", "", self._retry(key, settings, admission))
        try:
            async for event in observed:
                yield event
        finally:
            await observed.aclose()

    async def _retry(
        self, key: str, settings: Mapping[str, Any] | None, admission: _Admission
    ) -> AsyncGenerator[ReplyEvent, None]:
        platform_of_key(key)
        claim = self._claim(key)
        try:
            history = await self.store.history(key, limit=2)
            user_turn = next((t for t in reversed(history) if t.role == "user"), None)
            if user_turn is None:
                raise InvalidInput("There is nothing to retry yet.")
            ticket = await admission.admit()
            async for event in self._generate(
                key, user_turn, settings, claim.cancel, fresh=False, ticket=ticket
            ):
                yield event
        finally:
            await admission.close()
            self._release(key, claim)

    def _claim(self, key: str) -> _Claim:
        if key in self._inflight:
            raise ConversationBusy(
                "I'm still answering your previous message — send /cancel to stop it."
            )
        claim = _Claim()
        self._inflight[key] = claim
        return claim

    def _release(self, key: str, claim: _Claim) -> None:
        if self._inflight.get(key) is claim:
            del self._inflight[key]

    async def _resolve_parent(self, key: str, parent_id: int | None) -> tuple[int, Turn | None]:
        if parent_id is None:
            conversation = await self.store.active_conversation(key)
            assert conversation is not None
            return conversation, await self.store.leaf(conversation)
        parent = await self.store.get_message(parent_id)
        if parent is None:
            raise InvalidInput("The message you replied to is no longer in my memory.")
        conv_key = await self.store.conversation_key(parent.conversation_id)
        if conv_key != key:
            raise InvalidInput("That message belongs to another conversation.")
        return parent.conversation_id, parent

    async def _generate(
        self,
        key: str,
        user_turn: Turn,
        settings: Mapping[str, Any] | None,
        cancel: asyncio.Event,
        *,
        fresh: bool,
        model: str | None = None,
        ticket: Ticket = NO_TICKET,
    ) -> AsyncIterator[ReplyEvent]:
        profile = await self.store.get_profile(key)
        sampling = await self.sampling_for(key, settings, profile.settings)
        model, engine = await self._engine_for(key, model)
        self._turn_model[key] = model
        n_ctx = engine.info.n_ctx
        if sampling.max_tokens >= n_ctx:  # a model with a smaller context than the settings
            sampling = replace(sampling, max_tokens=n_ctx // 2)
        chain = await self.store.chain(user_turn.id, limit=self.chat_config.history_turns)
        system = profile.persona if profile.persona is not None else self.chat_config.system_prompt
        budget = n_ctx - sampling.max_tokens
        try:
            built = await build_prompt(
                system_prompt=system,
                history=[Message(t.role, t.text) for t in chain],
                turn_tokens=[t.tokens for t in chain],
                budget=budget,
                encode=engine.encode_messages,
            )
        except InvalidInput:
            if fresh:  # too long for this model: nothing will answer it, so keep nothing
                await self.store.delete_message(user_turn.id)
            raise
        request = GenerationRequest(key, built.tokens, sampling, tuple(built.messages))
        if cancel.is_set():
            if fresh:
                await self.store.delete_message(user_turn.id)
            raise InvalidInput(CANCELLED_EARLY)
        try:
            stream = engine.generate(request)
        except EngineBusy:
            # Nothing will answer this turn: take it back so the retry is not a duplicate.
            if fresh:
                await self.store.delete_message(user_turn.id)
            raise
        # From here on, however this generator is left — closed right after Started, while
        # streaming, or by an error — the engine is told to stop (a no-op once it finished).
        # The watcher starts before Started is handed out: a consumer that sits on Started
        # (sending a queue note, say) can still be cancelled — or forgotten — at once.
        watcher = asyncio.create_task(_cancel_when(cancel, stream.cancel))
        try:
            yield Started(
                user_turn.id, len(built.tokens), built.dropped_turns, stream.queue_position
            )
            async for piece in stream:
                yield Delta(piece)
        finally:
            watcher.cancel()
            if stream.result is None:
                stream.cancel()
                await ticket.finish(0)  # it started: it counts, even when abandoned
            else:
                await ticket.finish(stream.result.completion_tokens)
        result = stream.result
        if result is None:  # pragma: no cover - streams always finish with a result
            raise EngineUnavailable("The model stopped without an answer. Please try again.")
        text = result.text.strip()
        message_id: int | None = None
        if result.finish_reason != "cancelled" and text:
            turn = await self.store.add_message(
                key,
                "assistant",
                text,
                tokens=result.completion_tokens,
                parent_id=user_turn.id,
                conversation_id=user_turn.conversation_id,
                model=model,
                latency=result.total_seconds,
            )
            message_id = turn.id
        yield Done(
            text=text,
            finish_reason=result.finish_reason,
            message_id=message_id,
            user_message_id=user_turn.id,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cached_tokens=result.cached_tokens,
            dropped_turns=built.dropped_turns,
            ttft_seconds=result.ttft_seconds,
            total_seconds=result.total_seconds,
        )

    async def edit(
        self,
        key: str,
        text: str | bytes,
        *,
        message_id: int | None = None,
        settings: Mapping[str, Any] | None = None,
        person: str | None = None,
        exempt: bool = False,
    ) -> AsyncIterator[ReplyEvent]:
        """Replace a user message with ``text`` and answer it, as a new branch.

        The new message gets the old one's parent, so the old message and everything after it
        stay on disk as another branch (the web chat's edit; the Markdown export shows both).
        ``message_id`` defaults to the last user message of the active conversation; an older
        conversation's message makes that conversation the active one. An edit is a reply: it
        counts against ``person``'s limits as :meth:`reply` does.
        """
        admission = _Admission(self, key, person, exempt)
        inner = self._edit(key, text, message_id, settings, admission)
        observed = self._observed(key, "edit", text, inner)
        try:
            async for event in observed:
                yield event
        finally:
            await observed.aclose()

    async def _edit(
        self,
        key: str,
        text: str | bytes,
        message_id: int | None,
        settings: Mapping[str, Any] | None,
        admission: _Admission,
    ) -> AsyncGenerator[ReplyEvent, None]:
        platform_of_key(key)
        clean = clean_user_text(text, max_chars=self.chat_config.max_input_chars)
        claim = self._claim(key)
        try:
            old = await self._editable(key, message_id)
            ticket = await admission.admit()
            _, engine = await self._engine_for(key)
            n_user = len(await engine.tokenize(clean))
            if claim.cancel.is_set():  # stopped (or forgotten) before anything was stored
                raise InvalidInput(CANCELLED_EARLY)
            await self.store.resume(key, old.conversation_id)
            user_turn = await self.store.add_message(
                key,
                "user",
                clean,
                tokens=n_user,
                parent_id=old.parent_id,
                conversation_id=old.conversation_id,
            )
            async for event in self._generate(
                key, user_turn, settings, claim.cancel, fresh=True, ticket=ticket
            ):
                yield event
        finally:
            await admission.close()
            self._release(key, claim)

    async def _editable(self, key: str, message_id: int | None) -> Turn:
        if message_id is None:
            history = await self.store.history(key, limit=self.chat_config.history_turns)
            last = next((t for t in reversed(history) if t.role == "user"), None)
            if last is None:
                raise InvalidInput("There is no message to edit yet.")
            return last
        turn = await self.store.get_message(message_id)
        if turn is None or turn.role != "user":
            raise InvalidInput("That message is no longer in my memory.")
        if await self.store.conversation_key(turn.conversation_id) != key:
            raise InvalidInput("That message belongs to another conversation.")
        return turn

    async def ask(self, key: str, text: str | bytes, **kwargs: Any) -> Done:
        """Reply without streaming: the final :class:`Done`."""
        done: Done | None = None
        async for event in self.reply(key, text, **kwargs):
            if isinstance(event, Done):
                done = event
        if done is None:  # pragma: no cover
            raise EngineUnavailable("The model stopped without an answer. Please try again.")
        return done

    # -- conversation controls -------------------------------------------------------------

    def cancel(self, key: str) -> bool:
        """Stop the reply in flight for ``key``; True if there was one."""
        claim = self._inflight.get(key)
        if claim is None:
            return False
        claim.cancel.set()
        return True

    def busy(self, key: str) -> bool:
        return key in self._inflight

    async def reset(self, key: str) -> bool:
        """Start a new conversation; the old one stays on disk."""
        platform_of_key(key)
        self.cancel(key)
        return await self.store.reset(key)

    async def history(self, key: str, limit: int = 1000) -> list[Turn]:
        platform_of_key(key)
        return await self.store.history(key, limit)

    async def get_persona(self, key: str) -> str:
        profile = await self.store.get_profile(key)
        return profile.persona if profile.persona is not None else self.chat_config.system_prompt

    async def set_persona(
        self,
        key: str,
        persona: str | None,
        *,
        person: str | None = None,
        exempt: bool = False,
    ) -> None:
        """Set the key's system prompt; ``None`` or empty restores the default.

        Counts against ``person``'s ``limits.settings_per_minute`` (see :meth:`reply`).
        """
        platform_of_key(key)
        if persona is not None:
            persona = (
                clean_user_text(persona, max_chars=MAX_PERSONA_CHARS) if persona.strip() else None
            )
        await self._admit_write(key, person, exempt)
        await self.store.set_persona(key, persona)

    async def update_settings(
        self,
        key: str,
        settings: Mapping[str, Any],
        *,
        person: str | None = None,
        exempt: bool = False,
    ) -> dict[str, Any]:
        """Merge generation settings; counts as :meth:`set_persona` does."""
        platform_of_key(key)
        clean = validate_settings(settings, n_ctx=self.engine.info.n_ctx)
        await self._admit_write(key, person, exempt)
        return await self.store.update_settings(key, clean)

    async def _admit_write(self, key: str, person: str | None, exempt: bool) -> None:
        if self.limiter is not None:
            await self.limiter.admit_write(person or person_of_key(key), exempt=exempt)

    async def sampling_for(
        self,
        key: str,
        overrides: Mapping[str, Any] | None = None,
        stored: Mapping[str, Any] | None = None,
    ) -> SamplingParams:
        if stored is None:
            stored = (await self.store.get_profile(key)).settings
        merged = {**{k: v for k, v in stored.items() if k in SETTING_KEYS}}
        if overrides:
            merged.update(validate_settings(overrides, n_ctx=self.engine.info.n_ctx))
        return replace(self.defaults, **{k: v for k, v in merged.items() if v is not None})

    def available_models(self) -> list[str]:
        """Names of the models a conversation may choose, the default first."""
        return self.models.names() if self.models else [self.model_name]

    async def set_model(self, key: str, name: str) -> None:
        """Choose the model for ``key``'s conversation (admin commands and the web arena)."""
        platform_of_key(key)
        if self.models is not None:
            name = self.models.resolve(name.strip())
        elif name not in self.available_models():
            raise InvalidInput(
                f"Unknown model {name!r}. Available: {', '.join(self.available_models())}."
            )
        await self.store.update_settings(key, {"model": name})

    async def model_of(self, key: str) -> str:
        """The model ``key``'s conversation uses (its ``/model`` choice, else the default)."""
        chosen = (await self.store.get_profile(key)).settings.get("model")
        if self.models is None or not chosen:
            return self.model_name
        try:
            return self.models.resolve(chosen)
        except InvalidInput:
            return self.model_name

    async def forget(self, key: str) -> int:
        """Delete everything stored about ``key`` (the bots' ``/forget``); messages deleted.

        Replies in flight for ``key`` and its sub-conversations (``key#arena-a``) are
        cancelled first — queued or running, even while their front-end is busy elsewhere —
        so no queued job runs after the deletion and a cancelled reply stores nothing; then
        the rows go (messages, conversations, profiles, votes), and engines that cache
        conversation state (KV cache, saved states) are told to drop it through their
        optional ``forget(key)``.
        """
        platform_of_key(key)
        keys = [
            *await self.store.sub_keys(key),
            *(k for k in self._inflight if k.startswith(key + "#")),
        ]
        claims = [c for k in dict.fromkeys(keys) if (c := self._inflight.get(k)) is not None]
        for claim in claims:
            claim.cancel.set()
        if claims:
            await asyncio.sleep(0)  # their watchers tell the engine now, before the deletion
        removed = await self.store.forget(key)
        engines = list(self.models.loaded().values()) if self.models else [self.engine]
        for engine in engines:
            drop = getattr(engine, "forget", None)
            if drop is None:
                continue
            for k in dict.fromkeys(keys):
                result = drop(k)
                if asyncio.iscoroutine(result):
                    await result
        return removed

    # -- platform messages (the bots) -------------------------------------------------------

    async def parent_turn(self, key: str, platform_message_id: str) -> int | None:
        """The answer in ``key``'s conversations delivered as ``platform_message_id``.

        A person replying to any message of one of their answers continues from that answer
        (pass the id as ``parent_id`` to :meth:`reply`); None for someone else's answer.
        """
        platform_of_key(key)
        turn = await self.store.find_delivery(platform_message_id, key=key)
        return turn.id if turn is not None else None

    async def record_delivery(self, message_id: int, platform_message_ids: Sequence[str]) -> None:
        """Remember the platform messages answer ``message_id`` was delivered as, in order."""
        await self.store.set_deliveries(message_id, list(platform_message_ids))

    async def delivered_as(self, key_prefix: str, platform_message_id: str) -> bool:
        """Whether some answer under ``key_prefix`` (``discord:``) went out as that message:
        "is this message one of ours" when the platform cannot tell."""
        found = await self.store.find_delivery(platform_message_id, key_prefix=key_prefix)
        return found is not None

    # -- the conversation list, feedback and personal exports -------------------------------

    async def conversations(self, key: str, limit: int = 200) -> list[ConversationSummary]:
        """``key``'s conversations, newest activity first (empty ones are not listed)."""
        platform_of_key(key)
        return await self.store.list_conversations(key, limit)

    async def open_conversation(self, key: str, conversation_id: int) -> list[Turn]:
        """Make one of ``key``'s conversations the active one; its current branch."""
        platform_of_key(key)
        if not await self.store.resume(key, conversation_id):
            raise InvalidInput("That conversation is no longer here.")
        return await self.store.history(key, self.chat_config.history_turns)

    async def rename_conversation(
        self,
        key: str,
        conversation_id: int,
        title: str | None,
        *,
        person: str | None = None,
        exempt: bool = False,
    ) -> str:
        """Give a conversation a title (empty or None: the automatic one); the shown title.

        Renames, deletions and feedback count against ``person``'s
        ``limits.settings_per_minute`` like persona changes (see :meth:`reply`).
        """
        platform_of_key(key)
        clean = one_line(title) if isinstance(title, str) else ""
        if len(clean) > MAX_TITLE_CHARS:
            raise InvalidInput(
                f"That title is too long ({len(clean):,} characters; the limit is "
                f"{MAX_TITLE_CHARS})."
            )
        await self._admit_write(key, person, exempt)
        if not await self.store.rename(key, conversation_id, clean or None):
            raise InvalidInput("That conversation is no longer here.")
        summary = await self.store.conversation_summary(key, conversation_id)
        return summary.title if summary else clean

    async def delete_conversation(
        self, key: str, conversation_id: int, *, person: str | None = None, exempt: bool = False
    ) -> int:
        """Delete one of ``key``'s conversations for good; the number of messages deleted."""
        platform_of_key(key)
        if self.busy(key):
            raise ConversationBusy("Stop the answer in progress before deleting a conversation.")
        await self._admit_write(key, person, exempt)
        removed = await self.store.delete_conversation(key, conversation_id)
        if removed is None:
            raise InvalidInput("That conversation is no longer here.")
        return removed

    async def set_feedback(
        self,
        key: str,
        message_id: int,
        rating: int | None,
        *,
        person: str | None = None,
        exempt: bool = False,
    ) -> None:
        """Store 👍 (1), 👎 (-1) or no rating (None) on one of ``key``'s answers."""
        platform_of_key(key)
        if rating not in (1, -1, None):
            raise InvalidInput("Feedback is thumbs up (1), thumbs down (-1) or none.")
        await self._admit_write(key, person, exempt)
        if not await self.store.set_feedback(key, message_id, rating):
            raise InvalidInput("That answer is no longer in my memory.")

    async def _conversation(
        self, key: str, conversation_id: int
    ) -> tuple[ConversationSummary, list[Turn]]:
        platform_of_key(key)
        summary = await self.store.conversation_summary(key, conversation_id)
        turns = await self.store.conversation_turns(key, conversation_id)
        if summary is None or turns is None:
            raise InvalidInput("That conversation is no longer here.")
        return summary, turns

    async def conversation_markdown(self, key: str, conversation_id: int) -> str:
        """One conversation, all branches, as Markdown (the web chat's download)."""
        return conversation_markdown(*await self._conversation(key, conversation_id))

    async def conversation_json(self, key: str, conversation_id: int) -> dict[str, Any]:
        """One conversation, all branches, as a JSON-ready dict (the web chat's download)."""
        summary, turns = await self._conversation(key, conversation_id)
        leaf = await self.store.leaf(conversation_id)
        return conversation_json(summary, turns, leaf.id if leaf else None)

    async def person_keys(self, platform: str, user_id: str | int) -> list[str]:
        """Every key of one person on a platform (each chat they talk in has its own)."""
        return await self.store.person_keys(platform, str(user_id))

    async def export_markdown(
        self, keys: str | Sequence[str], *, title: str = "Your conversations"
    ) -> str:
        """All conversations of ``keys``, all branches, newest first, as one Markdown file.

        For the bots' ``/export``: ``await service.export_markdown(await
        service.person_keys("telegram", user_id))`` covers the person's private chat and every
        group they talked to the bot in.
        """
        keys = [keys] if isinstance(keys, str) else list(keys)
        items: list[tuple[ConversationSummary, list[Turn]]] = []
        for key in keys:
            platform_of_key(key)
            for summary in await self.store.list_conversations(key, limit=1_000_000):
                turns = await self.store.conversation_turns(key, summary.id)
                items.append((summary, turns or []))
        items.sort(key=lambda item: item[0].updated_at, reverse=True)
        return conversations_markdown(items, title=title)

    async def stats(
        self, key: str, *, person: str | None = None, exempt: bool = False
    ) -> dict[str, Any]:
        """Messages, tokens and replies of ``key``, its model, and — with ``[limits]`` — the
        person's usage: ``usage`` (a dict of :class:`~core.limits.Usage`) and ``usage_line``
        (one sentence for a ``/stats`` answer)."""
        platform_of_key(key)
        out: dict[str, Any] = {**await self.store.stats(key), "model": await self.model_of(key)}
        if self.limiter is not None:
            usage = await self.limiter.usage(person or person_of_key(key), exempt=exempt)
            out["usage"] = usage.as_dict()
            out["usage_line"] = usage.line()
        return out


def platform_of_key(key: str) -> str:
    try:
        return platform_of(key)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


async def _cancel_when(event: asyncio.Event, action: Any) -> None:
    await event.wait()
    action()


class _Admission:
    """Counts one reply against its person's limits once the conversation is claimed.

    A refusal raises :class:`LimitExceeded` before anything is stored; a reply that never
    started generating (bad input, engine busy, an error) is refunded.
    """

    def __init__(self, service: ChatService, key: str, person: str | None, exempt: bool) -> None:
        self._limiter = service.limiter
        self._person = person or person_of_key(key)
        self._exempt = exempt
        self._ticket: Ticket = NO_TICKET

    async def admit(self) -> Ticket:
        if self._limiter is not None:
            self._ticket = await self._limiter.admit_reply(self._person, exempt=self._exempt)
        return self._ticket

    async def close(self) -> None:
        """Refund unless :meth:`Ticket.finish` was reached (a no-op after it)."""
        await self._ticket.refund()
