"""The Unsloth back end (GPU only): the original notebook's 4-bit QLoRA, made reproducible.

``import unsloth`` raises without an accelerator and patches transformers/trl globally, so it is
imported only here, only after :func:`require_gpu` passed, and never at module import time.
Masking uses our training template's ``{% generation %}`` markers through trl's
``assistant_only_loss`` — the same mechanism as the hf back end, instead of Unsloth's
``train_on_responses_only`` string markers whose mismatches silently train on nothing
("all labels are -100") or on the wrong span.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from training.backend_hf import sft_config
from training.config import RunConfig
from training.data import Split
from training.errors import NoGPUError, TrainingError
from training.templates import TemplatePair


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def require_gpu() -> None:
    """Raise a clear error instead of Unsloth's ``NotImplementedError`` deep in an import."""
    if not cuda_available():
        raise NoGPUError(
            "backend 'unsloth' needs a CUDA/ROCm GPU and none is visible; "
            "use backend = 'hf' (runs on the CPU) or 'auto'"
        )
    if not unsloth_installed():
        raise TrainingError(
            "backend 'unsloth' needs the gpu extra: pip install 'finechat[train,gpu]'"
        )


def train_unsloth(
    cfg: RunConfig, data: Split, pair: TemplatePair, out: Path, resume: str | bool
) -> Any:
    require_gpu()
    # unsloth must be imported before transformers/trl are used: it patches them.
    import unsloth  # noqa: F401, I001
    import torch
    from datasets import Dataset
    from trl import SFTTrainer
    from unsloth import FastLanguageModel

    model, tok = FastLanguageModel.from_pretrained(
        model_name=cfg.model.base,
        max_seq_length=cfg.model.max_seq_length,
        dtype=None,
        load_in_4bit=cfg.model.load_in_4bit,
        revision=cfg.model.revision or None,
        use_exact_model_name=True,
        random_state=cfg.training.seed,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=cfg.training.seed,
        use_rslora=cfg.lora.use_rslora,
    )
    tok.chat_template = pair.training
    if pair.end_of_turn and pair.end_of_turn in tok.get_vocab():
        tok.eos_token = pair.end_of_turn
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    train_ds = Dataset.from_list([{"messages": m} for m in data.train])
    eval_ds = (
        Dataset.from_list([{"messages": m} for m in data.validation]) if data.validation else None
    )
    args = sft_config(
        cfg,
        out,
        has_eval=eval_ds is not None,
        cuda=True,
        bf16=bool(torch.cuda.is_bf16_supported()),
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok
    )
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer
