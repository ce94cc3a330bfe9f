"""``finechat backup PATH``: a consistent copy of the memory database, safe while serving.

Copying ``finechat.sqlite`` with ``cp`` while ``finechat serve`` writes to it can produce a torn
file (and misses what still sits in the ``-wal`` file). SQLite's online backup API copies a
consistent snapshot through a read transaction, so the server keeps answering meanwhile. The
copy is checked with ``PRAGMA integrity_check`` before the command reports success.

The same function keeps a copy before a schema upgrade (:meth:`core.memory.MemoryStore.open`):
an upgrade is one-way, so the file as it was is kept next to it as ``NAME.vN.bak``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import FinechatError, InvalidInput


class BackupError(FinechatError):
    """The copy could not be made or failed its check; the database itself is untouched."""


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    bytes: int
    schema_version: int


def backup_database(
    source: str | Path, target: str | Path, *, overwrite: bool = False
) -> BackupInfo:
    """Copy ``source`` to ``target`` consistently (blocking: call it in a thread)."""
    src_path, dst_path = Path(source), Path(target)
    if not src_path.is_file():
        raise InvalidInput(f"no database at {str(src_path)!r}")
    if dst_path.exists() and not overwrite:
        raise InvalidInput(f"{str(dst_path)!r} exists; choose another name or pass --force")
    if dst_path.resolve() == src_path.resolve():
        raise InvalidInput("the backup must be a different file from the database")
    partial = dst_path.with_name(dst_path.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(src_path)) as src:
            src.execute("PRAGMA busy_timeout=5000")
            with contextlib.closing(sqlite3.connect(partial)) as dst:
                src.backup(dst)
                ok = dst.execute("PRAGMA integrity_check").fetchone()
                version = int(dst.execute("PRAGMA user_version").fetchone()[0])
                if dst.execute("PRAGMA journal_mode").fetchone()[0] != "delete":
                    dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        if not ok or ok[0] != "ok":
            raise BackupError(f"the copy failed its integrity check: {ok[0] if ok else '?'}")
        partial.replace(dst_path)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup of {str(src_path)!r} failed: {exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return BackupInfo(dst_path, dst_path.stat().st_size, version)


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("backup", help="copy the memory database consistently (safe while serving)")
    common(p)
    p.add_argument("path", help="the file to write, e.g. backups/finechat-2026-12-02.sqlite")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")


async def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    info = await asyncio.to_thread(
        backup_database, config.database.path, args.path, overwrite=args.force
    )
    print(
        f"wrote {info.path} ({info.bytes / 1e6:.1f} MB, schema v{info.schema_version}); "
        "restore by stopping finechat and copying it over the database file"
    )
    return 0
