"""``finechat web``, ``finechat api`` and ``finechat bench``: the serving commands of ``web``.

Registered under the ``finechat.commands`` entry point (see :mod:`core.commands`), so ``core``
never imports this package. Nothing heavy is imported here: FastAPI, uvicorn, Gradio and the
benchmark load inside the commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from core.commands import Command, ParserKit
from core.config import Config, with_overrides


def register(sub: Any, kit: ParserKit) -> Sequence[Command]:
    p = sub.add_parser("web", help="serve only the web chat (Gradio page, arena, /healthz)")
    kit.common(p)
    kit.generation(p)
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0 = all)")
    p.add_argument("--port", type=int, help="TCP port (default 7860)")
    p.add_argument("--root-path", help="URL prefix when served behind a reverse proxy")

    p = sub.add_parser("api", help="serve the OpenAI-compatible API (/v1/chat/completions)")
    kit.common(p)
    kit.generation(p)
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--slots", type=int, help="conversations decoded together")
    p.add_argument(
        "--allow-no-key",
        action="store_true",
        help="serve on a non-loopback --host without FINECHAT_API_KEY (anyone can use it)",
    )

    p = sub.add_parser("bench", help="measure the engine against raw llama-cpp-python")
    kit.common(p)
    p.add_argument("--threads", type=int, help="CPU threads for llama.cpp (0 = all)")
    p.add_argument("--n-ctx", type=int, help="context of each conversation slot")
    p.add_argument("--users", default="8,32", help="concurrent users to simulate (default 8,32)")
    p.add_argument("--tokens", type=int, default=128, help="answer length (greedy)")
    p.add_argument("--turns", type=int, default=2, help="turns per simulated user")
    p.add_argument("--history-tokens", type=int, default=1400, help="returning user's history")
    p.add_argument("--llama-server", help="path to llama.cpp's llama-server binary (anchor)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    return [
        Command("web", run=cmd_web),
        Command("api", run=cmd_api),
        Command("bench", run=cmd_bench),
    ]


async def cmd_web(config: Config, args: argparse.Namespace) -> int:
    """Only the web chat; web.enabled is implied by asking for it."""
    from core.serve import serve

    web = {"enabled": True, "host": args.host, "port": args.port, "root_path": args.root_path}
    return await serve(with_overrides(config, web=web), {"web"})


async def cmd_api(config: Config, args: argparse.Namespace) -> int:
    if args.slots is not None:
        config = with_overrides(config, model={"slots": args.slots})
    from web.openai_api import serve_api  # FastAPI/uvicorn only for this command

    return await serve_api(config, host=args.host, port=args.port, allow_no_key=args.allow_no_key)


async def cmd_bench(config: Config, args: argparse.Namespace) -> int:
    from core.bench import run_bench

    return await run_bench(config, args)
