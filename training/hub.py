"""Model card for a run folder, and ``--push-to-hub``: adapter, merged model and GGUF files.

The card is written for every export (it documents the files next to it even if they are never
uploaded): base model, data, the resolved config, loss and perplexity, file hashes, and how to
serve the GGUF with finechat. The token comes from huggingface_hub's usual places (``HF_TOKEN``,
``huggingface-cli login``) and never appears in messages.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from training.errors import TrainingError
from training.runinfo import read_run_info


def model_card(run_dir: Path, repo: str = "") -> str:
    info = read_run_info(run_dir)
    cfg: dict[str, Any] = info.get("config", {})
    manifest: dict[str, Any] = {}
    if (run_dir / "manifest.json").is_file():
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    metrics: dict[str, Any] = info.get("metrics", {})
    base = str(cfg.get("model", {}).get("base", ""))
    dataset = str(cfg.get("dataset", {}).get("path", ""))
    lora = cfg.get("lora", {})
    files = manifest.get("files", [])
    gguf = next((f["file"] for f in files if f["quant"] not in {"bf16", "f16", "f32"}), "")
    front = ["---", "library_name: peft", "tags: [finechat, gguf, lora, llama.cpp]"]
    if base and not Path(base).is_absolute():
        front.append(f"base_model: {base}")
    if dataset and not Path(dataset).is_absolute():
        front.append(f"datasets: [{dataset}]")
    front.append("---")
    lines = [
        *front,
        "",
        f"# {cfg.get('name', run_dir.name)}",
        "",
        f"LoRA fine-tune of `{base}` on `{dataset}` made with finechat "
        f"(r={lora.get('r')}, alpha={lora.get('alpha')}, backend {info.get('backend', '?')}), "
        "merged and exported to GGUF offline with the llama.cpp of llama-cpp-python "
        f"{info.get('versions', {}).get('llama_cpp_python', '?')}.",
        "",
        "## Evaluation",
        "",
        "| metric | value |",
        "|---|---|",
        f"| training steps | {metrics.get('steps', '?')} |",
        f"| final training loss | {_fmt(metrics.get('train_loss'))} |",
        f"| final validation loss | {_fmt(metrics.get('eval_loss'))} |",
    ]
    for name, value in (manifest.get("perplexity") or {}).items():
        lines.append(f"| held-out perplexity, assistant tokens ({name}) | {_fmt(value)} |")
    for name, g in (manifest.get("gate") or {}).items():
        lines.append(
            f"| {name} vs unquantized: perplexity ratio / mean KL | "
            f"{_fmt(g.get('perplexity_ratio'))} / {_fmt(g.get('mean_kl'))} |"
        )
    if files:
        lines += ["", "## Files", "", "| file | type | bytes | sha256 |", "|---|---|---|---|"]
        lines += [f"| {f['file']} | {f['quant']} | {f['size']} | `{f['sha256']}` |" for f in files]
    if gguf:
        target = f"{repo}:{Path(gguf).name}" if repo else gguf
        lines += [
            "",
            "## Use",
            "",
            "```bash",
            f'finechat ask "hello" --user me --model {target}',
            "```",
        ]
    lines += [
        "",
        "## Training configuration",
        "",
        "```json",
        json.dumps(cfg, indent=2),
        "```",
        "",
        f"git {info.get('git_sha', '?')} · "
        + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()),
        "",
    ]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "—")


def write_model_card(run_dir: Path, repo: str = "") -> Path:
    path = run_dir / "README.md"
    path.write_text(model_card(run_dir, repo), encoding="utf-8")
    return path


def push_to_hub(run_dir: Path, repo: str, *, private: bool = False) -> str:
    """Upload adapter/, merged/, gguf/*.gguf and the card; returns the repo URL."""
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN") or None
    write_model_card(run_dir, repo)
    api = HfApi(token=token)
    try:
        url = str(api.create_repo(repo, private=private, exist_ok=True))
        for folder in ("adapter", "merged"):
            if (run_dir / folder).is_dir():
                api.upload_folder(
                    repo_id=repo, folder_path=str(run_dir / folder), path_in_repo=folder
                )
        for gguf in sorted((run_dir / "gguf").glob("*.gguf")):
            api.upload_file(repo_id=repo, path_or_fileobj=str(gguf), path_in_repo=gguf.name)
        for name in ("README.md", "manifest.json", "run.json", "verify.json"):
            if (run_dir / name).is_file():
                api.upload_file(
                    repo_id=repo, path_or_fileobj=str(run_dir / name), path_in_repo=name
                )
    except Exception as exc:  # network, auth, quota: many kinds; one readable line
        message = f"{type(exc).__name__}: {exc}"
        if token:
            message = message.replace(token, "***")
        raise TrainingError(f"push to {repo} failed: {message.splitlines()[0]}") from None
    return url
