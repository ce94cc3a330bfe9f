"""The ``web`` entry point of ``finechat serve``: the Gradio chat in the shared event loop."""

import asyncio

from core.config import ApiConfig, Config, WebConfig
from core.service import ChatService
from web.server import WebServer, build_app


class WebFrontend:
    """Serves the web chat (and ``/healthz``) until the shared stop event is set."""

    name = "web"

    def __init__(
        self,
        web: WebConfig,
        service: ChatService,
        *,
        api: ApiConfig | None = None,
        api_key: str | None = None,
    ) -> None:
        self.web = web
        self.service = service
        self.api = api
        self.api_key = api_key
        """``/v1`` key; None reads ``FINECHAT_API_KEY`` (tests pass one)."""
        self.server: WebServer | None = None

    @property
    def url(self) -> str | None:
        return self.server.url if self.server else None

    async def run(self, stop: asyncio.Event, ready: asyncio.Event) -> None:
        app = build_app(self.service, self.web, api_key=self.api_key, api=self.api)
        self.server = WebServer(app, self.web.host, self.web.port)
        await self.server.run(stop, ready, on_started=_announce)


def _announce(url: str) -> None:
    print(f"web chat on {url}", flush=True)


def create(config: Config, service: ChatService) -> WebFrontend | None:
    """Factory for the ``finechat.frontends`` entry point; None when ``[web] enabled = false``."""
    if not config.web.enabled:
        return None
    return WebFrontend(config.web, service, api=config.api)
