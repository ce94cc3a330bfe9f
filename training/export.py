"""``finechat export RUN_DIR``: merge → GGUF (bf16) → quantize → verify → manifest.

Adds to the run folder::

    RUN/merged/                      the merged HF model (16/32-bit) with the inference template
    RUN/gguf/NAME-BF16.gguf          the converter's output (the reference for verification)
    RUN/gguf/NAME-Q4_K_M.gguf        one file per requested quantization
    RUN/verify.json, RUN/manifest.json (sha256, size, quant type of each file)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.data import Conversation
from training.errors import TrainingError, VerificationError
from training.gguf_export import convert, locate_converter, quantize
from training.merge import merge
from training.runinfo import read_run_info
from training.verify import DEFAULT_MAX_MEAN_KL, DEFAULT_MAX_PERPLEXITY_RATIO

log = logging.getLogger("finechat.training")


@dataclass
class ExportResult:
    run_dir: Path
    reference: Path
    quantized: dict[str, Path]
    manifest: Path
    verify: dict[str, Any] | None
    seconds: dict[str, float] = field(default_factory=dict)

    def primary(self) -> Path:
        """The file to serve: the first quantization (q4_k_m by default)."""
        return next(iter(self.quantized.values()), self.reference)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _held_out(run_dir: Path, limit: int = 16) -> list[Conversation]:
    for name in ("validation.jsonl", "train.jsonl"):
        path = run_dir / "data" / name
        if path.is_file():
            rows = [json.loads(line)["messages"] for line in path.read_text().splitlines() if line]
            if rows:
                return rows[:limit]
    return []


def export(
    run_dir: Path,
    *,
    quants: list[str] | None = None,
    outtype: str | None = None,
    converter: str | None = None,
    verify: bool = True,
    on_line: Callable[[str], None] | None = None,
) -> ExportResult:
    info = read_run_info(run_dir)
    if not info:
        raise TrainingError(f"{run_dir} is not a finechat training run (no run.json)")
    cfg = info.get("config", {})
    export_cfg = cfg.get("export", {})
    name = str(cfg.get("name") or run_dir.name)
    quants = quants or list(export_cfg.get("quant") or ["q4_k_m"])
    outtype = outtype or str(export_cfg.get("outtype") or "bf16")
    base = str(info.get("base_model") or cfg.get("model", {}).get("base", ""))
    timings: dict[str, float] = {}

    merged = run_dir / "merged"
    t = time.monotonic()
    if not (merged / "config.json").is_file():
        merge(
            base,
            run_dir / "adapter",
            merged,
            dtype=str(export_cfg.get("merge_dtype") or "bfloat16"),
            revision=str(cfg.get("model", {}).get("revision") or ""),
        )
    timings["merge"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    conv = locate_converter(converter or export_cfg.get("converter") or None)
    gguf_dir = run_dir / "gguf"
    reference = convert(
        conv, merged, gguf_dir / f"{name}-{outtype.upper()}.gguf", outtype=outtype, on_line=on_line
    )
    templates: dict[str, str] = info.get("templates") or {}
    if base.endswith(".gguf") and Path(base).is_file():
        # The fine-tuned GGUF tokenizes exactly like the GGUF it came from.
        from training.gguf_meta import adopt_tokenizer

        adopt_tokenizer(
            Path(base),
            reference,
            chat_template=templates.get("inference") or None,
            eos_token=templates.get("end_of_turn") or None,
        )
    timings["convert"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    quantized: dict[str, Path] = {}
    for q in quants:
        quantized[q] = quantize(reference, gguf_dir / f"{name}-{q.upper()}.gguf", q)
    timings["quantize"] = round(time.monotonic() - t, 1)

    report: dict[str, Any] | None = None
    if verify:
        from training.verify import verify as run_verify

        t = time.monotonic()
        rep = run_verify(
            merged,
            reference,
            quantized,
            _held_out(run_dir),
            training_template=templates.get("training") or None,
            expected_template=templates.get("inference") or None,
            max_perplexity_ratio=float(
                export_cfg.get("max_perplexity_ratio") or DEFAULT_MAX_PERPLEXITY_RATIO
            ),
            max_mean_kl=float(export_cfg.get("max_mean_kl") or DEFAULT_MAX_MEAN_KL),
            # a tokenizer rebuilt from a GGUF must match llama.cpp exactly; a hub/folder
            # base's converter output is checked on the chat template (below) and recorded
            parity_required=base.endswith(".gguf"),
        )
        report = rep.to_dict()
        (run_dir / "verify.json").write_text(json.dumps(report, indent=2) + "\n")
        timings["verify"] = round(time.monotonic() - t, 1)
        if not rep.ok:
            raise VerificationError("export verification failed: " + "; ".join(rep.problems))

    manifest = run_dir / "manifest.json"
    files = []
    for kind, path in [(outtype, reference), *quantized.items()]:
        files.append(
            {
                "file": str(path.relative_to(run_dir)),
                "quant": kind,
                "size": path.stat().st_size,
                "sha256": sha256(path),
            }
        )
    manifest.write_text(
        json.dumps(
            {
                "name": name,
                "base_model": base,
                "converter": conv.origin,
                "files": files,
                "verified": report is not None and bool(report.get("ok")),
                "perplexity": (report or {}).get("perplexity"),
                "gate": (report or {}).get("gate"),
                "seconds": timings,
            },
            indent=2,
        )
        + "\n"
    )
    return ExportResult(run_dir, reference, quantized, manifest, report, timings)
