"""The API behind the web's door (issue 13, items 1, 2, 8 and 11), over real HTTP on 127.0.0.1.

A scripted engine answers: what is under test is the door — keys, limits, errors, client
addresses, hang-ups — not the model (the real model's API round trip is in test_openai_api.py
and test_web.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import ApiConfig, ChatConfig, LimitsConfig, WebConfig
from core.engine import ModelInfo, SamplingParams
from core.limits import Limiter
from core.memory import MemoryStore
from core.template import ChatTemplate
from tests.fakes.scripted_engine import ScriptedEngine
from tests.web_support import serve_web
from web.clients import parse_networks, resolve_client
from web.openai_api import check_exposure, create_app, key_matches

KEY = "test-api-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
DEFAULTS = SamplingParams(temperature=0.0, max_tokens=16)


@asynccontextmanager
async def api_server(
    engine: ScriptedEngine,
    *,
    api: ApiConfig | None = None,
    limiter: Limiter | None = None,
    trusted: tuple[str, ...] = (),
    key: str = KEY,
) -> AsyncIterator[str]:
    """``finechat api``'s app on an ephemeral port (uvicorn in this loop, as serve_api runs it)."""
    app = create_app(
        engine,
        defaults=DEFAULTS,
        api_key=key,
        api=api or ApiConfig(max_tokens=256),
        chat=ChatConfig(max_input_chars=2000),
        limiter=limiter,
        trusted_proxies=trusted,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign,attr-defined]
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        await engine.aclose()


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    return str(body["error"]["message"])


# -- 1. closed unless opened -------------------------------------------------------------------


async def test_web_server_without_a_key_does_not_mount_the_api(tmp_path: Path) -> None:
    """Reproduction: with a login page, /v1 answered anyone (and with no key set at all)."""
    auth_file = tmp_path / "users.txt"
    auth_file.write_text("ada:lovelace\n", encoding="utf-8")
    web = WebConfig(port=0, auth_file=str(auth_file))
    async with (
        serve_web(ScriptedEngine(), tmp_path / "m.sqlite", web) as served,
        httpx.AsyncClient(timeout=30) as http,
    ):
        assert (await http.get(served.url + "v1/models")).status_code == 404
        r = await http.post(served.url + "v1/chat/completions", json=HI)
        assert r.status_code == 404
        assert (await http.get(served.url + "healthz")).status_code == 200


async def test_web_server_api_answers_only_with_the_key(tmp_path: Path) -> None:
    engine = ScriptedEngine("Hello there.")
    web = WebConfig(port=0, trusted_proxies=("127.0.0.1",))
    async with (
        serve_web(engine, tmp_path / "m.sqlite", web, api_key=KEY) as served,
        httpx.AsyncClient(timeout=30) as http,
    ):
        url = served.url + "v1/chat/completions"
        assert (await http.post(url, json=HI)).status_code == 401
        bad = {"Authorization": "Bearer wrong-key"}
        assert (await http.post(url, json=HI, headers=bad)).status_code == 401
        # Reproduction: a non-ASCII header made secrets.compare_digest raise (HTTP 500).
        for raw in ("Bearer clé".encode("latin-1"), b"Bearer \xff\xfe\x80", b"\xc3\xa9", b"Bearer"):
            r = await http.post(url, json=HI, headers={"Authorization": raw})
            assert r.status_code == 401, raw
            assert "API key" in error_of(r)
        ok = await http.post(url, json=HI, headers=AUTH)
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["message"]["content"] == "Hello there."

        # /metrics: this machine, or the key; a visitor through the (trusted) proxy is refused.
        metrics = served.url + "metrics"
        assert (await http.get(metrics)).status_code == 200
        outside = {"X-Forwarded-For": "203.0.113.9"}
        assert (await http.get(metrics, headers=outside)).status_code == 403
        assert (await http.get(metrics, headers={**outside, **AUTH})).status_code == 200


def test_client_addresses_believe_only_trusted_proxies() -> None:
    trusted = parse_networks(["10.0.0.0/8", "::1"])
    fwd = {"x-forwarded-for": "198.51.100.4, 10.1.2.3"}
    assert resolve_client("10.9.9.9", fwd, trusted).address == "198.51.100.4"
    # An untrusted peer's header is ignored; a forwarded request is never "local".
    assert resolve_client("127.0.0.1", fwd, trusted) == resolve_client("127.0.0.1", fwd, ())
    assert resolve_client("127.0.0.1", fwd, ()).local is False
    assert resolve_client("127.0.0.1", {}, ()).local is True
    assert resolve_client("::1", {"x-forwarded-for": "::1"}, trusted).local is True
    assert resolve_client("10.0.0.1", {"x-forwarded-for": "junk, 8.8.8.8"}, trusted).address == (
        "8.8.8.8"
    )
    for peer, header in [(None, ""), ("", "x"), ("not-an-ip", "1.2.3.4"), ("10.0.0.1", "[::")]:
        client = resolve_client(peer, {"x-forwarded-for": header}, trusted)
        assert isinstance(client.address, str) and not (peer is None and client.local)


