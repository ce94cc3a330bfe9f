"""Check an exported GGUF against the HF model it came from, before anyone chats with it.

The failures this catches are silent ones: a GGUF without the chat template (llama.cpp falls back
to another format), a wrong EOS (the model never stops), special tokens typed NORMAL (llama.cpp
spells ``<|eot_id|>`` out byte by byte while the HF model saw one token — the model still talks,
just worse), a tokenizer that cuts plain text differently from the one the model was trained
with, f16 overflow (NaN logits), and quantization damage.

Quantization damage is a gate, not a number in a file: each quantized GGUF is compared with the
unquantized GGUF it was made from on the held-out rows — the perplexity ratio of the assistant
tokens (end-of-turn included) and the mean KL divergence of the next-token distributions at
those positions — and an export past ``[export] max_perplexity_ratio`` or ``max_mean_kl`` fails,
naming the file and the numbers.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.data import Conversation
from training.errors import VerificationError

CONTROL, USER_DEFINED = 3, 4  # gguf.TokenType
DEFAULT_MAX_PERPLEXITY_RATIO = 1.25
DEFAULT_MAX_MEAN_KL = 0.25


@dataclass
class GGUFInfo:
    path: str
    file_type: int | None
    chat_template: str
    eos_id: int | None
    bos_id: int | None
    non_special: list[str] = field(default_factory=list)  # template tokens typed NORMAL


@dataclass
class GateResult:
    """One quantized file against the unquantized reference, on the same held-out tokens."""

    file: str
    perplexity_ratio: float
    mean_kl: float
    max_perplexity_ratio: float
    max_mean_kl: float
    tokens: int

    @property
    def ok(self) -> bool:
        return (
            math.isfinite(self.perplexity_ratio)
            and math.isfinite(self.mean_kl)
            and self.perplexity_ratio <= self.max_perplexity_ratio
            and self.mean_kl <= self.max_mean_kl
        )

    def problem(self) -> str:
        return (
            f"export gate: {Path(self.file).name}: perplexity ratio {self.perplexity_ratio:.4f} "
            f"(max {self.max_perplexity_ratio:g}), mean KL {self.mean_kl:.4f} "
            f"(max {self.max_mean_kl:g}) against the unquantized GGUF on {self.tokens} "
            "held-out assistant tokens"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


@dataclass
class VerifyReport:
    files: dict[str, GGUFInfo]
    tokenization_match: bool
    finite_logits: bool
    greedy_match: bool
    greedy_prompts: int
    max_abs_logit_diff: float
    perplexity: dict[str, float]  # assistant tokens (end-of-turn included) of the held-out rows
    problems: list[str]
    gate: dict[str, GateResult] = field(default_factory=dict)
    tokenizer_parity: dict[str, Any] = field(default_factory=dict)
    scored_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gate"] = {k: g.to_dict() for k, g in self.gate.items()}
        d["ok"] = self.ok
        return d


def read_gguf(path: Path, special_tokens: Sequence[str] = ()) -> GGUFInfo:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    info = GGUFInfo(
        path=str(path),
        file_type=value("general.file_type"),
        chat_template=value("tokenizer.chat_template") or "",
        eos_id=value("tokenizer.ggml.eos_token_id"),
        bos_id=value("tokenizer.ggml.bos_token_id"),
    )
    tokens: list[str] = value("tokenizer.ggml.tokens") or []
    types: list[int] = value("tokenizer.ggml.token_type") or []
    index = {t: i for i, t in enumerate(tokens)}
    for tok in special_tokens:
        i = index.get(tok)
        if i is not None and i < len(types) and types[i] not in (CONTROL, USER_DEFINED):
            info.non_special.append(tok)
    return info


@contextlib.contextmanager
def _llama(path: Path, n_ctx: int) -> Iterator[Any]:
    from llama_cpp import Llama

    threads = os.cpu_count() or 2
    llm = Llama(
        model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=threads
    )
    try:
        yield llm
    finally:
        llm.close()  # without it llama-cpp-python raises TypeError at interpreter exit


def _logits(llm: Any, tokens: list[int]) -> Any:
    import numpy as np

    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def _log_softmax(x: Any) -> Any:
    import numpy as np

    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _greedy(llm: Any, prompt: list[int], n: int, eos: int | None) -> list[int]:
    import numpy as np

    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        if tok == eos:
            break
        llm.eval([tok])
    return out


@dataclass
class _Row:
    text: str
    ids: list[int]
    positions: list[int]  # logits rows whose next token is an assistant token (to score)


def _rows(
    tok: Any,
    samples: list[Conversation],
    training_template: str | None,
    *,
    max_ctx: int,
    max_positions: int,
) -> tuple[list[_Row], list[int]]:
    """Token ids of each conversation and the positions that predict assistant tokens.

    The mask comes from the training template's ``{% generation %}`` markers, so it is exactly
    the tokens the loss was on: each reply and its end-of-turn token. Without a training
    template (an older run), every token is scored. Returns rows and the sample indexes kept.
    """
    import copy

    masker = None
    if training_template:
        masker = copy.copy(tok)
        masker.chat_template = training_template
    rows: list[_Row] = []
    kept: list[int] = []
    total = 0
    for i, conv in enumerate(samples):
        text = tok.apply_chat_template(conv, tokenize=False)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        # long rows are left out rather than cut: a cut could split a multi-token character
        if len(ids) > max_ctx or len(ids) < 2:
            continue
        positions = list(range(len(ids) - 1))
        if masker is not None:
            enc = masker.apply_chat_template(
                conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            mask = list(enc["assistant_masks"])
            if list(enc["input_ids"]) == ids and any(mask):
                positions = [t - 1 for t in range(1, len(ids)) if mask[t]]
        if total >= max_positions:
            break
        positions = positions[: max_positions - total]
        total += len(positions)
        rows.append(_Row(text, ids, positions))
        kept.append(i)
    return rows, kept


def verify(
    merged: Path,
    reference: Path,
    quantized: dict[str, Path],
    samples: list[Conversation],
    *,
    max_ctx: int = 2048,
    greedy_tokens: int = 16,
    tolerance: float = 0.1,
    max_logit_diff: float = 3.0,
    training_template: str | None = None,
    expected_template: str | None = None,
    max_perplexity_ratio: float = DEFAULT_MAX_PERPLEXITY_RATIO,
    max_mean_kl: float = DEFAULT_MAX_MEAN_KL,
    max_positions: int = 1024,
    parity_strings: int = 1000,
    parity_required: bool = True,
) -> VerifyReport:
    """Compare ``reference`` (the bf16/f16 GGUF) with the HF model, and gate each quantization.

    Greedy outputs "match" when every token llama.cpp picked is also the HF model's top token, or
    within ``tolerance`` logits of it — or within the largest logit difference measured between
    the two on the held-out rows, if that is larger (bf16 rounding of a real model's weights
    moves logits by a few tenths, and a near-tie may flip either way).
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not samples:
        raise VerificationError("no held-out conversations to verify with")
    tok = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    specials = [t for t in tok.all_special_tokens if t] + [
        t.content for t in tok.added_tokens_decoder.values() if t.special
    ]
    problems: list[str] = []
    files = {"reference": read_gguf(reference, specials)}
    files.update({q: read_gguf(p, specials) for q, p in quantized.items()})
    eos_id = tok.eos_token_id
    template = (expected_template or tok.chat_template or "").strip()
    for name, info in files.items():
        if not info.chat_template:
            problems.append(f"{name}: no tokenizer.chat_template in the GGUF")
        elif info.chat_template.strip() != template:
            problems.append(f"{name}: the GGUF chat template differs from the one trained with")
        if info.eos_id != eos_id:
            problems.append(f"{name}: EOS id {info.eos_id}, the HF tokenizer says {eos_id}")
        if info.non_special:
            problems.append(f"{name}: tokens typed NORMAL, not special: {info.non_special}")

    parity: dict[str, Any] = {}
    if parity_strings:
        from training.tokenizer_check import check_parity

        rep = check_parity(tok, reference, n=parity_strings)
        parity = rep.to_dict()
        if not rep.ok and parity_required:
            ex = rep.examples[0]["text"] if rep.examples else ""
            problems.append(
                f"tokenizer: llama.cpp and the HF tokenizer differ on {rep.mismatches} of "
                f"{rep.strings} plain-text strings (e.g. {ex!r})"
            )

    rows, kept = _rows(
        tok, samples, training_template, max_ctx=max_ctx, max_positions=max_positions
    )
    if not rows:
        raise VerificationError(f"every held-out conversation is longer than {max_ctx} tokens")
    scored = sum(len(r.positions) for r in rows)
    n_ctx = max(len(r.ids) for r in rows) + greedy_tokens + 8
    prompts = [
        tok.apply_chat_template(samples[i][:-1], tokenize=False, add_generation_prompt=True)
        for i in kept
        if samples[i][-1]["role"] == "assistant"
    ]
    tokenization_match, finite, greedy_match = True, True, True
    max_diff = 0.0
    ppl: dict[str, float] = {}

    def nll_at(logp: Any, row: _Row) -> float:
        targets = np.array([row.ids[p + 1] for p in row.positions])
        return float(-logp[np.arange(len(targets)), targets].sum())

    with torch.no_grad():
        hf_logits = [model(torch.tensor([r.ids])).logits[0].double().numpy() for r in rows]
    ppl["hf"] = math.exp(
        sum(nll_at(_log_softmax(lg[r.positions]), r) for lg, r in zip(hf_logits, rows, strict=True))
        / scored
    )

    ref_logp: list[Any] = []  # float32 log-probabilities of the reference at scored positions
    gate: dict[str, GateResult] = {}
    for name, path in {"reference": reference, **quantized}.items():
        total, kl_sum, ok_file = 0.0, 0.0, True
        with _llama(path, n_ctx) as llm:
            for k, row in enumerate(rows):
                cpp_ids = list(llm.tokenize(row.text.encode(), add_bos=False, special=True))
                if cpp_ids != row.ids:
                    tokenization_match = ok_file = False
                    problems.append(
                        f"{name}: llama.cpp tokenizes the chat template differently "
                        f"({len(cpp_ids)} vs {len(row.ids)} HF tokens)"
                    )
                    break
                logits = _logits(llm, row.ids)
                if not np.isfinite(logits).all():
                    finite = ok_file = False
                    problems.append(f"{name}: non-finite logits (f16 overflow? export with bf16)")
                    break
                if name == "reference":
                    max_diff = max(max_diff, float(np.abs(hf_logits[k] - logits).max()))
                logp = _log_softmax(logits[row.positions])
                total += nll_at(logp, row)
                if name == "reference":
                    ref_logp.append(logp.astype(np.float32))
                elif ref_logp:
                    ref = ref_logp[k].astype(np.float64)
                    kl_sum += float((np.exp(ref) * (ref - logp)).sum())
            if ok_file:
                ppl[name] = math.exp(total / scored)
                if name != "reference" and len(ref_logp) == len(rows):
                    gate[name] = GateResult(
                        str(path),
                        ppl[name] / ppl["reference"],
                        kl_sum / scored,
                        max_perplexity_ratio,
                        max_mean_kl,
                        scored,
                    )
            if name == "reference" and tokenization_match and finite:
                # A token llama.cpp picked is fine when the HF model ranks it within the measured
                # 16-bit logit noise of its own top token: a near-tie may flip either way.
                tie = max(tolerance, max_diff)
                for prompt in prompts:
                    p_ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
                    gen = _greedy(llm, p_ids, greedy_tokens, eos_id)
                    with torch.no_grad():
                        ref_row = model(torch.tensor([p_ids + gen])).logits[0]
                    for i, t in enumerate(gen):
                        row_logits = ref_row[len(p_ids) - 1 + i]
                        if float(row_logits.max() - row_logits[t]) > tie:
                            greedy_match = False
                            problems.append(
                                f"greedy output differs from the HF model at token {i} of a prompt"
                            )
                            break
                    if not greedy_match:
                        break
    if max_diff > max_logit_diff:
        problems.append(
            f"reference: logits differ from the HF model's by up to {max_diff:.2f} "
            f"(more than {max_logit_diff:g}: a conversion problem, not rounding)"
        )
    problems += [g.problem() for g in gate.values() if not g.ok]
    return VerifyReport(
        files=files,
        tokenization_match=tokenization_match,
        finite_logits=finite,
        greedy_match=greedy_match,
        greedy_prompts=len(prompts),
        max_abs_logit_diff=round(max_diff, 5),
        perplexity={k: round(v, 4) for k, v in ppl.items()},
        problems=problems,
        gate=gate,
        tokenizer_parity=parity,
        scored_tokens=scored,
    )
