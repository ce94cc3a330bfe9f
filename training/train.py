"""``finechat train``: config → data → back end → adapter, with everything recorded.

Output folder layout (stable; ``finechat export`` reads it)::

    OUT/run.json          resolved config, versions, git SHA, seeds, data counts, metrics
    OUT/data/             the exact train/validation rows used (jsonl)
    OUT/heldout.jsonl     the validation rows as a ``finechat eval --prompts`` file
    OUT/loss.png          training (and validation) loss per step
    OUT/base/             only for base = "tiny:llama": the generated base model
    OUT/checkpoints/      trainer checkpoints (resume from the newest)
    OUT/adapter/          the final LoRA adapter + tokenizer (inference template)

Under ``accelerate launch`` (DDP, one process per GPU or CPU worker) every process runs this
same function; files are written by the main process only, and the others wait for it where
they need its output (the tiny base model).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.config import GGUF_TEMPLATE, TINY_BASE, RunConfig, is_gguf_base
from training.data import (
    Conversation,
    DataReport,
    Split,
    filter_by_tokens,
    load_conversations,
    split,
    write_heldout,
    write_jsonl,
)
from training.errors import TrainingError
from training.runinfo import write_run_info
from training.templates import TemplatePair, for_gguf_template, get_templates

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
    first_loss: float | None = None
    loss_plot: Path | None = None


def is_main_process() -> bool:
    """Rank 0 of a distributed launch, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def main_process_first() -> Iterator[None]:
    """Let rank 0 do a step (build, download) before the other ranks, which then reuse it."""
    if world_size() > 1:
        from accelerate import PartialState

        with PartialState().main_process_first():
            yield
    else:
        yield


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


def resolve_templates(cfg: RunConfig) -> TemplatePair:
    """The chat templates to train with; ``gguf`` = the base GGUF's own (and its twin)."""
    if cfg.model.chat_template == GGUF_TEMPLATE:
        from training.gguf_base import read_vocab, resolve_gguf

        return for_gguf_template(read_vocab(resolve_gguf(cfg.model.base)).chat_template)
    return get_templates(cfg.model.chat_template)


def prepare_base(cfg: RunConfig, out: Path, rows: list[Conversation]) -> RunConfig:
    """Build the tiny test model, or resolve a GGUF base to its local file."""
    if is_gguf_base(cfg.model.base):
        from training.gguf_base import resolve_gguf

        with main_process_first():  # a hub GGUF downloads once
            path = resolve_gguf(cfg.model.base)
        return replace(cfg, model=replace(cfg.model, base=str(path)))
    if cfg.model.base != TINY_BASE:
        return cfg
    from training.tiny import build_tiny_llama

    base = out / "base"
    with main_process_first():
        if not (base / "config.json").is_file():
            texts = [m["content"] for conv in rows for m in conv]
            build_tiny_llama(base, texts, template=cfg.model.chat_template, seed=cfg.training.seed)
    return replace(cfg, model=replace(cfg.model, base=str(base)))


def prepare_data(
    cfg: RunConfig, tokenizer: Any, pair: TemplatePair, rows: list[Conversation], report: DataReport
) -> Split:
    """Token-level filters (length, special-token text), then the seeded split."""
    limit = cfg.dataset.max_tokens_per_row or cfg.model.max_seq_length
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials = sorted(
        {
            t
            for t in (
                *pair.special_tokens,
                *getattr(tokenizer, "all_special_tokens", []),
                *(a.content for a in added.values() if getattr(a, "special", False)),
            )
            if t
        }
    )

    def count(conv: Conversation) -> int:
        ids = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)

    rows = filter_by_tokens(
        rows, cfg.dataset, report, count_tokens=count, max_tokens=limit, special_tokens=specials
    )
    return split(rows, cfg.dataset.validation_fraction, cfg.dataset.seed)