def test_key_comparison_is_total() -> None:
    assert key_matches("Bearer abc", "abc") and key_matches("bearer  abc ", "abc")
    for header in (None, "", "abc", "Bearer ab", "Basic abc", "Bearer \udcff", "Bearer ∞"):
        assert not key_matches(header, "abc")
    assert not key_matches("Bearer ", "")


def test_finechat_api_refuses_a_public_address_without_a_key(tmp_path: Path) -> None:
    """Reproduction: ``finechat api --host 0.0.0.0`` served the engine to the network, keyless."""
    env = {k: v for k, v in os.environ.items() if k != "FINECHAT_API_KEY"}
    out = subprocess.run(
        [sys.executable, "-m", "core.cli", "api", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 2
    assert "--allow-no-key" in out.stderr and "FINECHAT_API_KEY" in out.stderr
    check_exposure("127.0.0.1", "", allow_no_key=False)  # loopback: fine without a key
    check_exposure("0.0.0.0", "k", allow_no_key=False)
    check_exposure("0.0.0.0", "", allow_no_key=True)
    from core.cli import build_parser

    args = build_parser().parse_args(["api", "--host", "0.0.0.0", "--allow-no-key"])
    assert args.allow_no_key is True and args.host == "0.0.0.0"


# -- 2. request limits, OpenAI-style errors ----------------------------------------------------


async def test_request_limits_and_errors(tmp_path: Path) -> None:
    engine = ScriptedEngine("ok then")
    api = ApiConfig(max_body_bytes=4096, max_messages=3, max_tokens=100)
    async with api_server(engine, api=api) as base, httpx.AsyncClient(timeout=30) as http:
        url = base + "/v1/chat/completions"

        async def post(body: Any) -> httpx.Response:
            return await http.post(url, json=body, headers=AUTH)

        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        assert (await post(big)).status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}]}'

        r = await http.post(url, content=chunks(), headers=AUTH)
        assert r.status_code == 413 and "4,096" in error_of(r)

        many = {"messages": [{"role": "user", "content": "a"}] * 4}
        r = await post(many)
        assert r.status_code == 400 and "at most 3" in error_of(r)
        r = await post({**HI, "max_tokens": 101})
        assert r.status_code == 400 and "(100)" in error_of(r)
        r = await post({**HI, "n": 2})
        assert r.status_code == 400 and "n must be 1" in error_of(r)
        r = await post({"messages": [{"role": "user", "content": "z" * 2001}]})
        assert r.status_code == 400 and "2,000" in error_of(r)
        for body in ({**HI, "seed": 2**70}, {**HI, "top_k": 2**40}, {**HI, "stop": ["s" * 999]}):
            assert (await post(body)).status_code == 400
        for raw in (b"[" * 4000, b"1" * 4096, b'{"messages": NaN}', b"\xff\xfe"):
            r = await http.post(url, content=raw, headers=AUTH)
            assert r.status_code == 400, raw[:10]

        # The chat's input checks: control characters dropped, lone surrogates replaced.
        raw = b'{"messages": [{"role": "user", "content": "he\\u0000l\\u001blo \\ud800!"}]}'
        r = await http.post(url, content=raw, headers=AUTH)
        assert r.status_code == 200
        sent = engine.requests[-1].messages[-1].content
        assert sent == "hello \ufffd!"

        # An engine failure: 503 with a generic message, never the exception's text (item 11).
        engine.fail_generate = RuntimeError("segfault near /srv/secret/model.gguf")
        r = await post(HI)
        assert r.status_code == 503 and "secret" not in r.text
        engine.fail_generate = None
        engine.fail_stream = RuntimeError("stream broke at /srv/secret")
        r = await post(HI)
        assert r.status_code == 503 and "secret" not in r.text
        stream = await http.post(url, json={**HI, "stream": True}, headers=AUTH)
        assert stream.status_code == 200 and "secret" not in stream.text
        assert '"error"' in stream.text
        engine.fail_stream = None


