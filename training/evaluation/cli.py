"""``finechat eval``: compare GGUF models (or one model under several settings), measured.

This module only defines arguments and turns them into an :class:`EvalPlan`; it imports
nothing heavy at module level, so ``finechat --help`` stays fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from core.commands import Command, ParserKit
from core.config import Config
from training.evaluation.errors import EvalConfigError

QUICK_PROMPTS = 4
QUICK_ROUNDS = 2
QUICK_MAX_TOKENS = 48
QUICK_N_CTX = 1024
QUICK_TEMPERATURES = (0.0, 0.8)
DEFAULT_ROUNDS = 3
DEFAULT_MAX_TOKENS = 256
DEFAULT_SEED = 1234


def register(sub: Any, kit: ParserKit) -> list[Command]:
    """The ``finechat.commands`` entry point."""
    add_parser(sub)
    return [Command("eval", run=cmd_eval)]


def add_parser(sub: Any) -> None:
    """Register ``eval`` on the main parser's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "eval",
        help="compare models: latency, perplexity, judge preference, arena votes",
        description="Measure two or more GGUF models (or one model at several temperatures) on "
        "the same prompts and write report.md, PNG plots and results.json.",
    )
    p.add_argument("--config", help="TOML configuration file (also FINECHAT_CONFIG)")
    p.add_argument("--log-level", default=None, help="debug, info, warning (default), error")
    p.add_argument(
        "--db", help="database with arena votes (default: the configured memory database)"
    )
    p.add_argument(
        "--model",
        dest="eval_models",
        action="append",
        metavar="MODEL",
        help="GGUF path or owner/repo:file.gguf; repeat for each model ('bundled' = SmolLM2)",
    )
    p.add_argument(
        "--temperature",
        dest="eval_temperatures",
        action="append",
        type=float,
        metavar="T",
        help="sampling temperature; repeat to compare settings (default: the configured one)",
    )
    p.add_argument("--top-p", dest="eval_top_p", metavar="P", type=float)
    p.add_argument(
        "--max-tokens", dest="eval_max_tokens", metavar="N", type=int, help="answer length cap"
    )
    p.add_argument(
        "--seed", dest="eval_seed", metavar="SEED", type=int, help=f"default {DEFAULT_SEED}"
    )
    p.add_argument(
        "--n-ctx", dest="eval_n_ctx", metavar="N", type=int, help="context size in tokens"
    )
    p.add_argument(
        "--threads",
        dest="eval_threads",
        metavar="N",
        type=int,
        help="CPU threads for llama.cpp (0 = all, max 8)",
    )
    p.add_argument("--prompts", help="jsonl of conversations (default: the shipped held-out set)")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--rounds", type=int, help=f"latency repetitions (default {DEFAULT_ROUNDS})")
    p.add_argument(
        "--base",
        dest="eval_base",
        metavar="PATH",
        help="the un-tuned model, added as a control row (GGUF path, owner/repo:file.gguf or "
        "'bundled')",
    )
    p.add_argument(
        "--judge",
        help="judge GGUF for the pairwise preference (no default: a model under test would "
        "judge itself)",
    )
    p.add_argument("--no-judge", action="store_true", help="skip the pairwise judge")
    p.add_argument("--out", help="report folder (default eval-report)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: bundled model at T={QUICK_TEMPERATURES[0]:g} and "
        f"T={QUICK_TEMPERATURES[1]:g}, {QUICK_PROMPTS} prompts, {QUICK_ROUNDS} rounds",
    )


