"""Training half end to end on a CPU, offline: a tiny random Llama with a SentencePiece tokenizer
(built here), FineTome-shaped rows, SFT with eval and checkpoints, resume, merge, GGUF bf16 →
q4_k_m, verification, and the core serving the result.

The pipeline runs through the real ``finechat`` command line in subprocesses (as a user would);
the core engine is loaded in-process only after them and closed before the test ends.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.config import load_run_config
from training.data import load_conversations
from training.templates import get_templates

torch = pytest.importorskip("torch")
pytest.importorskip("trl")


def _finechat(*argv: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def rows() -> list[list[dict[str, str]]]:
    return load_conversations(load_run_config("tiny-cpu").dataset)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, rows: list[list[dict[str, str]]]) -> Path:
    from training.tiny import build_tiny_llama

    texts = [m["content"] for conv in rows for m in conv]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "base", texts)


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, label in enumerate([*labels, -100]):
        if label != -100 and start is None:
            start = i
        elif label == -100 and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_only_assistant_tokens_and_end_of_turn_carry_labels(
    tiny_base: Path, tmp_path: Path, rows: list[list[dict[str, str]]]
) -> None:
    from dataclasses import replace

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from training.backend_hf import load_tokenizer, sft_config

    cfg = load_run_config("tiny-cpu")
    cfg = replace(cfg, model=replace(cfg.model, max_seq_length=2048))  # nothing truncated here
    pair = get_templates("llama-3")
    tok = load_tokenizer(str(tiny_base), pair)
    multi = next(r for r in rows if r[0]["role"] == "system" and len(r) == 5)
    # training and inference templates render the very same text
    train_text = tok.apply_chat_template(multi, tokenize=False)
    tok.chat_template = pair.inference
    assert tok.apply_chat_template(multi, tokenize=False) == train_text
    tok.chat_template = pair.training

    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(tiny_base)),
        args=sft_config(cfg, tmp_path, has_eval=False, cuda=False, bf16=False),
        train_dataset=Dataset.from_list([{"messages": multi}]),
        processing_class=tok,
    )
    example = trainer.train_dataset[0]
    ids, labels = example["input_ids"], example["labels"]
    assert any(label != -100 for label in labels), "all labels are -100"
    learned = [tok.decode(ids[a:b], skip_special_tokens=False) for a, b in _spans(labels)]
    replies = [m["content"] + "<|eot_id|>" for m in multi if m["role"] == "assistant"]
    assert learned == replies
    # and nothing of the system prompt, the user turns or the role headers is trained
    assert all(ids[i] == labels[i] for a, b in _spans(labels) for i in range(a, b))


def _merged_matches_base_plus_adapter(run: Path) -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 3, 40, 41, 42, 4, 16, 16, 50, 60, 70, 5]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(str(run / "base"), dtype=torch.float32)
        with_adapter = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
        expected = with_adapter(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(run / "merged"), dtype=torch.float32)
        got = merged.eval()(ids).logits
    # the adapter really changed the model (else "merged ≈ base" would prove nothing)
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(str(run / "base"), dtype=torch.float32)(
            ids
        ).logits
    assert float((plain - expected).abs().max()) > 1e-3
    return float((got - expected).abs().max())


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
            chat=ChatConfig(system_prompt="You are a friendly tutor."),
            generation=GenerationConfig(temperature=0.0, max_tokens=16, seed=1),
        )
        done = await asyncio.wait_for(service.ask("cli:trainer", "Tell me about cats."), 120)
        history = await service.history("cli:trainer")
    finally:
        await engine.aclose()
        await store.aclose()
    return done, history


@pytest.mark.slow
def test_train_resume_merge_export_verify_and_serve(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # 1. SFT a few steps with eval and checkpoints (tiny-cpu: 8 steps, eval/save every 4)
    proc = _finechat("train", "--config", "tiny-cpu", "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 8 steps with hf" in proc.stdout
    assert {p.name for p in (run / "checkpoints").glob("checkpoint-*")} == {
        "checkpoint-4",
        "checkpoint-8",
    }
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["lora"]["r"] == 8 and info["seeds"] == {"data": 0, "training": 0}
    assert {"torch", "transformers", "peft", "trl", "llama_cpp_python"} <= set(info["versions"])
    assert info["git_sha"] != "" and info["metrics"]["steps"] == 8
    evals = [
        (e["step"], e["eval_loss"]) for e in info["metrics"]["log_history"] if "eval_loss" in e
    ]
    # the base model's validation loss first (where the curve starts), then every 4 steps
    assert [step for step, _ in evals] == [0, 4, 8] and all(v == v for _, v in evals)
    assert evals[-1][1] < evals[0][1]  # the tiny model learned the sample's words
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert (run / "heldout.jsonl").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()

    # 2. resume from the newest checkpoint and go on to step 12
    proc = _finechat(
        "train", "--config", "tiny-cpu", "--out", str(run), "--resume", "--max-steps", "12"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_from"].endswith("checkpoint-8") and info["metrics"]["steps"] == 12
    # only steps 9-12 were trained (and logged) by this run; 1-8 came from the checkpoint
    assert proc.stdout.count("{'loss'") == 4, proc.stdout[-2000:]
    assert len([e for e in info["metrics"]["log_history"] if "loss" in e]) == 12

    # 3. merge → bf16 GGUF → q4_k_m → verification → manifest, all offline
    proc = _finechat("export", str(run), "--quant", "q4_k_m")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "verify.json").read_text())
    assert report["ok"] and report["tokenization_match"] and report["greedy_match"]
    assert report["finite_logits"] and report["max_abs_logit_diff"] < 0.05
    assert report["files"]["q4_k_m"]["file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert report["files"]["reference"]["file_type"] == 32  # bf16
    assert set(report["perplexity"]) == {"hf", "reference", "q4_k_m"}
    assert report["tokenizer_parity"]["strings"] == 1000  # recorded (required for GGUF bases)
    assert report["gate"]["q4_k_m"]["ok"] and report["scored_tokens"] > 0
    assert abs(report["perplexity"]["reference"] / report["perplexity"]["hf"] - 1) < 0.01
    manifest = json.loads((run / "manifest.json").read_text())
    from training.export import sha256

    for f in manifest["files"]:
        assert (
            sha256(run / f["file"]) == f["sha256"] and (run / f["file"]).stat().st_size == f["size"]
        )
    assert manifest["verified"] and "llama-cpp-python" in manifest["converter"]
    q4 = run / "gguf" / "tiny-cpu-Q4_K_M.gguf"
    from gguf import GGUFReader

    kinds = {t.tensor_type.name for t in GGUFReader(str(q4)).tensors}
    assert "Q4_K" in kinds  # K-quants really applied (sizes are multiples of 256)
    card = (run / "README.md").read_text()
    assert "tiny-cpu-Q4_K_M.gguf" in card and "held-out perplexity" in card

    # 4. merged logits ≈ base + adapter logits
    assert _merged_matches_base_plus_adapter(run) < 1e-4

    # 5. the core serves it: a chat turn through ChatService, and `finechat ask --model`
    done, history = asyncio.run(_serve_one_turn(q4, tmp_path / "memory.sqlite"))
    assert done.finish_reason in {"stop", "length"} and done.completion_tokens > 0
    # a random tiny model may answer only whitespace, which the service does not store
    expected = ["user", "assistant"] if done.text else ["user"]
    assert [t.role for t in history][-len(expected) :] == expected
    proc = _finechat(
        "ask", "Tell me about tea.", "--user", "t", "--model", str(q4), "--db",
        str(tmp_path / "cli.sqlite"), "--temperature", "0", "--max-tokens", "8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]

    # 6. verification fails loudly on the known silent failure: special tokens typed NORMAL
    _broken_tokenizer_is_caught(run, tmp_path)


def _broken_tokenizer_is_caught(run: Path, tmp_path: Path) -> None:
    import shutil

    from training.gguf_export import convert, locate_converter
    from training.verify import verify

    broken = tmp_path / "broken"
    shutil.copytree(run / "merged", broken)
    cfg_path = broken / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    del tok_cfg["added_tokens_decoder"]  # what transformers 5 writes for SentencePiece models
    cfg_path.write_text(json.dumps(tok_cfg))
    gguf = convert(locate_converter(), broken, tmp_path / "broken-bf16.gguf")
    report = verify(broken, gguf, {}, load_conversations(load_run_config("tiny-cpu").dataset)[:2])
    assert not report.ok and not report.tokenization_match
    assert any("typed NORMAL" in p for p in report.problems)


@pytest.mark.gpu
def test_unsloth_backend_on_a_gpu(tmp_path: Path) -> None:
    """The notebook's path (4-bit QLoRA through Unsloth) for a few steps; needs CUDA + unsloth."""
    from training.backend_unsloth import cuda_available, unsloth_installed

    if not (cuda_available() and unsloth_installed()):
        pytest.skip("needs a CUDA GPU and the gpu extra (unsloth)")
    from dataclasses import replace

    from training.train import train

    cfg = load_run_config("tiny-cpu")
    cfg = replace(cfg, model=replace(cfg.model, backend="unsloth", load_in_4bit=True))
    result = train(
        replace(cfg, training=replace(cfg.training, max_steps=4, save_steps=0)), tmp_path
    )
    assert result.backend == "unsloth" and result.steps == 4
    assert result.train_loss is not None and result.train_loss == result.train_loss
    assert (result.adapter / "adapter_model.safetensors").is_file()
