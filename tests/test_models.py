"""Several models: ``[model]`` plus ``[models.NAME]`` (local or remote), chosen per conversation,
loaded on first use and unloaded after their idle time (a fake clock drives the idle time).

Local models are the real bundled GGUF; the remote one is the fake OpenAI server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.cli import build_parser, resolve_config
from core.config import ChatConfig, Config, GenerationConfig, ModelConfig, RemoteConfig, load_config
from core.errors import InvalidInput
from core.memory import MemoryStore
from core.metrics import metrics_for
from core.models import ModelRegistry
from core.runtime import load_model
from core.service import ChatService
from tests.fakes.openai_server import FakeOpenAI


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def small(**changes: object) -> ModelConfig:
    values: dict[str, object] = {"n_ctx": 512, "n_threads": 2, "slots": 1, "state_cache_mb": 8}
    values.update(changes)
    return ModelConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(reply=["from ", "the ", "server"])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def multi(
    fake: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[tuple[ChatService, ModelRegistry, Clock]]:
    clock = Clock()
    config = Config(
        model=small(idle_unload_seconds=0),
        models={
            "tiny": small(idle_unload_seconds=60),
            "api": ModelConfig(n_ctx=2048, remote=RemoteConfig(base_url=fake.base_url, retries=0)),
        },
    )
    registry = await ModelRegistry.open(config, load_model, clock=clock)
    store = await MemoryStore.open(tmp_path / "m.sqlite")
    service = ChatService(
        registry.default,
        store,
        chat=ChatConfig(system_prompt="Be brief."),
        generation=GenerationConfig(temperature=0.0, max_tokens=12, seed=1),
        models=registry,
    )
    yield service, registry, clock
    await registry.aclose()
    await store.aclose()


def loaded_gauge(service: ChatService) -> dict[str, float]:
    text = metrics_for(service).render().decode()
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "finechat_model_loaded"
    ]
    return {s.labels["model"]: s.value for s in family.samples}


async def test_models_are_chosen_per_conversation_and_loaded_lazily(
    multi: tuple[ChatService, ModelRegistry, Clock], fake: FakeOpenAI
) -> None:
    service, registry, _ = multi
    default = service.model_name
    assert service.available_models() == [default, "tiny", "api"]
    assert set(registry.loaded()) == {default}  # the others wait for their first user

    await service.set_model("telegram:1:1", "tiny")
    await service.set_model("telegram:1:2", "API")  # case does not matter
    assert await service.model_of("telegram:1:1") == "tiny"
    assert await service.model_of("telegram:1:2") == "api"
    with pytest.raises(InvalidInput, match="Available: .*tiny"):
        await service.set_model("telegram:1:1", "gpt-9")
    assert await service.model_of("telegram:1:1") == "tiny"  # bad input changed nothing

    tiny = await service.ask("telegram:1:1", "Hello!")
    remote = await service.ask("telegram:1:2", "Hello!")
    plain = await service.ask("telegram:1:3", "Hello!")
    assert tiny.text and plain.text and remote.text == "from the server"
    models = {
        key: (await service.history(key))[-1].model
        for key in ("telegram:1:1", "telegram:1:2", "telegram:1:3")
    }
    assert models == {"telegram:1:1": "tiny", "telegram:1:2": "api", "telegram:1:3": default}
    assert set(registry.loaded()) == {default, "tiny", "api"}
    assert len(fake.chat_requests()) == 1
    # the web arena answers with a given model without changing the conversation's choice
    arena = await service.ask("web:arena", "Hi", model="api")
    assert arena.text == "from the server" and await service.model_of("web:arena") == default


async def test_idle_models_unload_and_come_back(
    multi: tuple[ChatService, ModelRegistry, Clock],
) -> None:
    service, registry, clock = multi
    await service.set_model("discord:5:5", "tiny")
    first = await service.ask("discord:5:5", "Say one word.")
    tiny = registry.managed("tiny")
    assert tiny.loaded and tiny.loads == 1
    assert loaded_gauge(service)["tiny"] == 1

    clock.now += 30
    assert await registry.reap() == []  # not idle long enough
    clock.now += 31
    assert await registry.reap() == ["tiny"]  # the default (idle 0 = never) stays
    assert not tiny.loaded and set(registry.loaded()) == {service.model_name}
    assert loaded_gauge(service)["tiny"] == 0
    assert tiny.info.n_ctx == 512  # what the service needs to know survives the unload

    again = await service.ask("discord:5:5", "Say one word.")
    assert again.text and tiny.loaded and tiny.loads == 2
    assert again.prompt_tokens > first.prompt_tokens  # same memory, new model instance


def test_backend_url_flag_is_the_remote_base_url() -> None:
    args = build_parser().parse_args(
        ["ask", "hi", "--user", "u", "--backend-url", "http://127.0.0.1:9/v1"]
    )
    config = resolve_config(args)
    assert config.model.remote.base_url == "http://127.0.0.1:9/v1"


def test_models_tables_and_env(tmp_path: Path) -> None:
    toml = tmp_path / "f.toml"
    toml.write_text(
        '[model]\nname = "small"\n[model.remote]\nbase_url = "http://h:8080/v1"\n'
        '[models.big]\npath = "/m/big.gguf"\nidle_unload_seconds = 120\n'
    )
    cfg = load_config(toml, env={"FINECHAT_MODELS__BIG__N_CTX": "2048"})
    assert cfg.model.remote.base_url == "http://h:8080/v1" and cfg.model.name == "small"
    assert cfg.models["big"].n_ctx == 2048 and cfg.models["big"].idle_unload_seconds == 120
    toml.write_text('[models.big.remote]\nbase_url = "ftp://x"\n')
    with pytest.raises(Exception, match=r"models\.big\.remote\.base_url"):
        load_config(toml, env={})
