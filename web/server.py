"""The web app (Gradio on FastAPI, plus ``/healthz``) and the uvicorn server that runs it.

Gradio is mounted with ``gr.mount_gradio_app`` and served by ``uvicorn.Server.serve()`` inside
finechat's own event loop, never ``demo.launch()``: launch runs handlers on another thread and
loop, where the shared chat service (its asyncio locks, its aiosqlite connection, the engine's
streams) cannot be awaited. finechat's ``serve`` owns SIGINT/SIGTERM, so uvicorn's own signal
capture is switched off and it stops when the shared ``stop`` event is set.

The listening socket is bound here, before uvicorn starts: uvicorn answers a bind failure with
``sys.exit``, which would tear down every other front-end in the process.
"""

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from core.config import ApiConfig, WebConfig
from core.errors import FinechatError
from core.service import ChatService
from web import health
from web.arena import build_arena_tab, wire_leaderboard
from web.chat_ui import build_chat_tab, wire_load
from web.clients import parse_networks, resolve_client
from web.identity import login_problem
from web.model_label import page_model_name
from web.render import user_markdown
from web.ui_common import People

log = logging.getLogger("finechat.web")

#: localStorage key of the anonymous browser id. Stable (unlike Gradio's random default) so the
#: id survives server restarts; the encryption secret ships to the browser with the page, so it
#: protects nothing and is a constant for the same reason.
BROWSER_STORAGE_KEY = "finechat-browser-id"
_BROWSER_SECRET = "finechat-browser-state-v1"
START_TIMEOUT_S = 60.0
DOWNLOAD_CACHE_S = 600
STOP_TIMEOUT_S = 5

THEME = gr.themes.Soft(
    primary_hue="indigo",
    font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web-font downloads
    font_mono=["ui-monospace", "Consolas", "monospace"],
)
CSS = """
#chat-status, #arena-stats-a, #arena-stats-b { min-height: 1.5em; font-size: 0.9em; opacity: 0.85; }
#conv-list .wrap { flex-direction: column; align-items: stretch; gap: 2px; }
#conv-list label { overflow-wrap: anywhere; }
#conv-note { min-height: 1.5em; font-size: 0.9em; }
footer { display: none !important; }
"""


class WebStartError(FinechatError):
    """The web chat could not start (port in use, bad host, app failed to start)."""