def train(
    cfg: RunConfig,
    out: Path,
    *,
    resume: str | bool | None = None,
    on_log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run one training job into ``out``; ``resume`` True = newest checkpoint, or a path."""
    started = time.monotonic()
    main = is_main_process()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    backend = choose_backend(cfg.model.backend)
    if backend == "unsloth" and is_gguf_base(cfg.model.base):
        if cfg.model.backend == "unsloth":
            raise TrainingError(
                "a GGUF base trains with backend 'hf' (Unsloth loads hub/folder models only)"
            )
        backend = "hf"
    pair = resolve_templates(cfg)
    report = DataReport()
    rows = load_conversations(cfg.dataset, report)
    cfg = prepare_base(cfg, out, rows)

    from training.backend_hf import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.base, pair, cfg.model.revision)
    data = prepare_data(cfg, tokenizer, pair, rows, report)
    summary = report.summary()
    log.info("data: %s", summary)
    if on_log is not None and main:
        on_log(f"data: {summary}")
    if main:
        write_jsonl(out / "data" / "train.jsonl", data.train)
        write_jsonl(out / "data" / "validation.jsonl", data.validation)
        if data.validation:
            write_heldout(out / "heldout.jsonl", data.validation)

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
    if main:
        write_run_info(
            out,
            cfg,
            backend=backend,
            status="training",
            resumed_from=resume_from,
            rows={"train": len(data.train), "validation": len(data.validation)},
            data=report.to_dict(),
            templates={
                "name": pair.name,
                "inference": pair.inference,
                "training": pair.training,
                "end_of_turn": pair.end_of_turn,
            },
            processes=world_size(),
        )
    log.info("training %s with %s on %d rows", cfg.model.base, backend, len(data.train))

    trainer: Any
    if backend == "unsloth":
        from training.backend_unsloth import train_unsloth

        trainer = train_unsloth(cfg, data, pair, out, resume_from or False)
    else:
        from training.backend_hf import train_hf

        trainer = train_hf(cfg, data, pair, out, resume_from or False, tokenizer=tokenizer)

    adapter = out / "adapter"
    trainer.save_model(str(adapter))  # the trainer writes on the main process only
    history: list[dict[str, Any]] = list(trainer.state.log_history)
    train_loss = _last(history, "loss")
    eval_loss = _last(history, "eval_loss")
    first_loss = next((float(e["loss"]) for e in history if "loss" in e), None)
    if train_loss is not None and not math.isfinite(train_loss):
        raise TrainingError(f"training loss is {train_loss}: lower the learning rate")
    plot: Path | None = None
    seconds = round(time.monotonic() - started, 1)
    if main:
        tok = trainer.processing_class
        tok.chat_template = pair.inference
        tok.save_pretrained(str(adapter))
        plot = plot_loss(history, out / "loss.png", title=cfg.name)
        write_run_info(
            out,
            cfg,
            status="trained",
            base_model=cfg.model.base,
            metrics={
                "steps": int(trainer.state.global_step),
                "first_loss": first_loss,
                "train_loss": train_loss,
                "eval_loss": eval_loss,
                "seconds": seconds,
                "log_history": history,
            },
        )
    return TrainResult(
        out=out,
        adapter=adapter,
        backend=backend,
        steps=int(trainer.state.global_step),
        train_loss=train_loss,
        eval_loss=eval_loss,
        seconds=seconds,
        resumed_from=resume_from,
        first_loss=first_loss,
        loss_plot=plot,
    )


def plot_loss(history: list[dict[str, Any]], path: Path, *, title: str = "") -> Path | None:
    """Training loss per step (and validation loss where it was measured) as a PNG."""
    steps = [(int(e["step"]), float(e["loss"])) for e in history if "loss" in e and "step" in e]
    evals = [
        (int(e["step"]), float(e["eval_loss"])) for e in history if "eval_loss" in e and "step" in e
    ]
    if not steps:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no loss.png (pip install matplotlib)")
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*steps, strict=True), label="training loss", linewidth=0.8, alpha=0.5)
    if len(steps) >= 10:  # small batches make per-step loss noisy: show the trend too
        k = max(3, len(steps) // 8)
        smooth = [
            (
                steps[i][0],
                sum(v for _, v in steps[max(0, i - k + 1) : i + 1]) / (i + 1 - max(0, i - k + 1)),
            )
            for i in range(len(steps))
        ]
        ax.plot(
            *zip(*smooth, strict=True), label=f"training loss, mean of {k} steps", linewidth=1.6
        )
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(f"{title} loss" if title else "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    for entry in reversed(history):
        if key in entry:
            return float(entry[key])
    return None
