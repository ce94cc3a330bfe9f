"""What a Hugging Face Space runs (README front-matter: ``sdk: gradio``, ``app_file: web/app.py``).

The Space starts ``python web/app.py`` from a checkout that is not pip-installed, so this file
puts the repository root on ``sys.path`` and starts the web front-end directly (entry points
need an installed package). Everything else is the normal configuration: the model comes from
``FINECHAT_MODEL__REPO`` / ``FINECHAT_MODEL__FILE`` (downloaded once with huggingface_hub) or
the bundled SmolLM2; memory goes to ``/data/finechat.sqlite`` when the Space has persistent
storage, else to the app directory (lost when the Space restarts).
"""

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# ``python web/app.py`` puts web/ first on sys.path, where server.py or health.py could shadow
# other packages' modules; the repository root is what the imports below need.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "web"]
sys.path.insert(0, str(ROOT))

from core.config import Config, load_config, with_overrides  # noqa: E402
from core.errors import ConfigError, FinechatError  # noqa: E402

SPACE_DATA = Path("/data")
SPACE_PROXIES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "fc00::/7", "::1")


def space_config(env: Mapping[str, str], data_dir: Path = SPACE_DATA) -> Config:
    """The configuration as usual, plus what a Space expects: all interfaces, its port."""
    config = load_config(env=env)
    web: dict[str, object] = {
        "enabled": True,
        "host": env.get("GRADIO_SERVER_NAME") or "0.0.0.0",
        "port": env.get("GRADIO_SERVER_PORT") or env.get("PORT") or None,
    }
    if env.get("SPACE_ID") and not config.web.trusted_proxies:
        # A Space is reached only through Hugging Face's proxies, from private addresses:
        # believe their X-Forwarded-For, or every visitor would share one address (and one
        # [limits] allowance). An explicit web.trusted_proxies wins.
        web["trusted_proxies"] = list(SPACE_PROXIES)
    database: dict[str, str] = {}
    explicit_db = "FINECHAT_DB" in env or "FINECHAT_DATABASE__PATH" in env
    if not explicit_db and data_dir.is_dir() and os.access(data_dir, os.W_OK):
        database["path"] = str(data_dir / "finechat.sqlite")
    return with_overrides(config, web=web, database=database)


async def run(config: Config) -> int:
    from core.runtime import open_service
    from core.serve import install_signal_handlers, run_frontends
    from web.frontend import WebFrontend

    stop = asyncio.Event()
    remove = install_signal_handlers(stop)
    try:
        async with open_service(config) as service:
            return await run_frontends([WebFrontend(config.web, service)], stop)
    finally:
        remove()


def main() -> int:
    import logging

    logging.basicConfig(level=os.environ.get("FINECHAT_LOG_LEVEL", "INFO").upper())
    try:
        return asyncio.run(run(space_config(os.environ)))
    except FinechatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
