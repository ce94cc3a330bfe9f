"""``/healthz``: is the model loaded and can the database take writes?

For a Space's or an uptime monitor's liveness check. The database probe uses its own short
SQLite connection and a rolled-back schema change: it proves the file accepts writes (a
read-only mount or a vanished file fails) without touching the service's connection, whose
open transactions a ``BEGIN``/``ROLLBACK`` there could otherwise swallow.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.service import ChatService

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Health:
    model_loaded: bool
    database_writable: bool
    model: str
    pending: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.model_loaded and self.database_writable

    def as_json(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "error", "ok": self.ok, **asdict(self)}


def database_writable(path: str) -> tuple[bool, str]:
    """Take the write lock and make a change that is rolled back (blocking: run in a thread)."""
    if path == ":memory:":
        return True, ""
    if not Path(path).is_file():
        return False, "database file is missing"
    try:
        con = sqlite3.connect(
            f"file:{Path(path).resolve()}?mode=rw", uri=True, timeout=2.0, isolation_level=None
        )
    except sqlite3.Error as exc:
        return False, f"database cannot be opened: {exc}"
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("CREATE TABLE _finechat_healthz (x INTEGER)")
        con.execute("ROLLBACK")
        return True, ""
    except sqlite3.Error as exc:
        return False, f"database is not writable: {exc}"
    finally:
        con.close()


async def check(service: ChatService) -> Health:
    problems: list[str] = []
    try:
        tokens = await asyncio.wait_for(service.engine.tokenize("ok"), PROBE_TIMEOUT_S)
        loaded = bool(tokens) and service.engine.info.n_ctx > 0
    except Exception as exc:  # any failure means "not serving", reported, never raised
        loaded = False
        problems.append(f"model: {type(exc).__name__}")
    try:
        writable, why = await asyncio.wait_for(
            asyncio.to_thread(database_writable, service.store.path), PROBE_TIMEOUT_S
        )
    except TimeoutError:
        writable, why = False, "database probe timed out"
    if why:
        problems.append(why)
    return Health(
        model_loaded=loaded,
        database_writable=writable,
        model=service.model_name,
        pending=service.engine.pending,
        detail="; ".join(problems),
    )
