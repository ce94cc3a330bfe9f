"""Check an exported GGUF against the HF model it came from, before anyone chats with it.

The failures this catches are silent ones: a GGUF without the chat template (llama.cpp falls back
to another format), a wrong EOS (the model never stops), special tokens typed NORMAL (llama.cpp
spells ``<|eot_id|>`` out byte by byte while the HF model saw one token — the model still talks,
just worse), f16 overflow (NaN logits), and quantization damage (perplexity).
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


@dataclass
class GGUFInfo:
    path: str
    file_type: int | None
    chat_template: str
    eos_id: int | None
    bos_id: int | None
    non_special: list[str] = field(default_factory=list)  # template tokens typed NORMAL


@dataclass
class VerifyReport:
    files: dict[str, GGUFInfo]
    tokenization_match: bool
    finite_logits: bool
    greedy_match: bool
    greedy_prompts: int
    max_abs_logit_diff: float
    perplexity: dict[str, float]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
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


def _nll(logits: Any, tokens: list[int]) -> tuple[float, int]:
    import numpy as np

    x = logits[:-1]
    x = x - x.max(axis=1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    target = np.array(tokens[1:])
    return float(-logp[np.arange(len(target)), target].sum()), len(target)


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


def verify(
    merged: Path,
    reference: Path,
    quantized: dict[str, Path],
    samples: list[Conversation],
    *,
    max_ctx: int = 2048,
    greedy_tokens: int = 16,
    tolerance: float = 0.1,
) -> VerifyReport:
    """Compare ``reference`` (the bf16/f16 GGUF) with the HF model; perplexity for all files.

    Greedy outputs "match" when every token llama.cpp picked is also the HF model's top token, or
    within ``tolerance`` logits of it (a near-tie that 16-bit rounding may flip either way).
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
    for name, info in files.items():
        if not info.chat_template:
            problems.append(f"{name}: no tokenizer.chat_template in the GGUF")
        elif info.chat_template.strip() != (tok.chat_template or "").strip():
            problems.append(f"{name}: the GGUF chat template differs from the merged model's")
        if info.eos_id != eos_id:
            problems.append(f"{name}: EOS id {info.eos_id}, the HF tokenizer says {eos_id}")
        if info.non_special:
            problems.append(f"{name}: tokens typed NORMAL, not special: {info.non_special}")

    texts = [tok.apply_chat_template(conv, tokenize=False) for conv in samples]
    hf_ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    # long rows are left out rather than cut: a cut could split a multi-token character
    keep = [i for i, ids in enumerate(hf_ids) if len(ids) <= max_ctx]
    if not keep:
        raise VerificationError(f"every held-out conversation is longer than {max_ctx} tokens")
    texts, hf_ids = [texts[i] for i in keep], [hf_ids[i] for i in keep]
    n_ctx = max(len(ids) for ids in hf_ids) + greedy_tokens + 8
    prompts = [
        tok.apply_chat_template(samples[i][:-1], tokenize=False, add_generation_prompt=True)
        for i in keep
        if samples[i][-1]["role"] == "assistant"
    ]
    tokenization_match, finite, greedy_match = True, True, True
    max_diff = 0.0
    ppl: dict[str, float] = {}
    with torch.no_grad():
        hf_nll = [
            _nll(model(torch.tensor([ids])).logits[0].double().numpy(), ids) for ids in hf_ids
        ]
    ppl["hf"] = math.exp(sum(n for n, _ in hf_nll) / sum(c for _, c in hf_nll))

    for name, path in {"reference": reference, **quantized}.items():
        with _llama(path, n_ctx) as llm:
            total, count = 0.0, 0
            for text, ids in zip(texts, hf_ids, strict=True):
                cpp_ids = list(llm.tokenize(text.encode(), add_bos=False, special=True))
                if cpp_ids != ids:
                    tokenization_match = False
                    problems.append(
                        f"{name}: llama.cpp tokenizes the chat template differently "
                        f"({len(cpp_ids)} vs {len(ids)} HF tokens)"
                    )
                    break
                logits = _logits(llm, ids)
                if not np.isfinite(logits).all():
                    finite = False
                    problems.append(f"{name}: non-finite logits (f16 overflow? export with bf16)")
                    break
                if name == "reference":
                    with torch.no_grad():
                        ref = model(torch.tensor([ids])).logits[0].double().numpy()
                    max_diff = max(max_diff, float(np.abs(ref - logits).max()))
                nll, n = _nll(logits, ids)
                total, count = total + nll, count + n
            if count:
                ppl[name] = math.exp(total / count)
            if name == "reference" and tokenization_match and finite:
                for prompt in prompts:
                    p_ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
                    gen = _greedy(llm, p_ids, greedy_tokens, eos_id)
                    with torch.no_grad():
                        ref = model(torch.tensor([p_ids + gen])).logits[0]
                    for i, t in enumerate(gen):
                        row = ref[len(p_ids) - 1 + i]
                        if float(row.max() - row[t]) > tolerance:
                            greedy_match = False
                            problems.append(
                                f"greedy output differs from the HF model at token {i} of a prompt"
                            )
                            break
                    if not greedy_match:
                        break
    return VerifyReport(
        files=files,
        tokenization_match=tokenization_match,
        finite_logits=finite,
        greedy_match=greedy_match,
        greedy_prompts=len(prompts),
        max_abs_logit_diff=round(max_diff, 5),
        perplexity={k: round(v, 4) for k, v in ppl.items()},
        problems=problems,
    )
