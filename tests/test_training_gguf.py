"""The real bundled model through the whole loop, on a CPU, offline: its GGUF as the base →
LoRA → merge → GGUF → q4_k_m → tokenizer check → export gate → ``ChatService`` answers with it.

Kept short for CI (three optimizer steps at a small sequence length on 80 rows): it proves the
pipeline on a real model and a real tokenizer, not quality. The full ``smollm2-135m-cpu`` run is
an acceptance run (README), not a test.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.model_source import bundled_model_path
from training.config import load_run_config

pytest.importorskip("torch")
pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]


def _finechat(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )


def test_rebuilt_tokenizer_cuts_text_exactly_like_llama_cpp() -> None:
    """1,000 mixed strings (digits, code, emoji, whitespace runs, special-token look-alikes),
    special-token parsing off as chat text is tokenized: not one may differ. transformers' own
    GGUF tokenizer conversion misses SmolLM2's ``smollm`` pre-tokenizer (digits one by one)."""
    from training.gguf_base import build_tokenizer, read_vocab
    from training.tokenizer_check import check_parity, hf_plain_ids, llama_cpp_plain_ids

    gguf = bundled_model_path()
    vocab = read_vocab(gguf)
    assert (vocab.model, vocab.pre) == ("gpt2", "smollm")
    tok = build_tokenizer(gguf, vocab)
    report = check_parity(tok, gguf, n=1000)
    assert report.strings == 1000
    assert report.ok, report.examples
    cpp, close = llama_cpp_plain_ids(gguf)
    try:
        hf = hf_plain_ids(tok)
        for text in ("2024", "x = 31415", "<|im_end|>", "👨‍👩‍👧 \t\n  a"):
            assert hf(text) == cpp(text)
        assert len(hf("2024")) == 4  # one token per digit, as llama.cpp's smollm splits them
        assert len(hf("<|im_end|>")) > 1  # typed by a person, it stays text
    finally:
        close()
    # special tokens as the template writes them are single tokens
    assert tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"][0] == 1
    assert tok.eos_token == "<|im_end|>" and tok.chat_template == vocab.chat_template


def _ci_config(tmp_path: Path) -> Path:
    """smollm2-135m-cpu, cut down to a CI-sized run (same base, template, LoRA and data)."""
    cfg = load_run_config("smollm2-135m-cpu")
    path = tmp_path / "smollm2-ci.toml"
    path.write_text(
        f"""name = "smollm2-ci"
[model]
base = "bundled"
backend = "hf"
load_in_4bit = false
max_seq_length = 256
chat_template = "gguf"
[lora]
r = {cfg.lora.r}
alpha = {cfg.lora.alpha}
[dataset]
path = {json.dumps(cfg.dataset.path)}
max_samples = 80
validation_fraction = 0.1
seed = 1
[training]
learning_rate = 2e-4
warmup_steps = 1
batch_size = 2
gradient_accumulation_steps = 1
max_steps = 3
eval_steps = 0
logging_steps = 1
seed = 1
[export]
merge_dtype = "float32"
quant = ["q4_k_m"]
""",
        encoding="utf-8",
    )
    return path


