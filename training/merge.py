"""Merge the LoRA adapter into a 16/32-bit copy of the base model (never into 4-bit weights).

Merging into the 4-bit base (what QLoRA trained against) rounds the merged weights to nf4 and
then dequantizes them again: a measurable quality loss for nothing. The base is reloaded in the
configured ``merge_dtype`` instead. The result is a plain HF folder that llama.cpp's converter
reads: weights, config, tokenizer, and the *inference* chat template.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from training.errors import DiskSpaceError, TrainingError

log = logging.getLogger("finechat.training")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def ensure_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise before writing ``needed`` bytes into ``folder`` if the disk cannot take them."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise DiskSpaceError(
            f"not enough disk space for {what}: needs about {needed / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB free on {probe}"
        )


def merge(
    base: str, adapter: Path, out: Path, *, dtype: str = "bfloat16", revision: str = ""
) -> Path:
    """Write the merged model to ``out`` and return it."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from training.backend_hf import load_base_model

    if not (adapter / "adapter_config.json").is_file():
        raise TrainingError(f"no LoRA adapter in {adapter} (run finechat train first)")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]
    extra: dict[str, Any] = {} if base.endswith(".gguf") else {"revision": revision or None}
    model: Any = load_base_model(base, torch_dtype, **extra)
    n_params = sum(p.numel() for p in model.parameters())
    # weights + a margin for tokenizer files and the safetensors index
    ensure_free_space(
        out, int(n_params * DTYPE_BYTES[dtype] * 1.05) + 50_000_000, "the merged model"
    )
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tok = AutoTokenizer.from_pretrained(str(adapter))
    out.mkdir(parents=True, exist_ok=True)
    if tok.eos_token_id is not None:
        model.generation_config.eos_token_id = tok.eos_token_id
        model.config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    _copy_spm_model(base, out, revision)
    _write_added_tokens_decoder(tok, out)
    log.info(
        "merged %s + %s → %s (%s, %.1fM parameters)", base, adapter, out, dtype, n_params / 1e6
    )
    return out


def _copy_spm_model(base: str, out: Path, revision: str) -> None:
    """SentencePiece bases: the converter needs ``tokenizer.model`` next to the weights."""
    local = Path(base) / "tokenizer.model"
    if local.is_file():
        shutil.copyfile(local, out / "tokenizer.model")
        return
    if Path(base).exists() or base.endswith(".gguf"):
        return
    try:
        from huggingface_hub import hf_hub_download

        cached = hf_hub_download(base, "tokenizer.model", revision=revision or None)
    except Exception:  # most hub bases (Llama-3 BPE) have none: nothing to copy
        return
    shutil.copyfile(cached, out / "tokenizer.model")


def _write_added_tokens_decoder(tok: Any, out: Path) -> None:
    """Keep special tokens special in llama.cpp's SPM path (it reads ``tokenizer_config.json``).

    transformers 5 stores added tokens only in ``tokenizer.json``; the converter's SentencePiece
    path then types ``<|eot_id|>`` as a normal token and llama.cpp spells it out byte by byte.
    """
    if not (out / "tokenizer.model").is_file():
        return
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    decoder = {
        str(i): {
            "content": t.content,
            "lstrip": t.lstrip,
            "rstrip": t.rstrip,
            "normalized": t.normalized,
            "single_word": t.single_word,
            "special": t.special,
        }
        for i, t in tok.added_tokens_decoder.items()
    }
    cfg["added_tokens_decoder"] = {**decoder, **cfg.get("added_tokens_decoder", {})}
    cfg.setdefault("add_prefix_space", False)
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
