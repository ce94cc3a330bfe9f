"""``finechat train``: config → data → back end → adapter, with everything recorded.

Output folder layout (stable; ``finechat export`` reads it)::

    OUT/run.json          resolved config, versions, git SHA, seeds, metrics
    OUT/data/             the exact train/validation rows used (jsonl)
    OUT/base/             only for base = "tiny:llama": the generated base model
    OUT/checkpoints/      trainer checkpoints (resume from the newest)
    OUT/adapter/          the final LoRA adapter + tokenizer (inference template)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.config import TINY_BASE, RunConfig
from training.data import Split, load_split, write_jsonl
from training.errors import TrainingError
from training.runinfo import write_run_info
from training.templates import get_templates

log = logging.getLogger("finechat.training")


@dataclass(frozen=True)
class TrainResult:
    out: Path
    adapter: Path
    backend: str
    steps: int
    train_loss: float | None
    eval_loss: float | None
    seconds: float
    resumed_from: str | None


def choose_backend(requested: str) -> str:
    from training.backend_unsloth import cuda_available, unsloth_installed

    if requested == "auto":
        return "unsloth" if cuda_available() and unsloth_installed() else "hf"
    if requested == "unsloth":
        from training.backend_unsloth import require_gpu

        require_gpu()
    return requested


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = [
        p for p in (out / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
    ]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]), default=None)


def prepare_base(cfg: RunConfig, out: Path, data: Split) -> RunConfig:
    """Build the tiny test model when asked for; otherwise the config is returned unchanged."""
    if cfg.model.base != TINY_BASE:
        return cfg
    from training.tiny import build_tiny_llama

    base = out / "base"
    if not (base / "config.json").is_file():
        texts = [m["content"] for conv in data.train + data.validation for m in conv]
        build_tiny_llama(base, texts, template=cfg.model.chat_template, seed=cfg.training.seed)
    return replace(cfg, model=replace(cfg.model, base=str(base)))


def train(cfg: RunConfig, out: Path, *, resume: str | bool | None = None) -> TrainResult:
    """Run one training job into ``out``; ``resume`` True = newest checkpoint, or a path."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    backend = choose_backend(cfg.model.backend)
    pair = get_templates(cfg.model.chat_template)
    data = load_split(cfg.dataset)
    write_jsonl(out / "data" / "train.jsonl", data.train)
    write_jsonl(out / "data" / "validation.jsonl", data.validation)
    cfg = prepare_base(cfg, out, data)

    resume = cfg.training.resume if resume is None else resume
    resume_from: str | None = None
    if resume is True:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise TrainingError(f"nothing to resume: no checkpoint in {out / 'checkpoints'}")
        resume_from = str(ckpt)
    elif isinstance(resume, str) and resume:
        if not Path(resume).is_dir():
            raise TrainingError(f"no checkpoint folder {resume}")
        resume_from = resume
    write_run_info(
        out,
        cfg,
        backend=backend,
        status="training",
        resumed_from=resume_from,
        rows={"train": len(data.train), "validation": len(data.validation)},
    )
    log.info("training %s with %s on %d rows", cfg.model.base, backend, len(data.train))

    trainer: Any
    if backend == "unsloth":
        from training.backend_unsloth import train_unsloth

        trainer = train_unsloth(cfg, data, pair, out, resume_from or False)
    else:
        from training.backend_hf import train_hf

        trainer = train_hf(cfg, data, pair, out, resume_from or False)

    adapter = out / "adapter"
    trainer.save_model(str(adapter))
    tok = trainer.processing_class
    tok.chat_template = pair.inference
    tok.save_pretrained(str(adapter))
    history: list[dict[str, Any]] = list(trainer.state.log_history)
    train_loss = _last(history, "loss")
    eval_loss = _last(history, "eval_loss")
    if train_loss is not None and not math.isfinite(train_loss):
        raise TrainingError(f"training loss is {train_loss}: lower the learning rate")
    result = TrainResult(
        out=out,
        adapter=adapter,
        backend=backend,
        steps=int(trainer.state.global_step),
        train_loss=train_loss,
        eval_loss=eval_loss,
        seconds=round(time.monotonic() - started, 1),
        resumed_from=resume_from,
    )
    write_run_info(
        out,
        cfg,
        status="trained",
        base_model=cfg.model.base,
        metrics={
            "steps": result.steps,
            "train_loss": train_loss,
            "eval_loss": eval_loss,
            "seconds": result.seconds,
            "log_history": history,
        },
    )
    return result


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    for entry in reversed(history):
        if key in entry:
            return float(entry[key])
    return None
