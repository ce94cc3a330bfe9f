"""Write an evaluation as ``report.md`` + PNG plots + ``results.json``, and a console summary.

The JSON is the record (every sample, every verdict, hashes and versions); the Markdown is
what a person reads, and is regenerated from the same numbers, so the two cannot disagree.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from training.evaluation.judge import PairResult
from training.evaluation.prompts import messages_json
from training.evaluation.runner import EvalResult
from training.evaluation.stats import Summary

LATENCY_PNG = "latency_vs_quality.png"
WINS_PNG = "per_prompt_wins.png"
PACKAGES = ("finechat", "llama_cpp_python", "numpy", "matplotlib")


# -- environment -------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": {p: _version(p) for p in PACKAGES},
        "git_commit": _git_commit(),
    }


# -- JSON --------------------------------------------------------------------------------------


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def to_json(res: EvalResult, env: dict[str, Any]) -> dict[str, Any]:
    plan = res.plan
    return {
        "finechat_eval": 1,
        "command": plan.command,
        "started_at": datetime.fromtimestamp(res.started_at, UTC).isoformat(),
        "finished_at": datetime.fromtimestamp(res.finished_at, UTC).isoformat(),
        "phase_seconds": res.phase_seconds,
        "environment": env,
        "settings": {
            "seed": plan.seed,
            "rounds": plan.rounds,
            "n_ctx": plan.n_ctx,
            "n_threads": plan.n_threads,
            "n_batch": plan.n_batch,
            "system_prompt": plan.system_prompt,
            "quick": plan.quick,
        },
        "prompts": {
            "path": plan.prompts.path,
            "sha256": plan.prompts.sha256,
            "items": [
                {"id": p.id, "context": messages_json(p.context), "reference": p.reference}
                for p in plan.prompts.prompts
            ],
        },
        "models": _models_json(plan),
        "judge": None
        if plan.judge is None
        else {
            "label": plan.judge.label,
            "path": str(plan.judge.path),
            "sha256": plan.judge.sha256,
            "is_contestant": any(v.model.sha256 == plan.judge.sha256 for v in plan.variants),
        },
        "judge_note": plan.judge_note,
        "variants": [
            {
                "name": vr.variant.name,
                "role": vr.variant.role,
                "model": {
                    "label": vr.variant.model.label,
                    "path": str(vr.variant.model.path),
                    "size_bytes": vr.variant.model.size_bytes,
                    "sha256": vr.variant.model.sha256,
                },
                "sampling": asdict(vr.variant.sampling),
                "deterministic_across_rounds": vr.deterministic,
                "latency": {k: s.to_json() for k, s in vr.latency().items()},
                "perplexity": _finite(res.perplexity_of(vr.variant).perplexity),
                "answers": vr.answers,
                "trials": [
                    {
                        "round": t.round,
                        "load_s": t.load_s,
                        "rss_before_load_kib": t.rss_before_load_kib,
                        "peak_rss_kib": t.peak_rss_kib,
                        "prompts": [
                            {
                                "index": r.index,
                                "finish_reason": r.finish_reason,
                                "prompt_tokens": r.prompt_tokens,
                                "cached_tokens": r.cached_tokens,
                                "completion_tokens": r.completion_tokens,
                                "ttft_s": r.ttft_s,
                                "total_s": r.total_s,
                                "prefill_tps": r.prefill_tps,
                                "decode_tps": r.decode_tps,
                            }
                            for r in t.runs
                        ],
                    }
                    for t in vr.trials
                ],
            }
            for vr in res.variants
        ],
        "perplexity": [
            {
                "model": pr.model.label,
                "path": str(pr.model.path),
                "sha256": pr.model.sha256,
                "role": _role_of(plan, pr.model.sha256),
                "perplexity": _finite(pr.perplexity),
                "bits_per_byte": _finite(pr.bits_per_byte),
                "tokens": pr.tokens,
                "skipped_prompts": pr.skipped,
                "seconds": pr.seconds,
                "per_prompt": {
                    k: {
                        "nll": s.nll,
                        "tokens": s.tokens,
                        "bytes": s.bytes,
                        "truncated": s.truncated,
                    }
                    for k, s in pr.scores.items()
                },
                "sanity": [asdict(s) for s in pr.sanity],
            }
            for pr in res.perplexity.values()
        ],
        "pairwise": [
            {
                "first": pair.first,
                "second": pair.second,
                "judge": pair.judge,
                "wins_first": pair.wins_first,
                "wins_second": pair.wins_second,
                "ties": pair.ties,
                "win_rate_first": _finite(pair.win_rate),
                "ci95": [_finite(x) for x in pair.interval],
                "position_consistency": _finite(pair.consistency),
                "mean_letter_mass": _finite(pair.mean_letter_mass),
                "mean_soft_first": _finite(pair.mean_soft),
                "items": [
                    {
                        "prompt_id": it.prompt_id,
                        "outcome": it.outcome,
                        "soft": it.soft,
                        "forward": asdict(it.forward),
                        "swapped": asdict(it.swapped),
                        "truncated": it.truncated,
                    }
                    for it in pair.items
                ],
            }
            for pair in res.pairs
        ],
        "arena_votes": {
            "source": res.votes.source,
            "status": res.votes.status,
            "total": res.votes.total,
            "models": [
                {
                    "model": m.model,
                    "wins": m.wins,
                    "losses": m.losses,
                    "ties": m.ties,
                    "win_rate": _finite(m.win_rate),
                    "ci95": [_finite(x) for x in m.interval],
                }
                for m in res.votes.models
            ],
        },
    }


def _role_of(plan: Any, sha256: str) -> str:
    roles = {v.role for v in plan.variants if v.model.sha256 == sha256}
    return "model" if "model" in roles else "control"


def _models_json(plan: Any) -> list[dict[str, Any]]:
    """Each GGUF once, in the order of the ``--model`` flags (the ``--base`` control last)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for v in plan.variants:
        key = (str(v.model.path), v.role)
        if key not in seen:
            seen[key] = {
                "label": v.model.label,
                "path": str(v.model.path),
                "sha256": v.model.sha256,
                "size_bytes": v.model.size_bytes,
                "role": v.role,
            }
    return list(seen.values())