def damage_quantization(path: Path, *, every: int = 6) -> int:
    """Scramble the quantized values of every ``every``-th Q4_K / Q5_0 tensor, keeping each
    block's scale bytes (so the weights stay finite: garbage, not NaN). SmolLM2's 576-wide rows
    are not multiples of 256, so q4_k_m stores most of them as Q5_0. Returns how many tensors."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader

    # block size in bytes, and where the scales end (Q4_K: fp16 d + dmin + 12 bytes of scales)
    layout = {GGMLQuantizationType.Q4_K: (144, 16), GGMLQuantizationType.Q5_0: (22, 2)}
    reader = GGUFReader(str(path))
    targets = [
        (int(t.data_offset), int(t.n_bytes), *layout[t.tensor_type])
        for t in reader.tensors
        if t.tensor_type in layout
    ][::every]
    del reader
    rng = np.random.default_rng(0)
    data = np.memmap(path, dtype=np.uint8, mode="r+")
    for offset, size, block, keep in targets:
        blocks = data[offset : offset + size].reshape(-1, block)
        blocks[:, keep:] = rng.integers(0, 256, size=blocks[:, keep:].shape, dtype=np.uint8)
    data.flush()
    del data
    return len(targets)


async def _serve_one_turn(gguf: Path, db: Path) -> Any:
    from core.config import ChatConfig, GenerationConfig
    from core.llama_engine import LlamaEngine
    from core.memory import MemoryStore
    from core.service import ChatService

    engine = await asyncio.to_thread(LlamaEngine.load, gguf, n_ctx=512, n_threads=2)
    store = await MemoryStore.open(db)
    try:
        service = ChatService(
            engine,
            store,
            chat=ChatConfig(system_prompt="You are a helpful assistant."),
            generation=GenerationConfig(temperature=0.0, max_tokens=24, seed=1),
        )
        done = await asyncio.wait_for(service.ask("cli:trainer", "Name a fruit."), 120)
        history = await service.history("cli:trainer")
    finally:
        await engine.aclose()
        await store.aclose()
    return done, history


@pytest.mark.slow
def test_bundled_gguf_base_to_served_q4_k_m(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _finechat("train", "--config", str(_ci_config(tmp_path)), "--out", str(run), "--export")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "trained 3 steps with hf" in out and "data: 80 rows read" in out
    assert "export gate q4_k_m: perplexity ratio" in out and ": passed" in out

    info = json.loads((run / "run.json").read_text())
    assert info["base_model"] == str(bundled_model_path())
    assert info["templates"]["name"] == "smollm2" and info["data"]["read"] == 80
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG")
    heldout = (run / "heldout.jsonl").read_text().splitlines()
    validation = (run / "data" / "validation.jsonl").read_text().splitlines()
    assert len(heldout) == len(validation) == 8
    assert [json.loads(h)["messages"] for h in heldout] == [
        json.loads(v)["messages"] for v in validation
    ]

    # the export: tokenizer and template metadata are the source GGUF's own
    from gguf import GGUFReader

    q4 = run / "gguf" / "smollm2-ci-Q4_K_M.gguf"
    src, dst = GGUFReader(str(bundled_model_path())), GGUFReader(str(q4))
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
    ):
        assert src.fields[key].contents() == dst.fields[key].contents(), key
    assert dst.fields["general.file_type"].contents() == 15  # Q4_K_M
    del src, dst

    report = json.loads((run / "verify.json").read_text())
    assert report["ok"], report["problems"]
    assert report["tokenization_match"] and report["greedy_match"] and report["finite_logits"]
    assert report["tokenizer_parity"]["strings"] == 1000
    assert report["tokenizer_parity"]["mismatches"] == 0
    gate = report["gate"]["q4_k_m"]
    assert gate["ok"] and 1.0 <= gate["perplexity_ratio"] <= gate["max_perplexity_ratio"]
    assert 0.0 < gate["mean_kl"] <= gate["max_mean_kl"] and gate["tokens"] > 100
    assert abs(report["perplexity"]["reference"] / report["perplexity"]["hf"] - 1) < 0.01
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["gate"]["q4_k_m"]["ok"] and manifest["verified"]

    # the core serves the result
    done, history = asyncio.run(_serve_one_turn(q4, tmp_path / "memory.sqlite"))
    assert done.finish_reason in {"stop", "length"} and done.completion_tokens > 0
    assert done.text.strip() and [t.role for t in history][-2:] == ["user", "assistant"]

    # a deliberately damaged quantization fails the gate, naming the file and the numbers
    from training.verify import verify

    damaged = tmp_path / "damaged-Q4_K_M.gguf"
    shutil.copyfile(q4, damaged)
    assert damage_quantization(damaged) > 10
    rows = [json.loads(line)["messages"] for line in validation]
    bad = verify(
        run / "merged",
        run / "gguf" / "smollm2-ci-BF16.gguf",
        {"q4_k_m": damaged},
        rows[:4],
        training_template=info["templates"]["training"],
        expected_template=info["templates"]["inference"],
        parity_strings=0,
        max_positions=256,
    )
    assert not bad.ok and bad.gate["q4_k_m"].ok is False
    (problem,) = [p for p in bad.problems if p.startswith("export gate")]
    assert "damaged-Q4_K_M.gguf: perplexity ratio" in problem and "mean KL" in problem
    g = bad.gate["q4_k_m"]
    assert g.perplexity_ratio > gate["max_perplexity_ratio"] or g.mean_kl > gate["max_mean_kl"]
