"""Shared fixtures: the real bundled SmolLM2 GGUF through llama-cpp-python, real SQLite files.

The engine is loaded once per test session (one llama.cpp context: the suite never runs two
inference engines at once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.config import ChatConfig, GenerationConfig
from core.llama_engine import LlamaEngine
from core.memory import MemoryStore
from core.model_source import bundled_model_path
from core.service import ChatService

TEST_CTX = 1024


@pytest.fixture(scope="session")
def model_path() -> Path:
    return bundled_model_path()


@pytest.fixture(scope="session")
def engine(model_path: Path) -> Iterator[LlamaEngine]:
    eng = LlamaEngine.load(model_path, n_ctx=TEST_CTX, n_threads=2, n_batch=256, n_slots=4)
    yield eng
    eng.close_sync()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MemoryStore]:
    s = await MemoryStore.open(tmp_path / "memory.sqlite")
    yield s
    await s.aclose()


@pytest.fixture
def service(engine: LlamaEngine, store: MemoryStore) -> ChatService:
    return ChatService(
        engine,
        store,
        chat=ChatConfig(system_prompt="You are a helpful assistant.", max_input_chars=20000),
        generation=GenerationConfig(temperature=0.0, max_tokens=24, seed=1),
    )
