"""``finechat bench``: finechat's engine against raw llama-cpp-python, measured in one run.

Phases, on the same model file and thread count, one after another (never two engines at
once: on a small CPU they would wreck each other's numbers):

a. raw ``llama_cpp.Llama``, one stream, in process — the baseline;
b. finechat, one user, through the OpenAI-compatible API over HTTP;
c. finechat, N concurrent users (default 8 and 32) with multi-turn, growing histories;
d. a returning user with a long history served after 8 other users, against a fresh
   conversation's time to first token.

With ``--llama-server PATH`` the same HTTP load (b–d) also runs against llama.cpp's own server
with as many slots, as the anchor. Every ratio is computed from numbers taken in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from core.config import Config
from core.model_source import ModelSpec, resolve_model
from core.template import Message

SYSTEM = "You are a helpful assistant."
QUESTIONS = [
    "Explain how a bicycle stays upright.",
    "Give me three tips for learning a new language.",
    "Why is the sky blue? Answer in detail.",
    "Describe a day in the life of a lighthouse keeper.",
    "What makes a good cup of tea?",
    "How do plants turn sunlight into food?",
    "Tell me about the history of chess.",
    "What should I pack for a week of hiking?",
]


@dataclass
class RequestSample:
    ttft: float
    itl: list[float]
    tokens: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    queue_s: float = 0.0
    wall: float = 0.0
    complete: bool = True


@dataclass
class PhaseResult:
    name: str
    wall_s: float
    samples: list[RequestSample] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.samples)

    @property
    def aggregate_tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        itl = sorted(x for s in self.samples for x in s.itl)
        ttft = sorted(s.ttft for s in self.samples)
        prompt = sum(s.prompt_tokens for s in self.samples)
        cached = sum(s.cached_tokens for s in self.samples)
        per_stream = [(s.tokens - 1) / sum(s.itl) for s in self.samples if s.itl and sum(s.itl) > 0]
        return {
            "requests": len(self.samples),
            "complete": sum(s.complete for s in self.samples),
            "tokens": self.tokens,
            "wall_s": round(self.wall_s, 3),
            "aggregate_tok_s": round(self.aggregate_tps, 1),
            "per_stream_tok_s_median": round(statistics.median(per_stream), 1) if per_stream else 0,
            "ttft_s_p50": round(_pct(ttft, 50), 4),
            "ttft_s_p95": round(_pct(ttft, 95), 4),
            "itl_ms_p50": round(_pct(itl, 50) * 1000, 2),
            "itl_ms_p95": round(_pct(itl, 95) * 1000, 2),
            "queue_s_mean": round(statistics.fmean(s.queue_s for s in self.samples), 4)
            if self.samples
            else 0,
            "cache_hit_ratio": round(cached / prompt, 3) if prompt else 0.0,
        }


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- (a) raw llama-cpp-python ------------------------------------------------------------------


def raw_llama_single(
    model_path: str, threads: int, n_ctx: int, prompt: list[int], n: int
) -> RequestSample:
    """The baseline: ``Llama.generate`` in this process, greedy, ``n`` tokens, EOS ignored."""
    from llama_cpp import Llama

    llama = Llama(
        model_path=model_path,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    try:
        start = time.perf_counter()
        stamps: list[float] = []
        for _token in llama.generate(prompt, temp=0.0, repeat_penalty=1.0, top_k=1):
            stamps.append(time.perf_counter())
            if len(stamps) >= n:
                break
        itl = [b - a for a, b in itertools.pairwise(stamps)]
        return RequestSample(
            ttft=stamps[0] - start, itl=itl, tokens=len(stamps), wall=stamps[-1] - start
        )
    finally:
        llama.close()


# -- the HTTP load generator (talks to any OpenAI-compatible server) ------------------------------


class Client:
    def __init__(self, base_url: str, model: str) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(600.0), limits=httpx.Limits(max_connections=256)
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def chat(
        self, messages: list[dict[str, str]], max_tokens: int
    ) -> tuple[str, RequestSample]:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "repeat_penalty": 1.0,  # as the raw baseline: no penalty sampler
        }
        start = time.perf_counter()
        stamps: list[float] = []
        parts: list[str] = []
        usage: dict[str, Any] = {}
        complete = False
        async with self.http.stream("POST", f"{self.base_url}/chat/completions", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    complete = True
                    break
                obj = json.loads(data)
                if obj.get("usage"):
                    usage = obj["usage"]
                for choice in obj.get("choices", []):
                    text = choice.get("delta", {}).get("content")
                    if text:
                        stamps.append(time.perf_counter())
                        parts.append(text)
        end = time.perf_counter()
        itl = [b - a for a, b in itertools.pairwise(stamps)]
        timings = usage.get("timings", {})
        sample = RequestSample(
            ttft=(stamps[0] - start) if stamps else end - start,
            itl=itl,
            tokens=int(usage.get("completion_tokens") or len(stamps)),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            queue_s=float(timings.get("queue_s") or 0.0),
            wall=end - start,
            complete=complete,
        )
        return "".join(parts), sample


async def single_user(client: Client, n: int) -> PhaseResult:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    await client.chat(messages, 8)  # warm-up (and the system prompt enters the cache)
    start = time.perf_counter()
    _, sample = await client.chat(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[2]}], n
    )
    return PhaseResult("single", time.perf_counter() - start, [sample])


async def concurrent_users(client: Client, users: int, turns: int, n: int) -> PhaseResult:
    phase = PhaseResult(f"users_{users}", 0.0)

    async def user(i: int) -> None:
        history = [{"role": "system", "content": SYSTEM}]
        for t in range(turns):
            q = QUESTIONS[(i + t) % len(QUESTIONS)]
            history.append({"role": "user", "content": f"(user {i}) {q}"})
            text, sample = await client.chat(history, n)
            phase.samples.append(sample)
            history.append({"role": "assistant", "content": text})

    start = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(users)))
    phase.wall_s = time.perf_counter() - start
    return phase


def long_history(target_tokens: int, count: Callable[[str], int]) -> list[dict[str, str]]:
    history = [{"role": "system", "content": SYSTEM}]
    i = 0
    filler = (
        "Here is a long story about a traveller who walks through forests, rivers, towns and "
        "mountains, meeting people and learning something from each of them. "
    )
    while count(json.dumps(history)) < target_tokens:
        history.append({"role": "user", "content": f"Part {i}: {QUESTIONS[i % len(QUESTIONS)]}"})
        history.append({"role": "assistant", "content": filler * 3})
        i += 1
    return history


async def returning_user(client: Client, history: list[dict[str, str]], n: int) -> dict[str, Any]:
    fresh_msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[4]}]
    _, fresh = await client.chat(fresh_msgs, 8)
    first = [*history, {"role": "user", "content": "Please summarise the story so far."}]
    text, cold = await client.chat(first, n)
    others = await concurrent_users(client, 8, 1, n)
    back = [
        *first,
        {"role": "assistant", "content": text},
        {"role": "user", "content": "Thanks! And then?"},
    ]
    _, warm = await client.chat(back, n)
    return {
        "history_tokens": cold.prompt_tokens,
        "fresh_ttft_s": round(fresh.ttft, 4),
        "cold_ttft_s": round(cold.ttft, 4),
        "returning_ttft_s": round(warm.ttft, 4),
        "returning_cached_tokens": warm.cached_tokens,
        "others_served": len(others.samples),
        "returning_vs_fresh": round(warm.ttft / fresh.ttft, 2) if fresh.ttft else None,
    }


async def http_load(
    base_url: str,
    model: str,
    users: list[int],
    args: argparse.Namespace,
    count: Callable[[str], int],
) -> dict[str, Any]:
    client = Client(base_url, model)
    try:
        out: dict[str, Any] = {}
        single = await single_user(client, args.tokens)
        out["single"] = single.summary()
        for u in users:
            out[f"users_{u}"] = (
                await concurrent_users(client, u, args.turns, args.tokens)
            ).summary()
        out["returning"] = await returning_user(
            client, long_history(args.history_tokens, count), args.tokens
        )
        return out
    finally:
        await client.aclose()


async def _until(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    """Poll a condition another component sets without an awaitable (uvicorn's ``started``)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not start")
        await asyncio.sleep(0.01)


# -- the loop-lag probe ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def loop_lag_probe() -> AsyncIterator[list[float]]:
    lags: list[float] = []

    async def tick() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    task = asyncio.create_task(tick())
    try:
        yield lags
    finally:
        task.cancel()


# -- orchestration ------------------------------------------------------------------------------


async def _finechat_load(
    config: Config, model_path: str, threads: int, users: list[int], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``finechat api`` as its own process (as deployed, and as llama-server runs)."""
    import httpx

    slots = max([*users, 9])
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "core.cli",
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        model_path,
        "--threads",
        str(threads),
        "--slots",
        str(slots),
        "--n-ctx",
        str(config.model.n_ctx),
    ]
    env = {k: v for k, v in os.environ.items() if k != "FINECHAT_API_KEY"}
    env["FINECHAT_MODEL__MAX_QUEUE"] = "1024"
    env["FINECHAT_LIMITS__REPLIES_PER_MINUTE"] = "0"  # one address, many simulated users
    proc = await asyncio.to_thread(
        subprocess.Popen, cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(base, proc)
        result = await http_load(f"{base}/v1", "finechat", users, args, _remote_counter(base))
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{base}/healthz")).json()
        return result, {"slots": slots, **{k: v for k, v in health.items() if k != "ok"}}
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 20)
        if proc.poll() is None:
            proc.kill()


async def _wait_healthy(base: str, proc: subprocess.Popen[bytes], path: str = "/healthz") -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        for _ in range(1200):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(base + path)).status_code == 200:
                    return
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode}")
            await asyncio.sleep(0.1)
    raise TimeoutError("the server did not become healthy in 120 s")


def _remote_counter(base: str) -> Callable[[str], int]:
    """Rough token counts for building the long history (4 characters a token)."""
    return lambda text: len(text) // 4


async def loop_lag_during_decode(model_path: str, threads: int, streams: int) -> dict[str, Any]:
    """(e) In-process: event-loop lag while the engine decodes ``streams`` conversations."""
    from core.engine import GenerationRequest, SamplingParams
    from core.llama_engine import LlamaEngine

    engine = await asyncio.to_thread(
        LlamaEngine.load,
        resolve_model(ModelSpec(path=model_path)),
        n_ctx=1024,
        n_threads=threads,
        n_slots=streams,
    )
    try:
        params = SamplingParams(temperature=0.0, max_tokens=96, repeat_penalty=1.0)

        async def one(i: int) -> int:
            prompt = await engine.encode_messages(
                [Message("system", SYSTEM), Message("user", QUESTIONS[i % len(QUESTIONS)])]
            )
            stream = engine.generate(GenerationRequest(f"lag:{i}", prompt, params, ignore_eos=True))
            return len([p async for p in stream])

        await one(streams)  # warm-up: first-decode allocations stay out of the numbers
        start = time.perf_counter()
        alone = await one(streams + 1)
        single_tps = alone / (time.perf_counter() - start)
        async with loop_lag_probe() as lags:
            start = time.perf_counter()
            pieces = await asyncio.gather(*(one(i) for i in range(streams)))
            wall = time.perf_counter() - start
        lags.sort()
        return {
            "streams": streams,
            "tokens": sum(pieces),
            "single_tok_s_in_process": round(single_tps, 1),
            "aggregate_tok_s_in_process": round(sum(pieces) / wall, 1),
            "aggregate_vs_single_in_process": round(sum(pieces) / wall / single_tps, 3),
            "loop_lag_ms_p50": round(_pct(lags, 50) * 1000, 3),
            "loop_lag_ms_p99": round(_pct(lags, 99) * 1000, 3),
            "loop_lag_samples": len(lags),
        }
    finally:
        await engine.aclose()


async def _llama_server_load(
    binary: str,
    model_path: str,
    threads: int,
    n_ctx: int,
    users: list[int],
    args: argparse.Namespace,
    count: Callable[[str], int],
) -> dict[str, Any]:

    slots = max([*users, 9])
    port = _free_port()
    cmd = [
        binary,
        "-m",
        model_path,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(slots),
        "-c",
        str(n_ctx * slots),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "--no-webui",
    ]
    proc = await asyncio.to_thread(
        subprocess.Popen, cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await _wait_healthy(f"http://127.0.0.1:{port}", proc, "/health")
        return await http_load(f"http://127.0.0.1:{port}/v1", "model", users, args, count)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


def _ratios(report: dict[str, Any], users: list[int]) -> dict[str, Any]:
    # Decode speed of one stream (first to last token) for the like-for-like engine comparison;
    # for "N users vs single", the single user's throughput counted the same way as the N
    # users' aggregate: completion tokens / wall time, time to first token included.
    raw = report["raw_llama"]["per_stream_tok_s_median"]
    fin = report["finechat"]
    stream = fin["single"]["per_stream_tok_s_median"]
    single = fin["single"]["aggregate_tok_s"]
    ratios: dict[str, Any] = {
        "single_vs_raw": round(stream / raw, 3) if raw else None,
        "returning_ttft_vs_fresh": fin["returning"]["returning_vs_fresh"],
    }
    for u in users:
        ratios[f"users_{u}_aggregate_vs_single"] = (
            round(fin[f"users_{u}"]["aggregate_tok_s"] / single, 3) if single else None
        )
        ratios[f"users_{u}_all_complete"] = (
            fin[f"users_{u}"]["complete"] == fin[f"users_{u}"]["requests"]
        )
    ratios["loop_lag_ms_p99"] = report["loop_lag"]["loop_lag_ms_p99"]
    ls = report.get("llama_server")
    if ls:
        for u in users:
            theirs = ls[f"users_{u}"]["aggregate_tok_s"]
            ratios[f"users_{u}_vs_llama_server"] = (
                round(fin[f"users_{u}"]["aggregate_tok_s"] / theirs, 3) if theirs else None
            )
    return ratios


GOALS = {
    "single_vs_raw": (">=", 0.95),
    "users_8_aggregate_vs_single": (">=", 1.6),
    "users_32_aggregate_vs_single": (">=", 2.0),
    "returning_ttft_vs_fresh": ("<=", 1.5),
    "users_8_vs_llama_server": (">=", 1.15),
    "loop_lag_ms_p99": ("<=", 5.0),
}


async def run_bench(config: Config, args: argparse.Namespace) -> int:
    from core.llama_engine import default_threads

    users = [int(u) for u in str(args.users).split(",") if u.strip()]
    threads = args.threads or config.model.n_threads or default_threads()
    model_path = str(await asyncio.to_thread(resolve_model, ModelSpec.from_config(config.model)))
    n_ctx = config.model.n_ctx

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "model": os.path.basename(model_path),
        "threads": threads,
        "n_ctx_per_slot": n_ctx,
        "answer_tokens": args.tokens,
        "users": users,
    }
    started = time.perf_counter()

    # The baseline prompt is rendered by the same template code as finechat's.
    from core.llama_engine import LlamaEngine

    log("(a) raw llama-cpp-python, one stream ...")
    probe = await asyncio.to_thread(
        LlamaEngine.load,
        resolve_model(ModelSpec(path=model_path)),
        n_ctx=512,
        n_threads=threads,
        n_slots=1,
    )
    prompt = probe.encode_messages_sync([Message("system", SYSTEM), Message("user", QUESTIONS[2])])
    count_probe = probe.tokenize_sync
    await probe.aclose()
    raw = await asyncio.to_thread(raw_llama_single, model_path, threads, n_ctx, prompt, args.tokens)
    report["raw_llama"] = PhaseResult("raw", raw.wall, [raw]).summary()
    report["rss_mb_after_raw"] = round(_peak_rss_mb(), 1)

    log("(b-d) finechat through its OpenAI-compatible API ...")
    fin, extra = await _finechat_load(config, model_path, threads, users, args)
    report["finechat"] = fin
    report["finechat_engine"] = extra
    log("(e) event-loop lag while decoding in process ...")
    report["loop_lag"] = await loop_lag_during_decode(model_path, threads, 8)
    report["peak_rss_mb_bench_process"] = round(_peak_rss_mb(), 1)
    if args.llama_server:
        log("anchor: llama.cpp llama-server ...")
        report["llama_server"] = await _llama_server_load(
            args.llama_server,
            model_path,
            threads,
            n_ctx,
            users,
            args,
            lambda s: len(count_probe(s)),
        )
    report["ratios"] = ratios = _ratios(report, users)
    report["goals"] = {
        k: {"goal": f"{op} {v}", "value": ratios.get(k), "met": _met(ratios.get(k), op, v)}
        for k, (op, v) in GOALS.items()
        if k in ratios
    }
    report["bench_seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


def _met(value: Any, op: str, goal: float) -> bool | None:
    if value is None:
        return None
    return bool(value >= goal) if op == ">=" else bool(value <= goal)


def _print_table(report: dict[str, Any]) -> None:
    fin = report["finechat"]
    print(
        f"model {report['model']}, {report['threads']} threads, {report['answer_tokens']}-token greedy answers"
    )
    print(
        f"{'phase':<14}{'agg tok/s':>10}{'stream tok/s':>14}{'TTFT p50':>10}{'ITL p50':>9}{'ITL p95':>9}{'cache hit':>10}"
    )
    rows = [("raw llama", report["raw_llama"])] + [
        (k, v) for k, v in fin.items() if k != "returning"
    ]
    for name, s in rows:
        print(
            f"{name:<14}{s['aggregate_tok_s']:>10}{s['per_stream_tok_s_median']:>14}"
            f"{s['ttft_s_p50']:>10}{s['itl_ms_p50']:>9}{s['itl_ms_p95']:>9}{s['cache_hit_ratio']:>10}"
        )
    print("returning user:", json.dumps(fin["returning"]))
    lag = report["loop_lag"]
    print(
        f"in process (single-turn, no HTTP): 1 stream {lag['single_tok_s_in_process']} tok/s, "
        f"{lag['streams']} streams {lag['aggregate_tok_s_in_process']} tok/s "
        f"({lag['aggregate_vs_single_in_process']}x); "
        f"event-loop lag p50 {lag['loop_lag_ms_p50']} ms, p99 {lag['loop_lag_ms_p99']} ms"
    )
    print("finechat server engine counters:", json.dumps(report["finechat_engine"].get("engine")))
    print(
        f"peak RSS: finechat server {report['finechat_engine'].get('peak_rss_mb')} MB, "
        f"raw llama-cpp-python {report['rss_mb_after_raw']} MB"
    )
    for k, g in report["goals"].items():
        print(f"  {k}: {g['value']} (goal {g['goal']}) {'OK' if g['met'] else 'MISSED'}")
    print(f"bench took {report['bench_seconds']} s")
