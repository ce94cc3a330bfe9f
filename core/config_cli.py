"""``finechat config init|check|docs``: a configuration file to copy, validate and read about.

``init`` and ``docs`` are generated from the schema (:mod:`core.config_files`), so neither can
fall behind the code. ``check`` loads a file exactly as ``serve`` would (defaults, file,
environment) and exits 2 naming the bad key, or prints the effective values with secrets masked.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from core.config import load_config
from core.config_files import effective_text, init_text, reference_markdown
from core.errors import FinechatError


class ConfigFileExists(FinechatError):
    """``config init`` would overwrite a file."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("config", help="write, check or document the configuration file")
    actions = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")

    a = actions.add_parser(
        "init", help="write a commented configuration with every key at its default"
    )
    a.add_argument("path", nargs="?", help="file to write (default: standard output)")
    a.add_argument("--force", action="store_true", help="overwrite an existing file")

    a = actions.add_parser(
        "check", help="validate a configuration and print the effective values (secrets masked)"
    )
    a.add_argument("--config", help="TOML configuration file (also FINECHAT_CONFIG)")

    actions.add_parser("docs", help="print the configuration reference (docs/configuration.md)")


def run(args: argparse.Namespace) -> int:
    if args.config_command == "init":
        text = init_text()
        if args.path is None:
            sys.stdout.write(text)
            return 0
        write_new(Path(args.path), text, force=args.force)
        print(f"wrote {args.path}; check it with: finechat config check --config {args.path}")
        return 0
    if args.config_command == "check":
        config = load_config(args.config)  # ConfigError -> exit 2 naming the key (core.cli)
        sys.stdout.write(effective_text(config))
        source = args.config or os.environ.get("FINECHAT_CONFIG")
        where = f"{source} is valid" if source else "no file given: defaults and environment"
        print(f"# ok: {where}", file=sys.stderr)
        return 0
    sys.stdout.write(reference_markdown())
    return 0


def write_new(path: Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path`` in one step; an existing file needs ``force``."""
    if path.exists() and not force:
        raise ConfigFileExists(f"{path} exists; add --force to overwrite it")
    if path.is_dir():
        raise ConfigFileExists(f"{path} is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FinechatError(f"cannot write {path}: the folder {folder} does not exist")
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".finechat-", suffix=".toml", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise FinechatError(f"cannot write {path}: {exc.strerror}") from None