# -- plots -------------------------------------------------------------------------------------


def _variant_quality(res: EvalResult) -> dict[str, float]:
    """Each variant's mean judge score over all of its pairs (0.5 = no better than the rest)."""
    scores: dict[str, list[float]] = {}
    for pair in res.pairs:
        scores.setdefault(pair.first, []).append(pair.win_rate)
        scores.setdefault(pair.second, []).append(1 - pair.win_rate)
    return {k: sum(v) / len(v) for k, v in scores.items() if v}


def write_plots(res: EvalResult, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [vr.variant.name for vr in res.variants]
    lat = [vr.latency()["decode_tps"] for vr in res.variants]
    ppl = [res.perplexity_of(vr.variant).perplexity for vr in res.variants]
    judged = _variant_quality(res)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, ys, ylabel in (
        (axes[0], ppl, "held-out perplexity (lower is better)"),
        (axes[1], [judged.get(n, math.nan) for n in names], "judge score (higher is better)"),
    ):
        for k, (name, s, y) in enumerate(zip(names, lat, ys, strict=True)):
            if not (math.isfinite(s.median) and math.isfinite(y)):
                continue
            ax.errorbar(
                s.median,
                y,
                xerr=[[s.median - s.p25], [s.p75 - s.median]],
                fmt="os^Dv<>"[k % 7],
                capsize=4,
                label=name,
            )
        ax.set_xlabel("decode speed, tokens/s (median, IQR)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if not res.pairs:
        axes[1].text(
            0.5, 0.5, "no judge run", ha="center", va="center", transform=axes[1].transAxes
        )
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    fig.suptitle("Latency vs quality")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(out / LATENCY_PNG, dpi=110)
    plt.close(fig)

    prompt_ids = [p.id for p in res.plan.prompts.prompts]
    rows = max(1, len(res.pairs))
    width = max(7.0, 0.5 * len(prompt_ids) + 2)
    fig, axs = plt.subplots(rows, 1, figsize=(width, 0.5 + 2.2 * rows), squeeze=False)
    colours = {"a": "tab:blue", "b": "tab:red", "tie": "tab:gray"}
    for ax, pair in zip(axs[:, 0], res.pairs, strict=False):
        xs = range(len(pair.items))
        ax.bar(
            xs,
            [it.soft - 0.5 for it in pair.items],
            color=[colours[it.outcome] for it in pair.items],
        )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylim(-0.5, 0.5)
        ax.set_ylabel("judge score − 0.5", fontsize=8)
        ax.set_xticks(list(xs), [it.prompt_id for it in pair.items], rotation=60, ha="right")
        ax.tick_params(labelsize=7)
        ax.set_title(
            f"{pair.first} (up, blue = win) vs {pair.second} (down, red = win); grey = tie",
            fontsize=8,
        )
    if not res.pairs:
        ax = axs[0, 0]
        ax.axis("off")
        ax.text(0.5, 0.5, "no pairwise comparison (one variant, or --no-judge)", ha="center")
    fig.suptitle("Per-prompt wins", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / WINS_PNG, dpi=110)
    plt.close(fig)
    return [LATENCY_PNG, WINS_PNG]


# -- Markdown ----------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:,.{digits}f}"


def _cell(s: Summary, scale: float = 1.0, digits: int = 2) -> str:
    if s.n == 0:
        return "–"
    return (
        f"{_fmt(s.median * scale, digits)} ({_fmt(s.p25 * scale, digits)}–"
        f"{_fmt(s.p75 * scale, digits)})"
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def latency_table(res: EvalResult) -> list[str]:
    rows = []
    for vr in res.variants:
        lat = vr.latency()
        rows.append(
            [
                vr.variant.name,
                _fmt(vr.variant.model.size_bytes / 2**20, 1),
                _cell(lat["load_s"], 1000, 0),
                _cell(lat["ttft_s"], 1000, 0),
                _cell(lat["prefill_tps"], 1, 1),
                _cell(lat["decode_tps"], 1, 1),
                _cell(lat["peak_rss_mib"], 1, 0),
                _cell(lat["rss_before_load_mib"], 1, 0),
            ]
        )
    header = [
        "variant",
        "GGUF MiB",
        "load ms",
        "TTFT ms",
        "prefill tok/s",
        "decode tok/s",
        "peak RSS MiB",
        "of which before load",
    ]
    return _table(header, rows)


def answers_table(res: EvalResult) -> list[str]:
    """How the judged answers ended: a model that never stops by itself is a quality signal too."""
    rows = []
    for vr in res.variants:
        first = min(vr.trials, key=lambda t: t.round)
        n = len(first.runs)
        stop = sum(1 for r in first.runs if r.finish_reason == "stop")
        empty = sum(1 for r in first.runs if r.completion_tokens == 0)
        length = sum(1 for r in first.runs if r.finish_reason == "length" and r.completion_tokens)
        mean = sum(r.completion_tokens for r in first.runs) / n if n else math.nan
        rows.append(
            [vr.variant.name, f"{stop}/{n}", f"{length}/{n}", f"{empty}/{n}", _fmt(mean, 1)]
        )
    header = ["variant", "stopped by itself", "hit max_tokens", "empty", "mean tokens"]
    return _table(header, rows)


def perplexity_table(res: EvalResult) -> list[str]:
    rows = []
    for pr in res.perplexity.values():
        sane = pr.sanity
        check = "n/a (degenerate greedy output)" if pr.scores else "–"
        if sane:
            ok = all(s.greedy_ppl < s.shuffled_ppl for s in sane)
            check = f"{'pass' if ok else 'FAIL'}: " + ", ".join(
                f"{s.greedy_ppl:.3g} < {s.shuffled_ppl:.3g}" for s in sane
            )
        rows.append(
            [
                pr.model.label,
                str(pr.tokens),
                _fmt(pr.perplexity, 3),
                _fmt(pr.bits_per_byte, 3),
                f"{sum(1 for s in pr.scores.values() if s.truncated)}"
                + (f" (+{len(pr.skipped)} skipped)" if pr.skipped else ""),
                check,
            ]
        )
    header = [
        "model",
        "reference tokens",
        "perplexity",
        "bits/byte",
        "truncated",
        "sanity: own greedy < shuffled",
    ]
    return _table(header, rows)


def pairwise_table(res: EvalResult) -> list[str]:
    rows = []
    for p in res.pairs:
        lo, hi = p.interval
        rows.append(
            [
                p.first,
                p.second,
                str(p.wins_first),
                str(p.wins_second),
                str(p.ties),
                _fmt(p.win_rate, 3),
                f"{_fmt(lo, 3)}–{_fmt(hi, 3)}",
                _fmt(p.mean_soft, 3),
                _fmt(p.consistency, 2),
                _fmt(p.mean_letter_mass, 3),
            ]
        )
    header = [
        "first",
        "second",
        "1st wins",
        "2nd wins",
        "ties",
        "1st win rate",
        "95% CI",
        "1st judge prob.",
        "order-consistent",
        "letter mass",
    ]
    return _table(header, rows)


def votes_table(res: EvalResult) -> list[str]:
    if not res.votes.models:
        return [f"_{res.votes.status}_"]
    rows = []
    for m in res.votes.models:
        lo, hi = m.interval
        rows.append(
            [
                m.model,
                str(m.wins),
                str(m.losses),
                str(m.ties),
                _fmt(m.win_rate, 3),
                f"{_fmt(lo, 3)}–{_fmt(hi, 3)}",
            ]
        )
    return [
        f"{res.votes.status} from `{res.votes.source}`.",
        "",
        *_table(["model", "wins", "losses", "ties", "win rate", "95% CI"], rows),
    ]


def _pair_note(pair: PairResult) -> str:
    return f"{pair.first} vs {pair.second}"


def markdown(res: EvalResult, env: dict[str, Any], plots: list[str]) -> str:
    plan = res.plan
    when = datetime.fromtimestamp(res.started_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    n = len(plan.prompts.prompts)
    lines = [
        "# finechat eval report",
        "",
        f"{when} · {n} prompts · {len(plan.variants)} variants · {plan.rounds} latency rounds"
        + (" · quick mode" if plan.quick else ""),
        "",
        f"Command: `{plan.command}`" if plan.command else "",
        "",
        "## Models",
        "",
        *_table(
            ["variant", "GGUF", "role", "sha256", "temperature", "top_p", "max_tokens", "seed"],
            [
                [
                    v.name,
                    v.model.label,
                    "control (un-tuned base)" if v.role == "control" else "model",
                    v.model.sha256[:16],
                    f"{v.sampling.temperature:g}",
                    f"{v.sampling.top_p:g}",
                    str(v.sampling.max_tokens),
                    str(v.sampling.seed),
                ]
                for v in plan.variants
            ],
        ),
        "",
        "## Latency",
        "",
        "Median (IQR) over every prompt of every round; load time and peak RSS over rounds. Each",
        "round runs each variant in its own process (so peak RSS is that process's high-water",
        "mark, Python included), in alternating order so drift hits every variant alike; one",
        "warm-up generation per process is discarded. Prefill counts only prompt tokens not",
        "reused from the KV cache.",
        "",
        *latency_table(res),
        "",
        "## Quality",
        "",
        "### Answers",
        "",
        "How the first round's answers (the ones the judge reads) ended. An empty answer means",
        "the conversation alone filled the context window (raise --n-ctx).",
        "",
        *answers_table(res),
        "",
        "### Held-out perplexity",
        "",
        "Perplexity of the reference answers (the answer's tokens and the end-of-turn token that",
        "closes it, given the conversation rendered with the model's own chat template: only",
        "what the assistant says is scored). Variants that share a GGUF share this number.",
        "Per-token perplexity is only comparable between models with the same tokenizer; bits",
        "per UTF-8 byte of the answers is comparable across tokenizers. The sanity column",
        "scores each model's own greedy continuation against the same tokens shuffled.",
        "",
        *perplexity_table(res),
        "",
        "### Pairwise preference (judge)",
        "",
    ]
    if res.pairs:
        lines += [
            f"Judge: `{plan.judge.label if plan.judge else ''}`. Each prompt is judged twice with the",
            "answers swapped; a win needs both orders to agree, anything else is a tie. Win rate",
            "counts ties as half; the interval is Wilson's 95 % score interval. "
            "'1st judge prob.' is the first model's expected score from the judge's letter",
            "probabilities, averaged over both orders and all prompts (0.5 = no lean);",
            "'order-consistent' is the share of prompts where both orders gave the same verdict;",
            "'letter mass' is the judge's raw probability of answering with A, B or C at all",
            "(before the three are renormalized): near 0 means the verdicts are noise.",
            "",
            *([f"_Note: {plan.judge_note}._", ""] if plan.judge_note else []),
            *pairwise_table(res),
        ]
    else:
        reason = plan.judge_note or (
            "only one variant" if len(plan.variants) < 2 else "the judge was switched off"
        )
        lines.append(f"_Not run: {reason}._")
    lines += ["", "### Arena votes", "", *votes_table(res), "", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines += [
        "",
        "## Reproducibility",
        "",
        f"- seed {plan.seed}; threads {plan.n_threads}; n_ctx {plan.n_ctx}; n_batch {plan.n_batch}",
        f"- prompts: `{plan.prompts.path}` (sha256 {plan.prompts.sha256[:16]})",
        "- answers identical across rounds: "
        + ", ".join(
            f"{vr.variant.name}: {'yes' if vr.deterministic else 'no'}" for vr in res.variants
        ),
        f"- machine: {env['cpu']} × {env['cpu_count']}, {env['platform']}, Python {env['python']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
        f"- git commit: {env['git_commit']}",
        "- phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in res.phase_seconds.items()),
        "",
        "Raw numbers: `results.json`.",
        "",
    ]
    return "\n".join(lines)


def console_summary(res: EvalResult, out: Path) -> str:
    lines = []
    for vr in res.variants:
        lat = vr.latency()
        ppl = res.perplexity_of(vr.variant).perplexity
        control = " [control]" if vr.variant.role == "control" else ""
        lines.append(
            f"{vr.variant.name}{control}: decode {_fmt(lat['decode_tps'].median, 1)} tok/s, "
            f"TTFT {_fmt(lat['ttft_s'].median * 1000, 0)} ms, "
            f"peak RSS {_fmt(lat['peak_rss_mib'].median, 0)} MiB, perplexity {_fmt(ppl, 2)}"
        )
    for p in res.pairs:
        lo, hi = p.interval
        lines.append(
            f"{_pair_note(p)}: {p.wins_first}-{p.wins_second}-{p.ties} (W-L-T), "
            f"win rate {_fmt(p.win_rate, 2)} [{_fmt(lo, 2)}, {_fmt(hi, 2)}], "
            f"judge letter mass {_fmt(p.mean_letter_mass, 2)}"
        )
    if res.plan.judge_note and len(res.plan.variants) >= 2:
        lines.append(f"judge: {res.plan.judge_note}")
    lines.append(f"arena: {res.votes.status}")
    lines.append(f"report: {out / 'report.md'}")
    return "\n".join(lines)


def write_report(res: EvalResult, out: Path) -> Path:
    """Write ``report.md``, the PNG plots and ``results.json`` into ``out``; return the report."""
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    data = to_json(res, env)
    (out / "results.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    plots = write_plots(res, out)
    report = out / "report.md"
    report.write_text(markdown(res, env, plots))
    return report
