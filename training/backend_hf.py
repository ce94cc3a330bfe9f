"""The transformers + peft + trl back end: the CPU path, and a GPU fallback without Unsloth.

Loss is on assistant replies only through trl's ``assistant_only_loss``, fed by our training
template's ``{% generation %}`` markers (see ``training.templates``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from training.config import RunConfig
from training.data import Split
from training.templates import TemplatePair

log = logging.getLogger("finechat.training")


def load_tokenizer(base: str, pair: TemplatePair, revision: str = "") -> Any:
    """The base tokenizer with the *training* template set and a pad token.

    A GGUF base gets the tokenizer rebuilt from the GGUF (see :mod:`training.gguf_base`).
    """
    if base.endswith(".gguf"):
        from training.gguf_base import build_tokenizer

        tok = build_tokenizer(Path(base))
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base, revision=revision or None)
    tok.chat_template = pair.training
    if pair.end_of_turn and pair.end_of_turn in tok.get_vocab():
        tok.eos_token = pair.end_of_turn
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def sft_config(cfg: RunConfig, out: Path, *, has_eval: bool, cuda: bool, bf16: bool) -> Any:
    from trl import SFTConfig

    t = cfg.training
    eval_on = has_eval and t.eval_steps > 0
    gpu_only: dict[str, Any] = {"gradient_checkpointing": True} if cuda else {}
    return SFTConfig(
        output_dir=str(out / "checkpoints"),
        max_length=cfg.model.max_seq_length,
        assistant_only_loss=t.train_on_responses_only,
        packing=False,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        weight_decay=t.weight_decay,
        optim=t.optimizer,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=t.eval_steps if eval_on else None,
        eval_on_start=eval_on,  # the base model's validation loss: where the curve starts
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        report_to=[] if t.report_to == "none" else [t.report_to],
        use_cpu=not cuda,
        bf16=cuda and bf16,
        fp16=cuda and not bf16,
        **gpu_only,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=False,  # the progress bar, also when stderr is not a terminal
        # LoRA under DDP: every trainable parameter is used in each step, so the costly search
        # for unused ones is switched off (the hf back end runs unchanged under accelerate).
        ddp_find_unused_parameters=False,
    )


def load_base_model(base: str, dtype: Any, **kwargs: Any) -> Any:
    """A hub id / local HF folder through ``from_pretrained``; a ``.gguf`` dequantized."""
    if base.endswith(".gguf"):
        from training.gguf_base import load_model

        return load_model(Path(base), dtype)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **kwargs)


def train_hf(
    cfg: RunConfig,
    data: Split,
    pair: TemplatePair,
    out: Path,
    resume: str | bool,
    *,
    tokenizer: Any = None,
) -> Any:
    """Train a LoRA adapter; returns the finished trainer (its state holds the log history)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    tok = (
        tokenizer
        if tokenizer is not None
        else load_tokenizer(cfg.model.base, pair, cfg.model.revision)
    )
    gguf = cfg.model.base.endswith(".gguf")
    model_kwargs: dict[str, Any] = {} if gguf else {"revision": cfg.model.revision or None}
    if cfg.model.load_in_4bit and cuda and gguf:
        log.warning("a GGUF base is dequantized to 16 bits on the GPU (no 4-bit reload of it)")
    elif cfg.model.load_in_4bit and cuda:
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
        )
    elif cfg.model.load_in_4bit:
        log.warning("load_in_4bit needs CUDA + bitsandbytes; training LoRA on 32-bit weights")
    dtype = (torch.bfloat16 if bf16 else torch.float16) if cuda else torch.float32
    model = load_base_model(cfg.model.base, dtype, **model_kwargs)
    if "quantization_config" in model_kwargs:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        use_rslora=cfg.lora.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    train_ds = Dataset.from_list([{"messages": m} for m in data.train])
    eval_ds = (
        Dataset.from_list([{"messages": m} for m in data.validation]) if data.validation else None
    )
    trainer = SFTTrainer(
        model=model,
        args=sft_config(cfg, out, has_eval=eval_ds is not None, cuda=cuda, bf16=bf16),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        peft_config=lora,
    )
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer
