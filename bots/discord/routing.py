"""Point discord.py at another REST base and gateway (a Discord API proxy, or a test fake).

discord.py has no per-client setting for this: the REST base is the class attribute
``discord.http.Route.BASE`` (and a copy, ``discord.webhook.async_.Route.BASE``, used for
interaction responses and follow-ups), and the gateway a plain client connects to is
``DiscordWebSocket.DEFAULT_GATEWAY`` (READY's ``resume_gateway_url`` is used for resumes). These
are process-wide, which is fine because ``finechat serve`` runs at most one Discord client per
process; :func:`apply_routing` sets all three together, right before the client starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_API = "https://discord.com/api/v10"
DEFAULT_GATEWAY = "wss://gateway.discord.gg/"


@dataclass(frozen=True)
class Routing:
    api_base: str
    gateway: str


def resolve_routing(api_base_url: str, gateway_url: str) -> Routing:
    """Normalise configured URLs: a base without an ``/api`` path gets ``/api/v10`` appended
    (proxies such as nirn-proxy mirror Discord's paths), and no trailing slash."""
    api = (api_base_url or DEFAULT_API).rstrip("/")
    if "/api" not in urlsplit(api).path:
        api += "/api/v10"
    return Routing(api_base=api, gateway=gateway_url or DEFAULT_GATEWAY)


def apply_routing(routing: Routing) -> None:
    import discord.http
    import discord.webhook.async_
    import yarl
    from discord.gateway import DiscordWebSocket

    discord.http.Route.BASE = routing.api_base
    discord.webhook.async_.Route.BASE = routing.api_base  # type: ignore[attr-defined]
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(routing.gateway)
