"""``finechat train``, ``finechat export`` and ``finechat export-chats``.

This module is imported when the parser is built, so it imports nothing heavy: torch and
transformers are loaded inside the commands only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from core.commands import Command, ParserKit

COMMANDS = ("train", "export", "export-chats")


def _quants(value: str) -> list[str]:
    return [q.strip().lower() for q in value.split(",") if q.strip()]


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quant", type=_quants, help="llama.cpp types, comma-separated (default q4_k_m)"
    )
    p.add_argument(
        "--outtype",
        choices=["bf16", "f16", "f32", "q8_0", "auto"],
        help="converter output (default bf16)",
    )
    p.add_argument(
        "--converter",
        help="a local llama.cpp checkout to convert with (default: the llama-cpp-python sdist)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the GGUF checks and the export gate (quantization damage)",
    )
    p.add_argument(
        "--push-to-hub", metavar="REPO", help="upload adapter, merged model and GGUF files"
    )
    p.add_argument("--private", action="store_true", help="create the hub repo private")


def add_parsers(sub: Any) -> None:
    """Register the training commands on ``finechat``'s subparsers."""
    p = sub.add_parser("train", help="fine-tune with LoRA/QLoRA from a run config")
    p.add_argument(
        "--config",
        required=True,
        help="run config: a TOML file or a shipped name (tiny-cpu, llama-3.2-1b-r8…)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder for this run")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint (or the one given)",
    )
    p.add_argument("--max-steps", type=int, help="override training.max_steps")
    p.add_argument(
        "--base", help="override model.base (hub id, folder, .gguf, owner/repo:file.gguf, bundled)"
    )
    p.add_argument("--data", help="override dataset.path")
    p.add_argument("--backend", choices=["auto", "unsloth", "hf"], help="override model.backend")
    p.add_argument("--export", action="store_true", help="also merge, export GGUF and verify")
    _export_options(p)
    p.add_argument("--log-level", default=None)

    p = sub.add_parser("export", help="merge a trained run, export GGUF (q4_k_m) and verify it")
    p.add_argument("run_dir", type=Path, help="the --out folder of finechat train")
    _export_options(p)
    p.add_argument("--log-level", default=None)

    p = sub.add_parser(
        "export-chats", help="export the bot's conversations as training rows (opt-in per platform)"
    )
    p.add_argument(
        "--db", default="finechat.sqlite", help="the memory database (default finechat.sqlite)"
    )
    p.add_argument(
        "--platform",
        required=True,
        help="platforms to export, comma-separated (telegram,discord,web,cli)",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="jsonl file to write ({messages: [...]} per line)"
    )
    p.add_argument(
        "--min-turns", type=int, default=2, help="skip shorter conversations (default 2)"
    )
    from training.chats import add_mode_options

    add_mode_options(p)  # --feedback, --preferences
    p.add_argument("--log-level", default=None)


def register(sub: Any, kit: ParserKit) -> list[Command]:
    """The ``finechat.commands`` entry point: train, export and export-chats read their own
    run configuration, so they run directly rather than with finechat's serving config."""
    add_parsers(sub)
    return [Command(name, direct=run) for name in COMMANDS]


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        return _train(args)
    if args.command == "export":
        return _export(args.run_dir, args)
    return _export_chats(args)


def _train(args: argparse.Namespace) -> int:
    from training.config import load_run_config, with_overrides
    from training.train import train

    cfg = load_run_config(args.config)
    base = args.base
    if base and Path(base).expanduser().exists():
        base = str(Path(base).expanduser().resolve())
    cfg = with_overrides(
        cfg,
        model={"base": base, "backend": args.backend},
        dataset={"path": str(Path(args.data).resolve()) if args.data else None},
        training={"max_steps": args.max_steps},
    )
    from training.train import is_main_process

    result = train(cfg, args.out, resume=args.resume, on_log=lambda line: print(line, flush=True))
    if not is_main_process():
        return 0  # under accelerate launch: rank 0 reports (and exports)
    print(
        f"trained {result.steps} steps with {result.backend} in {result.seconds:.0f}s: "
        f"loss {_f(result.first_loss)} → {_f(result.train_loss)}, "
        f"validation loss {_f(result.eval_loss)}; adapter in {result.adapter}",
        flush=True,
    )
    if result.loss_plot is not None:
        print(f"loss curve: {result.loss_plot}", flush=True)
    if (args.out / "heldout.jsonl").is_file():
        print(f"held-out prompts for finechat eval: {args.out / 'heldout.jsonl'}", flush=True)
    if args.export:
        return _export(args.out, args)
    return 0


def _export(run_dir: Path, args: argparse.Namespace) -> int:
    from training.export import export
    from training.hub import push_to_hub, write_model_card

    result = export(
        run_dir,
        quants=args.quant,
        outtype=args.outtype,
        converter=args.converter,
        verify=not args.no_verify,
        on_line=lambda line: print(line, file=sys.stderr, flush=True),
    )
    for path in [result.reference, *result.quantized.values()]:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
    if result.verify is not None:
        ppl = ", ".join(f"{k} {v:.3f}" for k, v in result.verify["perplexity"].items())
        parity = result.verify.get("tokenizer_parity") or {}
        checked = (
            f", {parity['strings']} plain strings tokenized alike"
            if parity and not parity.get("mismatches")
            else ""
        )
        print(
            "verified: tokenization, EOS, template, finite logits, greedy parity"
            f"{checked}; held-out perplexity (assistant tokens) {ppl}"
        )
        for q, g in (result.verify.get("gate") or {}).items():
            print(
                f"export gate {q}: perplexity ratio {g['perplexity_ratio']:.4f} "
                f"(max {g['max_perplexity_ratio']:g}), mean KL {g['mean_kl']:.4f} "
                f"(max {g['max_mean_kl']:g}): passed"
            )
    write_model_card(run_dir, args.push_to_hub or "")
    if args.push_to_hub:
        url = push_to_hub(run_dir, args.push_to_hub, private=args.private)
        print(f"pushed to {url}")
    print(f"serve it: finechat chat --model {result.primary()}")
    return 0


def _export_chats(args: argparse.Namespace) -> int:
    from training.chats import run_export

    return run_export(args)


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
