"""The remote engine against a real ``python -m llama_cpp.server`` serving the bundled model.

The same chat scenarios as with the in-process engine (memory, streaming order, one reply per
conversation, token counts that match the local tokenizer), a server killed mid-stream (a
clean error for the user, the next turn works once it is back), and the acceptance command
``finechat ask TEXT --user U --backend-url http://127.0.0.1:PORT/v1``.

The server is a second llama.cpp process: run this file under the CPU lock.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from core.config import ChatConfig, GenerationConfig, RemoteConfig
from core.errors import ConversationBusy, EngineUnavailable
from core.llama_engine import LlamaEngine
from core.memory import MemoryStore
from core.remote_engine import RemoteEngine
from core.service import ChatService, Delta, Done, Started
from core.template import Message

pytestmark = pytest.mark.slow
CTX = 1024


class LlamaServer:
    """``python -m llama_cpp.server`` on a fixed local port, restartable."""

    def __init__(self, model: Path, port: int, log: Path) -> None:
        self.model, self.port, self.log = model, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 90.0) -> None:
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
            "--n_ctx", str(CTX), "--n_threads", "2", "--host", "127.0.0.1",
            "--port", str(self.port), "--model_alias", "smollm2",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-2000:]
            try:
                if httpx.get(self.base_url + "/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("llama_cpp.server did not come up")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    srv = LlamaServer(model_path, free_port(), log)
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
async def remote(server: LlamaServer) -> AsyncIterator[RemoteEngine]:
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    cfg = RemoteConfig(base_url=server.base_url, retries=1, backoff=0.1, read_timeout=30)
    engine = await RemoteEngine.connect(cfg, n_ctx=CTX, env={})
    yield engine
    await engine.aclose()


@pytest.fixture
async def rservice(remote: RemoteEngine, tmp_path: Path) -> AsyncIterator[ChatService]:
    store = await MemoryStore.open(tmp_path / "memory.sqlite")
    yield ChatService(
        remote,
        store,
        chat=ChatConfig(system_prompt="You are a helpful assistant."),
        generation=GenerationConfig(temperature=0.0, max_tokens=24, seed=1),
    )
    await store.aclose()


async def test_token_counts_match_the_local_tokenizer(
    remote: RemoteEngine, engine: LlamaEngine
) -> None:
    assert remote.info.n_ctx == CTX and remote.model == "smollm2"
    assert "llama-cpp-python" in remote._counter.name
    messages = [
        Message("system", "You are a helpful assistant."),
        Message("user", "What is the capital of France? Answer in one word."),
        Message("assistant", "Paris."),
        Message("user", "And of Italy?"),
    ]
    assert await remote.encode_messages(messages) == await engine.encode_messages(messages)


async def test_special_tokens_come_from_the_servers_own_vocabulary(remote: RemoteEngine) -> None:
    """The real server reads SmolLM2's ``<file_sep>`` as one token: it is defused, while ``<b>``
    (three tokens there) stays as typed (issue 13, item 5)."""
    text = "a<file_sep>b<jupyter_code>c<|im_start|>d <b>e</b> [1]"
    out = await remote.defuse(text)
    for special in ("<file_sep>", "<jupyter_code>", "<|im_start|>"):
        assert special not in out
    assert out.replace("\u200b", "") == text
    assert "<b>e</b> [1]" in out


async def test_the_same_chat_scenarios_pass(rservice: ChatService) -> None:
    first = await rservice.ask("telegram:1:1", "My name is Ada. Say hello to me.")
    assert first.text and first.message_id is not None
    assert first.finish_reason in {"stop", "length"} and first.ttft_seconds is not None
    events = [e async for e in rservice.reply("telegram:1:1", "What is my name?")]
    assert isinstance(events[0], Started) and isinstance(events[-1], Done)
    deltas = "".join(e.text for e in events if isinstance(e, Delta))
    assert deltas.strip() == events[-1].text
    assert events[0].prompt_tokens > first.prompt_tokens  # the first turn is in the prompt
    history = await rservice.history("telegram:1:1")
    assert [t.role for t in history] == ["user", "assistant", "user", "assistant"]
    assert await rservice.history("telegram:1:2") == []  # per user
    # one reply in flight per conversation, others not blocked
    gen = rservice.reply("discord:2:2", "Count from one to twenty in words.")
    assert isinstance(await gen.__anext__(), Started)
    with pytest.raises(ConversationBusy):
        await rservice.ask("discord:2:2", "hello?")
    other = asyncio.create_task(rservice.ask("discord:2:3", "hi"))
    rest = [e async for e in gen]
    assert isinstance(rest[-1], Done) and (await other).text


async def test_server_killed_mid_stream_then_back(
    rservice: ChatService, server: LlamaServer
) -> None:
    key = "web:crash"
    rservice.defaults = replace(rservice.defaults, max_tokens=400)
    got_text = False
    with pytest.raises(EngineUnavailable) as info:
        async for event in rservice.reply(key, "Count from one to one hundred in words."):
            if isinstance(event, Delta) and not got_text:
                got_text = True
                server.kill()
    assert got_text
    assert "try again" in str(info.value) and "Traceback" not in str(info.value)
    assert not rservice.busy(key)
    assert [t.role for t in await rservice.history(key)] == ["user"]  # no half answer
    # while it is down: a short answer, quickly
    with pytest.raises(EngineUnavailable):
        await rservice.ask(key, "still there?")
    server.start()
    rservice.defaults = replace(rservice.defaults, max_tokens=24)
    done = await rservice.ask(key, "Hello again.")
    assert done.text and done.message_id is not None
    assert [t.role for t in await rservice.history(key)][-1] == "assistant"


def test_cli_ask_with_backend_url(server: LlamaServer, tmp_path: Path) -> None:
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    db = tmp_path / "cli.sqlite"
    env = {**os.environ, "FINECHAT_MODEL__N_CTX": str(CTX)}
    base = [sys.executable, "-m", "core.cli"]
    ask = subprocess.run(
        [*base, "ask", "Say hello.", "--user", "u1", "--db", str(db),
         "--backend-url", server.base_url, "--max-tokens", "16", "--temperature", "0"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert ask.returncode == 0, ask.stderr
    assert ask.stdout.strip()
    history = subprocess.run(
        [*base, "history", "--user", "u1", "--db", str(db)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert "user: Say hello." in history.stdout
    assert f"assistant: {ask.stdout.strip()}" in history.stdout