async def test_a_template_that_raises_is_a_400() -> None:
    """Reproduction: a chat template's raise_exception became an HTTP 500."""
    engine = ScriptedEngine()
    strict = ChatTemplate(
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    info = engine.info
    engine.info = ModelInfo(info.name, info.path, info.n_ctx, strict, False, "", ())
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}
    async with api_server(engine) as base, httpx.AsyncClient(timeout=30) as http:
        r = await http.post(base + "/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 400 and "template" in error_of(r)


async def test_a_person_over_the_limit_gets_429_with_retry_after(tmp_path: Path) -> None:
    store = await MemoryStore.open(tmp_path / "limits.sqlite")
    limiter = Limiter(store, LimitsConfig(replies_per_minute=2))
    engine = ScriptedEngine("counted")
    try:
        async with (
            api_server(engine, limiter=limiter, trusted=("127.0.0.1",)) as base,
            httpx.AsyncClient(timeout=30, headers=AUTH) as http,
        ):
            url = base + "/v1/chat/completions"
            one = {"X-Forwarded-For": "198.51.100.1"}
            for _ in range(2):
                assert (await http.post(url, json=HI, headers=one)).status_code == 200
            n_generated = len(engine.requests)
            r = await http.post(url, json=HI, headers=one)
            assert r.status_code == 429
            assert "limit" in error_of(r) and "resets in" in error_of(r)
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            assert len(engine.requests) == n_generated  # nothing generated
            # Another client address has its own allowance.
            other = {"X-Forwarded-For": "198.51.100.2"}
            assert (await http.post(url, json=HI, headers=other)).status_code == 200
    finally:
        await store.aclose()


# -- 8. a client that hangs up stops its generation --------------------------------------------


async def test_hanging_up_right_after_the_first_chunk_cancels_the_generation() -> None:
    """Reproduction: the SSE body yielded its first chunk outside its try, so a client gone at
    that point left the generation running to the end."""
    engine = ScriptedEngine("word " * 2000, delay=0.01)
    body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 2000}
    async with api_server(engine, api=ApiConfig(max_tokens=2000)) as base:
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream(
                "POST",
                base + "/v1/chat/completions",
                json={**body, "stream": True},
                headers=AUTH,
            ) as resp,
        ):
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    break  # the role chunk: hang up now
        key = engine.requests[-1].conversation
        await asyncio.wait_for(engine.wait_idle(), 10)  # a guard against a hang, not a speed bound
        assert engine.finished[key] == "cancelled"

        # The same for a client that gives up on a non-streamed answer.
        with pytest.raises(httpx.ReadTimeout):
            async with httpx.AsyncClient(timeout=0.3) as http:
                await http.post(
                    base + "/v1/chat/completions",
                    json={**body, "messages": [{"role": "user", "content": "again"}]},
                    headers=AUTH,
                )
        key = engine.requests[-1].conversation
        await asyncio.wait_for(engine.wait_idle(), 10)
        assert engine.finished[key] == "cancelled"


# -- fuzz: no input gives a 500 ----------------------------------------------------------------


class ThreadServer:
    """The API app in a thread with its own loop, for the synchronous hypothesis test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = 0
        self._ready = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        store = await MemoryStore.open(self.tmp / "fuzz.sqlite")
        limiter = Limiter(store, LimitsConfig(replies_per_minute=0, tokens_per_day=0))
        app = create_app(
            ScriptedEngine("fuzzed"),
            defaults=DEFAULTS,
            api_key=KEY,
            api=ApiConfig(max_body_bytes=64 * 1024, max_tokens=64),
            chat=ChatConfig(max_input_chars=4000),
            limiter=limiter,
        )
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
        )
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign,attr-defined]
        task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 - uvicorn has no "started" event
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self._ready.set()
        await task
        await store.aclose()

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        assert self._ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.should_exit = True
        self._thread.join(30)


@pytest.fixture(scope="module")
def fuzz_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ThreadServer(tmp_path_factory.mktemp("fuzz")) as server:
        yield f"http://127.0.0.1:{server.port}"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "", "developer"]) | _json},
    optional={"content": st.text(max_size=200) | _json, "name": _json},
)
_bodies = st.one_of(
    st.binary(max_size=300),
    _json.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"messages": st.lists(_message, max_size=5) | _json},
        optional={
            k: _json | st.integers(-(2**70), 2**70)
            for k in (
                "max_tokens",
                "temperature",
                "top_p",
                "top_k",
                "seed",
                "stop",
                "n",
                "stream",
                "user",
            )
        },
    ).map(lambda v: json.dumps(v).encode()),
)
_header_value = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip()
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=_bodies,
    auth=st.one_of(
        st.just(f"Bearer {KEY}".encode()),
        _header_value.map(lambda v: (b"Bearer " + v).strip()),
        _header_value,
    ),
    content_type=st.sampled_from([b"application/json", b"text/plain", b""]) | _header_value,
)
def test_no_body_or_header_gives_a_500(
    fuzz_url: str, body: bytes, auth: bytes, content_type: bytes
) -> None:
    headers = {"Authorization": auth, "Content-Type": content_type}
    with httpx.Client(timeout=30) as http:
        r = http.post(fuzz_url + "/v1/chat/completions", content=body, headers=headers)
    assert r.status_code in {200, 400, 401, 413, 429, 503}, (r.status_code, r.text[:300])
    if r.status_code != 200:
        assert isinstance(r.json()["error"]["message"], str)
    elif r.headers["content-type"].startswith("application/json"):
        assert "fuzzed".startswith(r.json()["choices"][0]["message"]["content"])
