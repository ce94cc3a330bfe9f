"""``finechat serve``: every enabled front-end in one event loop, stopped together.

One ``asyncio.run`` owns the loop; each front-end runs as a task that sets ``ready`` once it is
up. If any fails to start, everything stops and serve exits non-zero. SIGINT/SIGTERM set the
shared stop event, and each front-end closes its own platform client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from core.config import Config
from core.errors import FinechatError
from core.frontends import Frontend, discover
from core.loopwatch import watch_loop
from core.metrics import metrics_for
from core.runtime import open_service
from core.service import ChatService

log = logging.getLogger("finechat.serve")


class ServeError(FinechatError):
    pass


def build_frontends(
    config: Config, service: ChatService, only: set[str] | None = None
) -> list[Frontend]:
    """Instantiate the registered front-ends that are configured."""
    frontends: list[Frontend] = []
    for entry in discover(only):
        try:
            factory = entry.load()
            frontend = factory(config, service)
        except ImportError as exc:
            raise ServeError(
                f"front-end {entry.name!r} needs an optional dependency: "
                f"pip install 'finechat[{entry.name}]' ({exc.name or exc})"
            ) from None
        if frontend is not None:
            frontends.append(frontend)
    if only:
        missing = only - {f.name for f in frontends}
        if missing:
            raise ServeError(
                f"front-end(s) {', '.join(sorted(missing))} requested but not configured or unknown"
            )
    return frontends


async def run_frontends(
    frontends: list[Frontend], stop: asyncio.Event, *, start_timeout: float = 120.0
) -> int:
    """Run front-ends until ``stop``; return 0 on a clean stop, 1 if one failed."""
    failed = False
    readies = [asyncio.Event() for _ in frontends]
    tasks = {
        asyncio.create_task(f.run(stop, ready), name=f"frontend:{f.name}"): f
        for f, ready in zip(frontends, readies, strict=True)
    }

    async def all_ready() -> None:
        await asyncio.gather(*(r.wait() for r in readies))

    ready_task: asyncio.Task[None] = asyncio.create_task(all_ready())
    try:
        done, _ = await asyncio.wait(
            [ready_task, *tasks], timeout=start_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready_task not in done:
            failed = True
            for task in done:
                _report(tasks[task], task)
            if not done:
                log.error("front-ends did not start within %.0f s", start_timeout)
        else:
            names = ", ".join(f.name for f in frontends)
            log.info("serving: %s", names)
            print(f"finechat is serving: {names} (Ctrl-C to stop)", flush=True)
            stop_task = asyncio.create_task(_wait(stop))
            done, _ = await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            for task in done:
                if task in tasks and not (stop.is_set() and _finished_cleanly(task)):
                    failed = _report(tasks[task], task) or failed
    finally:
        ready_task.cancel()
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                failed = True
                log.error("front-end %s failed while stopping: %s", tasks[task].name, result)
    return 1 if failed else 0


def _finished_cleanly(task: asyncio.Task[None]) -> bool:
    return task.cancelled() or task.exception() is None


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


def _report(frontend: Frontend, task: asyncio.Task[None]) -> bool:
    if task.cancelled():
        return False
    exc = task.exception()
    if exc is None:
        log.error("front-end %s exited unexpectedly", frontend.name)
        return True
    message = str(exc) if isinstance(exc, FinechatError) else f"{type(exc).__name__}: {exc}"
    log.error("front-end %s failed: %s", frontend.name, message)
    return True


def install_signal_handlers(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove


async def serve(config: Config, only: set[str] | None = None) -> int:
    stop = asyncio.Event()
    remove = install_signal_handlers(stop)
    try:
        async with open_service(config) as service:
            frontends = build_frontends(config, service, only)
            if not frontends:
                raise ServeError(
                    "nothing to serve: enable the web chat ([web] enabled = true, needs "
                    "finechat[web]) or set DISCORD_BOT_TOKEN / TELEGRAM_BOT_TOKEN"
                )
            async with watch_loop(metrics_for(service).registry):
                return await run_frontends(frontends, stop)
    finally:
        remove()
