"""Several named models on one box: loaded on first use, unloaded after an idle time.

``[model]`` is the default; ``[models.NAME]`` tables add more, each a local GGUF or a remote
endpoint. A conversation picks one through ``ChatService.set_model`` (the bots' admin ``/model``
command, the web arena). A small box can offer two models because an unused one gives its
memory back after ``idle_unload_seconds`` and is reloaded (seconds, from the page cache) when
someone asks for it again.

:class:`ManagedEngine` is itself an :class:`~core.engine.Engine`, so the chat service uses a
lazily loaded model exactly like a loaded one; its :class:`~core.engine.ModelInfo` is kept
across unloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from core.config import Config, ModelConfig
from core.engine import Engine, GenerationRequest, GenerationResult, ModelInfo
from core.errors import EngineUnavailable, InvalidInput
from core.template import Message

log = logging.getLogger("finechat.models")

Loader = Callable[[ModelConfig, str], Awaitable[Engine]]
DEFAULT_ALIAS = "default"


class ManagedEngine:
    """An engine that loads on first use and unloads when idle (never while generating)."""

    def __init__(
        self,
        name: str,
        config: ModelConfig,
        loader: Loader,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self._loader = loader
        self._clock = clock
        self._engine: Engine | None = None
        self._info: ModelInfo | None = None
        self._lock = asyncio.Lock()
        self.last_used = clock()
        self.loads = 0

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def inner(self) -> Engine | None:
        """The loaded engine (for metrics and cache control), or None."""
        return self._engine

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise EngineUnavailable(f"The model {self.name} has not been loaded yet.")
        return self._info

    @info.setter
    def info(self, value: ModelInfo) -> None:
        self._info = value

    def __getattr__(self, name: str) -> Any:
        """Anything else (engine statistics, ``forget``...) comes from the loaded engine."""
        engine = self.__dict__.get("_engine")
        if name.startswith("_") or engine is None:
            raise AttributeError(name)
        return getattr(engine, name)

    def touch(self) -> None:
        self.last_used = self._clock()

    async def ensure(self) -> Engine:
        """The loaded engine, loading it first if needed (one load at a time)."""
        self.touch()
        engine = self._engine
        if engine is not None:
            return engine
        async with self._lock:
            if self._engine is None:
                started = time.monotonic()
                engine = await self._loader(self.config, self.name)
                self._engine, self._info = engine, engine.info
                self.loads += 1
                log.info("model %s loaded in %.1f s", self.name, time.monotonic() - started)
            self.touch()
            assert self._engine is not None
            return self._engine

    async def unload_if_idle(self) -> bool:
        """Free the model if it has been idle long enough and nothing is queued or running."""
        limit = self.config.idle_unload_seconds
        engine = self._engine
        if engine is None or limit <= 0 or engine.pending:
            return False
        if self._clock() - self.last_used < limit or self._lock.locked():
            return False
        async with self._lock:
            if self._engine is not engine or engine.pending:
                return False
            self._engine = None
        await engine.aclose()
        log.info("model %s unloaded after %.0f s idle", self.name, limit)
        return True

    # -- Engine protocol -------------------------------------------------------------------

    async def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return await (await self.ensure()).tokenize(text, special=special)

    async def encode_messages(self, messages: list[Message]) -> list[int]:
        return await (await self.ensure()).encode_messages(messages)

    def generate(self, request: GenerationRequest) -> _ManagedStream:
        self.touch()
        return _ManagedStream(self, request)

    @property
    def pending(self) -> int:
        return self._engine.pending if self._engine is not None else 0

    async def aclose(self) -> None:
        async with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            await engine.aclose()


class _ManagedStream:
    """Delegates to the loaded engine's stream; loads first if the model was unloaded meanwhile."""

    def __init__(self, owner: ManagedEngine, request: GenerationRequest) -> None:
        self._owner = owner
        self._request = request
        self._cancelled = False
        self.result: GenerationResult | None = None
        engine = owner.inner
        self._inner = engine.generate(request) if engine is not None else None
        self.queue_position = self._inner.queue_position if self._inner is not None else 0

    def cancel(self) -> None:
        self._cancelled = True
        if self._inner is not None:
            self._inner.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            if self._inner is None:
                self._inner = (await self._owner.ensure()).generate(self._request)
                if self._cancelled:
                    self._inner.cancel()
            async for piece in self._inner:
                yield piece
            self.result = self._inner.result
        finally:
            self._owner.touch()