def _positive(name: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if value < 1:
        raise EvalConfigError(f"{name} must be at least 1 (got {value})")
    return value


def build_plan(config: Config, args: argparse.Namespace) -> Any:
    from core.engine import SamplingParams
    from training.evaluation.prompts import load_prompts
    from training.evaluation.runner import EvalPlan, Variant, default_threads, resolve_model_file

    quick = bool(args.quick)
    model_args = args.eval_models or ([""] if quick else [])
    if not model_args:
        configured = config.model.path or (
            f"{config.model.repo}:{config.model.file}" if config.model.repo else ""
        )
        model_args = [configured]
    temps = args.eval_temperatures or (
        list(QUICK_TEMPERATURES) if quick else [config.generation.temperature]
    )
    for t in temps:
        if not 0 <= t <= 5:
            raise EvalConfigError(f"--temperature must be between 0 and 5 (got {t:g})")
    if len(model_args) * len(temps) < 1:
        raise EvalConfigError("nothing to compare")
    files = [resolve_model_file("" if m == "bundled" else m) for m in model_args]
    base_file = None
    if getattr(args, "eval_base", None):
        base_file = resolve_model_file("" if args.eval_base == "bundled" else args.eval_base)
    seed = args.eval_seed if args.eval_seed is not None else DEFAULT_SEED
    max_tokens = _positive(
        "--max-tokens", args.eval_max_tokens, QUICK_MAX_TOKENS if quick else DEFAULT_MAX_TOKENS
    )
    top_p = args.eval_top_p if args.eval_top_p is not None else config.generation.top_p
    if not 0 < top_p <= 1:
        raise EvalConfigError(f"--top-p must be in (0, 1] (got {top_p:g})")
    variants = []
    used: set[str] = set()
    entries = [(f, "model") for f in files]
    if base_file is not None:
        entries.append((base_file, "control"))
    for f, role in entries:
        for t in temps:
            stem = f.label.removesuffix(".gguf")
            if role == "control":
                stem = f"{stem} (base)"
            name = stem if len(temps) == 1 else f"{stem} T={t:g}"
            base, k = name, 2
            while name in used:
                name, k = f"{base} #{k}", k + 1
            used.add(name)
            sampling = SamplingParams(
                temperature=t,
                top_p=top_p,
                top_k=config.generation.top_k,
                repeat_penalty=config.generation.repeat_penalty,
                max_tokens=max_tokens,
                seed=seed,
            )
            variants.append(Variant(name, f, sampling, role))
    limit = _positive("--limit", args.limit, QUICK_PROMPTS) if (quick or args.limit) else None
    prompts = load_prompts(args.prompts, limit=limit)
    judge = None
    judge_note = ""
    if len(variants) < 2:
        judge_note = "only one variant"
    elif args.no_judge:
        judge_note = "the judge was switched off (--no-judge)"
    elif not args.judge:
        judge_note = (
            "no --judge given: finechat never picks a model under test as its own judge "
            "(it would favour itself); pass --judge MODEL.gguf, a model not being compared"
        )
    else:
        judge = resolve_model_file("" if args.judge == "bundled" else args.judge)
        if any(v.model.sha256 == judge.sha256 for v in variants):
            judge_note = (
                f"the judge ({judge.label}) is also one of the models compared: its verdicts "
                "may favour its own answers"
            )
    n_ctx = (
        args.eval_n_ctx
        if args.eval_n_ctx is not None
        else (QUICK_N_CTX if quick else config.model.n_ctx)
    )
    if n_ctx < 256:
        raise EvalConfigError(f"--n-ctx must be at least 256 (got {n_ctx})")
    if max_tokens >= n_ctx:
        raise EvalConfigError(f"--max-tokens ({max_tokens}) must be smaller than --n-ctx ({n_ctx})")
    threads = args.eval_threads if args.eval_threads is not None else config.model.n_threads
    if threads < 0:
        raise EvalConfigError(f"--threads must be 0 or more (got {threads})")
    threads = threads or default_threads()
    return EvalPlan(
        variants=tuple(variants),
        prompts=prompts,
        system_prompt=config.chat.system_prompt,
        n_ctx=n_ctx,
        n_threads=threads,
        n_batch=config.model.n_batch,
        rounds=_positive("--rounds", args.rounds, QUICK_ROUNDS if quick else DEFAULT_ROUNDS),
        judge=judge,
        judge_note=judge_note,
        votes_db=args.db or config.database.path,
        seed=seed,
        quick=quick,
        command=_canonical_command(variants, prompts.path, args, n_ctx, threads, seed, max_tokens),
    )


def _canonical_command(
    variants: list[Any],
    prompts: str,
    args: argparse.Namespace,
    n_ctx: int,
    threads: int,
    seed: int,
    max_tokens: int,
) -> str:
    """The command that reruns exactly this evaluation (every default spelled out)."""
    parts = ["finechat", "eval"]
    for path in dict.fromkeys(str(v.model.path) for v in variants if v.role == "model"):
        parts += ["--model", path]
    for path in dict.fromkeys(str(v.model.path) for v in variants if v.role == "control"):
        parts += ["--base", path]
    for t in dict.fromkeys(v.sampling.temperature for v in variants):
        parts += ["--temperature", f"{t:g}"]
    first = variants[0].sampling
    parts += ["--top-p", f"{first.top_p:g}", "--max-tokens", str(max_tokens), "--seed", str(seed)]
    parts += ["--n-ctx", str(n_ctx), "--threads", str(threads), "--prompts", prompts]
    if args.limit or args.quick:
        parts += ["--limit", str(args.limit or QUICK_PROMPTS)]
    if args.rounds:
        parts += ["--rounds", str(args.rounds)]
    elif args.quick:
        parts += ["--rounds", str(QUICK_ROUNDS)]
    if args.judge:
        parts += ["--judge", args.judge]
    if args.no_judge:
        parts.append("--no-judge")
    return shlex.join(parts)


async def cmd_eval(config: Config, args: argparse.Namespace) -> int:
    """Run the evaluation (blocking work goes to a thread: nothing else shares this loop)."""
    import asyncio

    return await asyncio.to_thread(run_eval_command, config, args)


def run_eval_command(config: Config, args: argparse.Namespace) -> int:
    from tqdm import tqdm  # type: ignore[import-untyped]

    from training.evaluation.report import console_summary, write_report
    from training.evaluation.runner import run_eval

    plan = build_plan(config, args)
    out = Path(args.out or "eval-report")
    bar = tqdm(
        total=plan.total_steps, unit="prompt", file=sys.stderr, disable=bool(args.no_progress)
    )

    current = [""]

    def progress(phase: str, n: int) -> None:
        if current[0] != phase:
            current[0] = phase
            bar.set_description(phase)
        bar.update(n)

    try:
        result = run_eval(plan, progress)
    finally:
        bar.close()
    write_report(result, out)
    print(console_summary(result, out))
    return 0
