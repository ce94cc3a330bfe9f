"""Subcommands that other packages add to ``finechat`` without ``core`` importing them.

``core`` is the composition's lowest layer: ``web`` and ``training`` import it, never the other
way round. Their commands (``web``, ``api``, ``bench``, ``train``, ``export``, ``export-chats``,
``eval``) are found the way front-ends are (:mod:`core.frontends`): each package registers a
function under the ``finechat.commands`` entry-point group (see pyproject.toml). The function
adds its subparsers and returns the :class:`Command` s that run them. Building the parser only
imports argparse-level code; heavy libraries load inside the commands.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from core.config import Config

GROUP = "finechat.commands"

log = logging.getLogger("finechat")

ConfiguredRun = Callable[[Config, argparse.Namespace], Coroutine[Any, Any, int]]
"""Runs in finechat's event loop with the resolved configuration (flags, env, TOML)."""
DirectRun = Callable[[argparse.Namespace], int]
"""Runs outside any event loop and reads its own configuration (training run files)."""
AddOptions = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class ParserKit:
    """The option groups every finechat command shares, handed to contributed commands."""

    common: AddOptions
    """``--config --model --db --log-level --log-format --backend-url``."""
    generation: AddOptions
    """``--temperature --top-p --max-tokens --seed --n-ctx --threads``."""


@dataclass(frozen=True)
class Command:
    """One subcommand: exactly one of ``run`` and ``direct`` is set."""

    name: str
    run: ConfiguredRun | None = None
    direct: DirectRun | None = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.direct is None):
            raise ValueError(f"command {self.name!r}: set exactly one of run and direct")


Register = Callable[[Any, ParserKit], Sequence[Command]]
"""``register(subparsers, kit) -> commands``: the entry point's object."""


def contributed(sub: Any, kit: ParserKit) -> dict[str, Command]:
    """Add every installed package's subcommands to ``sub``; a broken plugin is skipped."""
    found: dict[str, Command] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            register: Register = ep.load()
        except ImportError as exc:  # an optional extra that is not installed
            log.debug("finechat commands from %s unavailable: %s", ep.value, exc)
            continue
        for command in register(sub, kit):
            found[command.name] = command
    return found
