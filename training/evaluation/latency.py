"""Latency trials: one child process per (variant, round), driven from here.

The parent never loads a model while a trial runs; it only reads the child's JSON lines, so at
most one llama.cpp context computes at any time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.engine import SamplingParams
from core.template import Message
from training.evaluation.errors import EvalError
from training.evaluation.prompts import messages_json

_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PromptRun:
    """One answered prompt, as timed by the serving engine."""

    index: int
    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    ttft_s: float | None
    total_s: float

    @property
    def prefill_tps(self) -> float | None:
        """Prompt tokens actually computed (not reused from cache) per second of TTFT."""
        fresh = self.prompt_tokens - self.cached_tokens
        if self.ttft_s is None or self.ttft_s <= 0 or fresh <= 0:
            return None
        return fresh / self.ttft_s

    @property
    def decode_tps(self) -> float | None:
        """Tokens after the first per second of generation after the first token."""
        if self.ttft_s is None or self.completion_tokens < 2:
            return None
        span = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / span if span > 0 else None


@dataclass
class Trial:
    variant: str
    round: int
    load_s: float = 0.0
    rss_before_load_kib: int = 0
    peak_rss_kib: int = 0
    runs: list[PromptRun] = field(default_factory=list)


def _sampling_json(s: SamplingParams) -> dict[str, Any]:
    return {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "repeat_penalty": s.repeat_penalty,
        "max_tokens": s.max_tokens,
        "seed": s.seed,
    }


def run_trial(
    variant: str,
    round_no: int,
    model_path: Path,
    sampling: SamplingParams,
    prompts: Sequence[Sequence[Message]],
    *,
    n_ctx: int,
    n_threads: int,
    n_batch: int,
    on_prompt: Callable[[], None] = lambda: None,
    timeout_s: float = 3600.0,
) -> Trial:
    """Run one trial in a child process and collect its measurements."""
    job = {
        "model_path": str(model_path),
        "n_ctx": n_ctx,
        "n_threads": n_threads,
        "n_batch": n_batch,
        "sampling": _sampling_json(sampling),
        "prompts": [messages_json(p) for p in prompts],
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    trial = Trial(variant, round_no)
    error: str | None = None
    done = False
    with tempfile.TemporaryFile("w+") as errfile:
        proc = subprocess.Popen(
            [sys.executable, "-m", "training.evaluation.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errfile,
            text=True,
            env=env,
        )
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue  # stray output from a native library
                if msg.get("event") == "prompt":
                    trial.runs.append(PromptRun(**{k: v for k, v in msg.items() if k != "event"}))
                    on_prompt()
                elif msg.get("event") == "done":
                    trial.load_s = float(msg["load_s"])
                    trial.rss_before_load_kib = int(msg["rss_before_load_kib"])
                    trial.peak_rss_kib = int(msg["peak_rss_kib"])
                    done = True
                elif msg.get("event") == "error":
                    error = str(msg.get("message"))
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not done or rc != 0:
            errfile.seek(0)
            tail = errfile.read()[-400:].strip()
            detail = error or (tail.splitlines()[-1] if tail else f"exit code {rc}")
            raise EvalError(f"latency trial of {variant} failed: {detail}")
    return trial
