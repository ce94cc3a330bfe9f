"""The ``finechat`` command line.

Every command reports problems as one ``error: ...`` line and a non-zero exit code; tracebacks
are for bugs only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from core.admin import cmd_forget, cmd_prune, cmd_stats
from core.backup import cmd_backup
from core.commands import Command, ParserKit, contributed
from core.config import Config, load_config, with_overrides
from core.errors import ConfigError, FinechatError
from core.keys import user_key
from core.memory import MemoryStore
from core.service import ChatService, Delta, Done, Started


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file (also FINECHAT_CONFIG)")
    p.add_argument("--model", help="GGUF path, or owner/repo:file.gguf from the Hugging Face hub")
    p.add_argument("--db", help="SQLite memory database (default finechat.sqlite)")
    p.add_argument("--log-level", default=None, help="debug, info, warning (default), error")
    p.add_argument("--log-format", choices=("text", "json"), help="log lines as text or JSON")
    p.add_argument(
        "--backend-url",
        help="OpenAI-compatible server to answer with, e.g. http://127.0.0.1:8080/v1 "
        "(same as [model.remote] base_url)",
    )


def _gen_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--n-ctx", type=int, help="context size in tokens")
    p.add_argument("--threads", type=int, help="CPU threads for llama.cpp (0 = all)")


def build_parser() -> argparse.ArgumentParser:
    """The ``finechat`` parser with every installed subcommand."""
    return parser_and_commands()[0]


def parser_and_commands() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    """The parser, and the subcommands other packages contributed (``finechat.commands``)."""
    parser = argparse.ArgumentParser(
        prog="finechat", description="Serve a small fine-tuned chat model on the CPU."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("chat", help="interactive chat in the terminal (streaming)")
    _common(p)
    _gen_options(p)
    p.add_argument("--user", default="local", help="whose memory to use (default: local)")

    p = sub.add_parser("ask", help="answer one message and print the reply")
    _common(p)
    _gen_options(p)
    p.add_argument("text", help="the message ('-' reads standard input)")
    p.add_argument("--user", required=True, help="whose memory to use")

    p = sub.add_parser("history", help="print a user's current conversation")
    _common(p)
    p.add_argument("--user", required=True)
    p.add_argument("--all", action="store_true", help="include earlier (reset) conversations")

    p = sub.add_parser("reset", help="start a new conversation for a user (history is kept)")
    _common(p)
    p.add_argument("--user", required=True)

    p = sub.add_parser("serve", help="run every enabled front-end (web, Discord, Telegram)")
    _common(p)
    _gen_options(p)
    p.add_argument("--only", help="comma-separated front-ends to run (e.g. web,telegram)")

    from core.admin import add_parsers as add_admin_parsers
    from core.backup import add_parser as add_backup_parser

    add_admin_parsers(sub, _common)
    add_backup_parser(sub, _common)
    from core.config_cli import add_parser as add_config_parser

    add_config_parser(sub)  # config init / check / docs
    plugins = contributed(sub, ParserKit(common=_common, generation=_gen_options))
    return parser, plugins


def resolve_config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    model: dict[str, Any] = {}
    if getattr(args, "model", None):
        model.update(path=args.model, repo="", file="")
    if getattr(args, "n_ctx", None) is not None:
        model["n_ctx"] = args.n_ctx
    if getattr(args, "threads", None) is not None:
        model["n_threads"] = args.threads
    if getattr(args, "backend_url", None):
        model["remote"] = {"base_url": args.backend_url}
    generation = {
        "temperature": getattr(args, "temperature", None),
        "top_p": getattr(args, "top_p", None),
        "max_tokens": getattr(args, "max_tokens", None),
        "seed": getattr(args, "seed", None),
    }
    return with_overrides(cfg, model=model, generation=generation, database={"path": args.db})


def _setup_logging(level: str | None, fmt: str | None = None, content: bool = False) -> None:
    from core.logs import setup_logging

    level = level or os.environ.get("FINECHAT_LOG_LEVEL") or "warning"
    setup_logging(level, fmt or "text", content=content)


async def _stream_to(out: Any, service: ChatService, key: str, text: str) -> Done:
    done: Done | None = None
    async for event in service.reply(key, text):
        if isinstance(event, Started) and event.dropped_turns:
            print(
                f"[{event.dropped_turns} older messages no longer fit and were left out]",
                file=sys.stderr,
            )
        elif isinstance(event, Delta):
            out.write(event.text)
            out.flush()
        elif isinstance(event, Done):
            done = event
    out.write("\n")
    out.flush()
    assert done is not None
    return done


async def cmd_ask(config: Config, args: argparse.Namespace) -> int:
    from core.runtime import open_service

    text = sys.stdin.read() if args.text == "-" else args.text
    async with open_service(config) as service:
        await _stream_to(sys.stdout, service, user_key(args.user), text)
    return 0


CHAT_HELP = """commands: /reset  /retry  /persona [TEXT]  /history  /help  /quit"""


async def cmd_chat(config: Config, args: argparse.Namespace) -> int:
    from core.runtime import open_service

    key = user_key(args.user)
    async with open_service(config) as service:
        print(f"finechat — {service.model_name}. {CHAT_HELP}", flush=True)
        while True:
            try:
                line = await asyncio.to_thread(input, "you> ")
            except EOFError:
                print()
                return 0
            cmd, _, rest = line.strip().partition(" ")
            try:
                if cmd in {"/quit", "/exit"}:
                    return 0
                if cmd == "/help":
                    print(CHAT_HELP)
                elif cmd == "/reset":
                    await service.reset(key)
                    print("(new conversation)")
                elif cmd == "/persona":
                    if rest.strip():
                        await service.set_persona(key, rest)
                    print(f"(persona: {await service.get_persona(key)})")
                elif cmd == "/history":
                    for turn in await service.history(key):
                        print(f"{turn.role}: {turn.text}")
                elif cmd == "/retry":
                    print("bot> ", end="", flush=True)
                    async for event in service.retry(key):
                        if isinstance(event, Delta):
                            print(event.text, end="", flush=True)
                    print()
                elif line.strip():
                    print("bot> ", end="", flush=True)
                    await _stream_to(sys.stdout, service, key, line)
            except FinechatError as exc:
                print(f"\n({exc})", flush=True)


async def cmd_history(config: Config, args: argparse.Namespace) -> int:
    store = await MemoryStore.open(config.database.path)
    try:
        key = user_key(args.user)
        turns = await (store.all_messages(key) if args.all else store.history(key))
        if not turns:
            print(f"no messages for {key}", file=sys.stderr)
        for turn in turns:
            stamp = datetime.fromtimestamp(turn.created_at).strftime("%Y-%m-%d %H:%M:%S")
            text = turn.text.replace("\n", "\n    ")  # continuation lines stay indented
            print(f"[{stamp}] {turn.role}: {text}")
    finally:
        await store.aclose()
    return 0


async def cmd_reset(config: Config, args: argparse.Namespace) -> int:
    store = await MemoryStore.open(config.database.path)
    try:
        key = user_key(args.user)
        had = await store.reset(key)
        print(f"{key}: new conversation" + ("" if had else " (there was none)"))
    finally:
        await store.aclose()
    return 0


async def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from core.serve import serve

    only = {n.strip() for n in args.only.split(",") if n.strip()} if args.only else None
    return await serve(config, only)


COMMANDS = {
    "chat": cmd_chat,
    "ask": cmd_ask,
    "history": cmd_history,
    "reset": cmd_reset,
    "serve": cmd_serve,
    "stats": cmd_stats,
    "prune": cmd_prune,
    "forget": cmd_forget,
    "backup": cmd_backup,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser, plugins = parser_and_commands()
    args = parser.parse_args(argv)
    try:
        _setup_logging(getattr(args, "log_level", None))
        if args.command == "config":  # reads (or writes) the file itself
            from core.config_cli import run as run_config

            return run_config(args)
        plugin = plugins.get(args.command)
        if plugin is not None and plugin.direct is not None:  # own --config (a run file)
            return plugin.direct(args)
        config = resolve_config(args)
        _setup_logging(  # again, now that [logging] is known: flag > env > config
            args.log_level or os.environ.get("FINECHAT_LOG_LEVEL") or config.logging.level,
            getattr(args, "log_format", None) or config.logging.format,
            config.logging.content,
        )
        run = plugin.run if plugin is not None and plugin.run is not None else None
        return asyncio.run(run(config, args) if run else COMMANDS[args.command](config, args))
    except FinechatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
