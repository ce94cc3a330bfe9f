"""The evaluation run: latency trials, then perplexity, then the judge, then arena votes.

Phases run one after another and load at most one model at a time, so no two llama.cpp
contexts ever compute together. Latency trials alternate the variant order each round
(A B, B A, …) so that slow drift of the machine (thermal throttling, a neighbour's job) is
spread over every variant instead of hitting whichever ran last.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.engine import SamplingParams
from core.model_source import ModelSpec, resolve_model
from training.evaluation.errors import EvalError
from training.evaluation.judge import PairResult, judge_one, label_tokens
from training.evaluation.latency import Trial, run_trial
from training.evaluation.prompts import PromptSet
from training.evaluation.scoring import Scorer, TextScore, bits_per_byte, corpus_perplexity
from training.evaluation.stats import Summary, summarize
from training.evaluation.votes import ArenaVotes, read_votes

Progress = Callable[[str, int], None]
"""``progress(phase, steps_done)``: called as work completes (the CLI drives a bar with it)."""


@dataclass(frozen=True)
class ModelFile:
    label: str
    path: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Variant:
    """A model under one set of generation settings: what gets compared."""

    name: str
    model: ModelFile
    sampling: SamplingParams
    role: str = "model"  # "model" (a --model) or "control" (the --base, un-tuned)


@dataclass(frozen=True)
class EvalPlan:
    variants: tuple[Variant, ...]
    prompts: PromptSet
    system_prompt: str
    n_ctx: int
    n_threads: int
    n_batch: int
    rounds: int
    judge: ModelFile | None
    votes_db: str | None
    seed: int
    quick: bool = False
    command: str = ""
    sanity_prompts: int = 3
    sanity_tokens: int = 32
    judge_note: str = ""  # why there is no judge, or what to keep in mind about it

    @property
    def total_steps(self) -> int:
        n = len(self.prompts.prompts)
        steps = self.rounds * len(self.variants) * n
        steps += len(self.models()) * (n + min(self.sanity_prompts, n))
        if self.judge is not None:
            steps += len(self.pairs()) * n
        return steps

    def models(self) -> list[ModelFile]:
        """Distinct GGUF files (perplexity is a property of the weights, not of sampling)."""
        seen: dict[str, ModelFile] = {}
        for v in self.variants:
            seen.setdefault(v.model.sha256, v.model)
        return list(seen.values())

    def pairs(self) -> list[tuple[int, int]]:
        return list(itertools.combinations(range(len(self.variants)), 2))


@dataclass
class VariantResult:
    variant: Variant
    trials: list[Trial] = field(default_factory=list)

    @property
    def answers(self) -> list[str]:
        """The first round's answers: what perplexity-free quality (the judge) looks at."""
        first = min(self.trials, key=lambda t: t.round)
        return [r.text for r in sorted(first.runs, key=lambda r: r.index)]

    @property
    def deterministic(self) -> bool:
        """Every round produced the same answers (same seed, same settings)."""
        texts = {tuple(r.text for r in sorted(t.runs, key=lambda r: r.index)) for t in self.trials}
        return len(texts) <= 1

    def latency(self) -> dict[str, Summary]:
        runs = [r for t in self.trials for r in t.runs]
        return {
            "load_s": summarize([t.load_s for t in self.trials]),
            "ttft_s": summarize([r.ttft_s for r in runs if r.ttft_s is not None]),
            "prefill_tps": summarize([x for r in runs if (x := r.prefill_tps) is not None]),
            "decode_tps": summarize([x for r in runs if (x := r.decode_tps) is not None]),
            "peak_rss_mib": summarize([t.peak_rss_kib / 1024 for t in self.trials]),
            "rss_before_load_mib": summarize([t.rss_before_load_kib / 1024 for t in self.trials]),
        }


@dataclass(frozen=True)
class SanityCheck:
    """Perplexity of the model's own greedy continuation vs the same tokens shuffled."""

    prompt_id: str
    greedy_ppl: float
    shuffled_ppl: float
    tokens: int


@dataclass
class PerplexityResult:
    model: ModelFile
    scores: dict[str, TextScore] = field(default_factory=dict)
    sanity: list[SanityCheck] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def perplexity(self) -> float:
        return corpus_perplexity(list(self.scores.values()))

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(list(self.scores.values()))

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.scores.values())


