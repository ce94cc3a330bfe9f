"""One latency trial in a child process: load a GGUF through the serving engine, answer prompts.

Running each trial in its own process is what makes *peak RSS per model* a clean number (the
process's own high-water mark, ``ru_maxrss``), and it also makes load time honest: nothing is
left in the page cache of a previous llama.cpp context in the same process, and no two
contexts ever live together. The parent sends one JSON job on stdin; the child prints JSON
lines on stdout: one ``{"event": "prompt", ...}`` per answered prompt (the parent's progress
bar advances on them) and a final ``{"event": "done", ...}``.

Run as ``python -m training.evaluation.worker``; it is an implementation detail of
``finechat eval``, not a command for people.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from core.engine import GenerationRequest, SamplingParams
from core.template import Message

WARMUP = [Message("user", "Hello!")]


def _rss_kib() -> int:
    """Current resident set size in KiB (Linux ``/proc``; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _peak_rss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 1024) if sys.platform == "darwin" else int(peak)  # macOS reports bytes


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _load(path: Path, n_ctx: int, n_threads: int, n_batch: int) -> Any:
    from core.llama_engine import LlamaEngine

    kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_threads": n_threads, "n_batch": n_batch}
    # The batched engine serves several conversations at once; a benchmark wants one slot so
    # that RSS is the cost of one conversation, comparable between models.
    if "n_slots" in inspect.signature(LlamaEngine.load).parameters:
        kwargs["n_slots"] = 1
    return LlamaEngine.load(path, **kwargs)


async def _generate(engine: Any, key: str, messages: list[Message], s: SamplingParams) -> Any:
    prompt = await engine.encode_messages(messages)
    stream = engine.generate(GenerationRequest(key, prompt, s))
    async for _ in stream:
        pass
    return stream.result


async def run_job(job: dict[str, Any]) -> None:
    rss_before = _rss_kib()
    start = time.perf_counter()
    engine = await asyncio.to_thread(
        _load, Path(job["model_path"]), job["n_ctx"], job["n_threads"], job["n_batch"]
    )
    load_s = time.perf_counter() - start
    try:
        sampling = SamplingParams(**job["sampling"])
        # One discarded warm-up: the first decode touches every mmap'd weight page once.
        await _generate(engine, "eval-warmup", WARMUP, SamplingParams(max_tokens=2, seed=0))
        for i, raw in enumerate(job["prompts"]):
            messages = [Message(m["role"], m["content"]) for m in raw]
            result = await _generate(engine, f"eval-{i}", messages, sampling)
            if result is None or result.finish_reason == "error":
                raise RuntimeError(f"generation failed on prompt {i + 1}")
            _emit(
                {
                    "event": "prompt",
                    "index": i,
                    "text": result.text,
                    "finish_reason": result.finish_reason,
                    "prompt_tokens": result.prompt_tokens,
                    "cached_tokens": result.cached_tokens,
                    "completion_tokens": result.completion_tokens,
                    "ttft_s": result.ttft_seconds,
                    "total_s": result.total_seconds,
                }
            )
    finally:
        await engine.aclose()
    _emit(
        {
            "event": "done",
            "load_s": load_s,
            "rss_before_load_kib": rss_before,
            "peak_rss_kib": _peak_rss_kib(),
        }
    )


def main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        asyncio.run(run_job(job))
    except Exception as exc:
        _emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
