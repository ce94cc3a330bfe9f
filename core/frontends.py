"""How ``finechat serve`` finds front-ends without ``core`` importing any platform library.

Front-ends register a factory under the ``finechat.frontends`` entry-point group (see
pyproject.toml). A factory gets the configuration and the chat service and returns a
:class:`Frontend`, or ``None`` when it is not configured (no token, disabled).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol

from core.config import Config
from core.errors import FinechatError
from core.service import ChatService

GROUP = "finechat.frontends"


class Frontend(Protocol):
    name: str

    async def run(self, stop: asyncio.Event, ready: asyncio.Event) -> None:
        """Serve until ``stop`` is set; set ``ready`` once started. Raise if it cannot start."""
        ...


FrontendFactory = Callable[[Config, ChatService], "Frontend | None"]


@dataclass(frozen=True)
class FrontendEntry:
    name: str
    load: Callable[[], FrontendFactory]


def discover(names: set[str] | None = None) -> list[FrontendEntry]:
    """Registered front-ends (optionally only ``names``), in a stable order."""
    found = [
        FrontendEntry(ep.name, ep.load)
        for ep in entry_points(group=GROUP)
        if names is None or ep.name in names
    ]
    return sorted(found, key=lambda e: e.name)


class FrontendUnavailable(FinechatError):
    """A front-end is configured but its optional dependency is not installed."""