def oauth_available() -> bool:
    """True on a Hugging Face Space with ``hf_oauth: true`` (the Space sets these variables)."""
    return bool(os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"))


def build_blocks(
    service: ChatService, *, oauth: bool = False, web: WebConfig | None = None
) -> gr.Blocks:
    """The page: a chat tab and an arena tab sharing one anonymous browser id."""
    people = People(parse_networks((web or WebConfig()).trusted_proxies))
    label = page_model_name(service)
    with gr.Blocks(
        title="finechat",
        analytics_enabled=False,
        fill_width=False,
        delete_cache=(DOWNLOAD_CACHE_S, DOWNLOAD_CACHE_S),  # conversation downloads
    ) as demo:
        browser_state = gr.BrowserState(
            None, storage_key=BROWSER_STORAGE_KEY, secret=_BROWSER_SECRET
        )
        with gr.Row(equal_height=True):
            gr.Markdown(f"## finechat · {user_markdown(label)}", elem_id="page-title")
            if oauth:
                gr.LoginButton(size="sm", scale=0)
        who_line = gr.Markdown("", elem_id="who")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                controls = build_chat_tab(service, browser_state, people, label)
            with gr.Tab("Arena", id="arena"):
                table = build_arena_tab(service, browser_state, people)
        wire_load(demo, service, browser_state, controls, who_line, people)
        wire_leaderboard(demo, service, table)
    demo.queue(default_concurrency_limit=8, max_size=256)
    blocks: gr.Blocks = demo
    return blocks


def read_auth_file(path: str) -> list[tuple[str, str]]:
    """``user:password`` lines for Gradio's login page.

    Blank lines and ``#`` comments are skipped; whitespace around a name or password is ignored
    (the password itself may contain ``:``).
    """
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise WebStartError(f"web.auth_file: cannot read {path!r} ({exc.strerror})") from None
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = (part.strip() for part in line.partition(":"))
        if not sep or not user or not password:
            # Never echo the line: it holds a password.
            raise WebStartError(f"web.auth_file: line {number} is not 'user:password'")
        problem = login_problem(user)
        if problem:
            raise WebStartError(f"web.auth_file: line {number}: {problem}")
        pairs.append((user, password))
    if not pairs:
        raise WebStartError(f"web.auth_file: {path!r} has no 'user:password' lines")
    return pairs


def build_app(
    service: ChatService,
    web: WebConfig,
    *,
    api_key: str | None = None,
    api: ApiConfig | None = None,
) -> FastAPI:
    """FastAPI with ``/healthz``, ``/metrics``, ``/v1`` (only with a key) and the Gradio page.

    ``api_key`` defaults to ``FINECHAT_API_KEY``. Without one the ``/v1`` routes are not
    mounted at all: the page may be behind a login (``auth_file``) or on a public Space, and
    the API must not be the open side door to the same engine.
    """
    from fastapi import Request
    from fastapi.responses import Response

    from core.logs import register_secret
    from core.metrics import CONTENT_TYPE, metrics_for
    from web.openai_api import API_KEY_ENV, create_router, key_matches

    key = (os.environ.get(API_KEY_ENV, "") if api_key is None else api_key).strip()
    if key:
        register_secret(key)
    trusted = parse_networks(web.trusted_proxies)
    app = FastAPI(title="finechat", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        result = await health.check(service)
        return JSONResponse(result.as_json(), status_code=200 if result.ok else 503)

    metrics = metrics_for(service)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus text format, for this machine's scraper or a holder of the API key."""
        peer = request.client.host if request.client else None
        local = resolve_client(peer, request.headers, trusted).local
        if not (local or key_matches(request.headers.get("authorization"), key)):
            return JSONResponse(
                {"error": "metrics are served to this machine or with the API key"},
                status_code=403,
            )
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if key:
        # The OpenAI-compatible API shares the engine (and its warm KV cache) with the page.
        app.include_router(
            create_router(
                service.engine,
                defaults=service.defaults,
                api_key=key,
                api=api,
                chat=service.chat_config,
                limiter=service.limiter,
                trusted_proxies=web.trusted_proxies,
            )
        )

    auth = read_auth_file(web.auth_file) if web.auth_file else None
    oauth = oauth_available() and auth is None
    gr.mount_gradio_app(
        app,
        build_blocks(service, oauth=oauth, web=web),
        path="/",
        auth=auth,
        auth_message="Sign in to keep your conversation with your account." if auth else None,
        root_path=web.root_path or None,
        footer_links=["api"],
        run_history=False,
        ssr_mode=False,
        show_error=False,  # gr.Error texts (written for people) still show; tracebacks never
        theme=THEME,
        css=CSS,
    )
    return app


def end_gradio_streams(app: FastAPI) -> None:
    """Close Gradio's long-lived heartbeat streams so uvicorn can stop without waiting on them.

    ``demo.close()`` does this for launched apps; a mounted app only exposes the event.
    """
    for route in app.routes:
        stop_event = getattr(getattr(route, "app", None), "stop_event", None)
        if isinstance(stop_event, asyncio.Event):
            stop_event.set()


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: finechat's ``serve`` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket, with an error a person can act on."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise WebStartError(f"web.host {host!r}: cannot resolve ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        hint = " (is another finechat running?)" if exc.errno in (98, 48) else ""
        raise WebStartError(
            f"cannot listen on {host}:{port}: {exc.strerror}{hint}; set web.port or --port"
        ) from None
    return sock


class WebServer:
    """Runs an ASGI app with uvicorn in the current loop until ``stop`` is set."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    async def run(
        self,
        stop: asyncio.Event,
        ready: asyncio.Event,
        on_started: Callable[[str], None] | None = None,
    ) -> None:
        sock = bind(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=STOP_TIMEOUT_S,
        )
        server = _Server(config)
        serving = asyncio.create_task(_serve(server, [sock]), name="uvicorn")
        stopper = asyncio.create_task(stop.wait())
        try:
            await _wait_started(server, serving)
            ready.set()
            if on_started is not None:
                on_started(self.url)
            await asyncio.wait([serving, stopper], return_when=asyncio.FIRST_COMPLETED)
            if serving.done() and not stop.is_set():
                serving.result()  # a crash surfaces here
                raise WebStartError("the web server stopped unexpectedly")
        finally:
            stopper.cancel()
            end_gradio_streams(self.app)
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            sock.close()


async def _serve(server: uvicorn.Server, sockets: Sequence[socket.socket]) -> None:
    try:
        await server.serve(sockets=list(sockets))
    except SystemExit:  # uvicorn's answer to a failed startup
        raise WebStartError("the web app failed to start (see the log above)") from None


async def _wait_started(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    """uvicorn has no 'started' event; poll its flag until then (or until it fails)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while not server.started:
        if serving.done():
            serving.result()
            raise WebStartError("the web server exited while starting")
        if loop.time() > deadline:
            raise WebStartError(f"the web server did not start within {START_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.02)
