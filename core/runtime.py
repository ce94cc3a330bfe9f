"""Assemble the core from a configuration: model, engine, memory store, chat service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from core.config import Config, ModelConfig
from core.engine import Engine
from core.llama_engine import LlamaEngine
from core.logs import TurnLogger
from core.memory import MemoryStore
from core.model_source import ModelSpec, resolve_model
from core.models import DEFAULT_ALIAS, ModelRegistry
from core.remote_engine import RemoteEngine
from core.service import ChatService

log = logging.getLogger("finechat")


async def load_model(model: ModelConfig, name: str) -> Engine:
    """Load one configured model: a remote endpoint if ``remote.base_url`` is set, else a GGUF."""
    if model.remote.base_url:
        label = model.name or ("" if name == DEFAULT_ALIAS else name)  # "" = the server's id
        return await RemoteEngine.connect(
            model.remote, n_ctx=model.n_ctx, name=label, max_queue=model.max_queue
        )
    return await load_engine(replace(Config(), model=model))


async def load_engine(config: Config) -> LlamaEngine:
    """Resolve and load the configured model off the event loop."""
    spec = ModelSpec.from_config(config.model)
    path = await asyncio.to_thread(resolve_model, spec)
    log.info("loading model %s", spec.label)
    return await asyncio.to_thread(
        LlamaEngine.load,
        path,
        n_ctx=config.model.n_ctx,
        n_threads=config.model.n_threads,
        n_batch=config.model.n_batch,
        n_slots=config.model.slots,
        state_cache_mb=config.model.state_cache_mb,
        max_queue=config.model.max_queue,
    )


@asynccontextmanager
async def open_service(config: Config) -> AsyncIterator[ChatService]:
    """The chat service with its engine and store, closed in reverse order on exit."""
    from core.logs import register_config_secrets
    from core.metrics import metrics_for

    register_config_secrets(config)
    store = await MemoryStore.open(config.database.path)
    try:
        # [model] plus [models.NAME]: the default loads now, the others on first use.
        models = await ModelRegistry.open(config, load_model)
        try:
            service = ChatService(
                models.default,
                store,
                chat=config.chat,
                generation=config.generation,
                models=models,
                limits=config.limits,
                exempt_people=admin_people(config),
            )
            service.observers.append(await turn_logger(config, store))
            metrics_for(service)
            yield service
        finally:
            await models.aclose()
    finally:
        await store.aclose()


def admin_people(config: Config) -> frozenset[str]:
    """The bots' admins as limit persons (``telegram:ID``, ``discord:ID``): never limited."""
    return frozenset(
        [f"telegram:{i}" for i in config.telegram.admin_ids]
        + [f"discord:{i}" for i in config.discord.admin_ids]
    )


async def turn_logger(config: Config, store: MemoryStore) -> TurnLogger:
    """The turn log, keyed with ``logging.key_salt`` or else this installation's own salt.

    An unkeyed hash of a chat id can be reversed by hashing every plausible id; the database's
    random salt prevents that and keeps hashes stable across restarts. A configured salt wins
    (several installations sharing one log can then correlate).
    """
    salt = config.logging.key_salt or await store.installation_salt()
    return TurnLogger(replace(config.logging, key_salt=salt))