@dataclass
class EvalResult:
    plan: EvalPlan
    variants: list[VariantResult]
    perplexity: dict[str, PerplexityResult]  # by model sha256
    pairs: list[PairResult]
    votes: ArenaVotes
    started_at: float
    finished_at: float
    phase_seconds: dict[str, float]

    def perplexity_of(self, v: Variant) -> PerplexityResult:
        return self.perplexity[v.model.sha256]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_model_file(text: str) -> ModelFile:
    """A ``--model`` value (path, ``owner/repo:file.gguf``, or empty for the bundled model)."""
    spec = ModelSpec.parse(text)
    path = resolve_model(spec)
    return ModelFile(spec.label, path, path.stat().st_size, file_sha256(path))


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _latency(plan: EvalPlan, progress: Progress) -> list[VariantResult]:
    results = [VariantResult(v) for v in plan.variants]
    contexts = [p.with_system(plan.system_prompt) for p in plan.prompts.prompts]
    for r in range(plan.rounds):
        order = list(range(len(results)))
        if r % 2:
            order.reverse()
        for i in order:
            v = plan.variants[i]
            results[i].trials.append(
                run_trial(
                    v.name,
                    r,
                    v.model.path,
                    v.sampling,
                    contexts,
                    n_ctx=plan.n_ctx,
                    n_threads=plan.n_threads,
                    n_batch=plan.n_batch,
                    on_prompt=lambda: progress("latency", 1),
                )
            )
    return results


def _perplexity(plan: EvalPlan, model: ModelFile, progress: Progress) -> PerplexityResult:
    out = PerplexityResult(model)
    start = time.perf_counter()
    with Scorer.load(
        model.path, n_ctx=plan.n_ctx, n_threads=plan.n_threads, n_batch=plan.n_batch
    ) as scorer:
        for p in plan.prompts.prompts:
            prefix = scorer.encode_prompt(p.with_system(plan.system_prompt))
            if p.reference is None:
                pass
            elif len(prefix) >= scorer.n_ctx:
                out.skipped.append(p.id)  # the conversation alone fills the context
            else:
                # the reply and the token that ends the turn: stopping is part of answering
                reply = scorer.tokenize(p.reference) + scorer.end_of_turn_tokens()
                out.scores[p.id] = scorer.continuation_nll(prefix, reply)
            progress("perplexity", 1)
        rng = random.Random(plan.seed)
        for p in plan.prompts.prompts[: plan.sanity_prompts]:
            prefix = scorer.encode_prompt(p.with_system(plan.system_prompt))
            if len(prefix) + 4 >= scorer.n_ctx:
                progress("perplexity", 1)
                continue
            greedy = scorer.greedy(prefix, plan.sanity_tokens)
            # A degenerate continuation (one token repeated) has no order to destroy: skip it.
            if len(greedy) >= 4 and len(set(greedy)) > 1:
                shuffled = greedy[:]
                while shuffled == greedy:
                    rng.shuffle(shuffled)
                out.sanity.append(
                    SanityCheck(
                        p.id,
                        scorer.continuation_nll(prefix, greedy).perplexity,
                        scorer.continuation_nll(prefix, shuffled).perplexity,
                        len(greedy),
                    )
                )
            progress("perplexity", 1)
    out.seconds = time.perf_counter() - start
    return out


def _judge(plan: EvalPlan, answers: list[list[str]], progress: Progress) -> list[PairResult]:
    assert plan.judge is not None
    results: list[PairResult] = []
    with Scorer.load(
        plan.judge.path, n_ctx=plan.n_ctx, n_threads=plan.n_threads, n_batch=plan.n_batch
    ) as scorer:
        ids = label_tokens(scorer)
        for i, j in plan.pairs():
            items = []
            for k, p in enumerate(plan.prompts.prompts):
                items.append(judge_one(scorer, p.id, p.context, answers[i][k], answers[j][k], ids))
                progress("judge", 1)
            results.append(
                PairResult(
                    plan.variants[i].name, plan.variants[j].name, plan.judge.label, tuple(items)
                )
            )
    return results


def run_eval(plan: EvalPlan, progress: Progress = lambda phase, n: None) -> EvalResult:
    if len(plan.variants) < 1:
        raise EvalError("nothing to evaluate: give at least one model")
    started = time.time()
    phases: dict[str, float] = {}

    t = time.perf_counter()
    variants = _latency(plan, progress)
    phases["latency"] = time.perf_counter() - t

    t = time.perf_counter()
    ppl = {m.sha256: _perplexity(plan, m, progress) for m in plan.models()}
    phases["perplexity"] = time.perf_counter() - t

    pairs: list[PairResult] = []
    if plan.judge is not None and len(plan.variants) >= 2:
        t = time.perf_counter()
        pairs = _judge(plan, [v.answers for v in variants], progress)
        phases["judge"] = time.perf_counter() - t

    votes = read_votes(plan.votes_db)
    return EvalResult(plan, variants, ppl, pairs, votes, started, time.time(), phases)