class ModelRegistry:
    """The configured models by name; the default one is loaded at start."""

    def __init__(
        self,
        models: dict[str, ManagedEngine],
        default: str,
        *,
        reap_interval: float | None = None,
    ) -> None:
        if default not in models:
            raise ValueError(f"default model {default!r} is not among {sorted(models)}")
        self._models = models
        self.default_name = default
        limits = [m.config.idle_unload_seconds for m in models.values()]
        shortest = min((s for s in limits if s > 0), default=0.0)
        self.reap_interval = reap_interval or max(0.05, min(30.0, shortest / 4 or 30.0))
        self._reaper: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        config: Config,
        loader: Loader | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> ModelRegistry:
        """Build from ``[model]`` + ``[models.NAME]``, load the default, start the idle reaper."""
        load = loader or load_model
        named = {
            (cfg.name or name): ManagedEngine(cfg.name or name, cfg, load, clock=clock)
            for name, cfg in config.models.items()
        }
        default = ManagedEngine(config.model.name or DEFAULT_ALIAS, config.model, load, clock=clock)
        await default.ensure()
        # Without an explicit name the default is called what the model calls itself.
        if not config.model.name and default.info.name not in named:
            default.name = default.info.name
        if default.name in named:
            raise InvalidInput(f"model name {default.name!r} is used twice; set model.name")
        registry = cls({default.name: default, **named}, default.name)
        registry.start()
        return registry

    def names(self) -> list[str]:
        """The default first, then the others in configuration order."""
        return list(self._models)

    def resolve(self, name: str | None) -> str:
        """The canonical name for ``name`` (``default`` and case differences are accepted)."""
        if not name or name == DEFAULT_ALIAS:
            return self.default_name
        if name in self._models:
            return name
        folded = {n.casefold(): n for n in self._models}
        if name.casefold() in folded:
            return folded[name.casefold()]
        raise InvalidInput(f"Unknown model {name!r}. Available: {', '.join(self.names())}.")

    def managed(self, name: str | None = None) -> ManagedEngine:
        return self._models[self.resolve(name)]

    @property
    def default(self) -> ManagedEngine:
        return self._models[self.default_name]

    async def get(self, name: str | None = None) -> ManagedEngine:
        """The named (or default) model, loaded."""
        managed = self.managed(name)
        await managed.ensure()
        return managed

    def loaded(self) -> dict[str, Engine]:
        return {n: m.inner for n, m in self._models.items() if m.inner is not None}

    def all(self) -> dict[str, ManagedEngine]:
        return dict(self._models)

    async def reap(self) -> list[str]:
        """One idle pass: the names unloaded."""
        return [n for n, m in self._models.items() if await m.unload_if_idle()]

    def start(self) -> None:
        if self._reaper is None and any(
            m.config.idle_unload_seconds > 0 for m in self._models.values()
        ):
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap()
            except Exception as exc:  # a failing close must not stop future unloads
                log.warning("idle unload failed: %s: %s", type(exc).__name__, exc)

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for managed in self._models.values():
            await managed.aclose()


async def load_model(model: ModelConfig, name: str) -> Engine:
    """Load one configured model: a remote endpoint if ``remote.base_url`` is set, else a GGUF."""
    if model.remote.base_url:
        from core.remote_engine import RemoteEngine

        label = model.name or ("" if name == DEFAULT_ALIAS else name)  # "" = the server's id
        return await RemoteEngine.connect(
            model.remote, n_ctx=model.n_ctx, name=label, max_queue=model.max_queue
        )
    from core.runtime import load_engine

    return await load_engine(replace(Config(), model=model))
