"""What a run folder records about itself: resolved config, package versions, git SHA, seeds.

A fine-tune that cannot be reproduced cannot be trusted or compared; so ``run.json`` is written
before training starts (and updated with metrics after), not reconstructed later.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from training.config import RunConfig

PACKAGES = (
    "finechat",
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "unsloth",
    "bitsandbytes",
    "llama_cpp_python",
    "gguf",
    "sentencepiece",
)


def package_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_sha() -> str:
    """The finechat checkout's commit (``+dirty`` with local changes), or ``unknown``."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def write_run_info(out: Path, cfg: RunConfig, **extra: Any) -> Path:
    """Write (or update) ``out/run.json``; ``extra`` keys are merged into what is there."""
    path = out / "run.json"
    info: dict[str, Any] = {}
    if path.is_file():
        info = json.loads(path.read_text(encoding="utf-8"))
    info.update(
        config=cfg.to_dict(),
        versions=package_versions(),
        git_sha=git_sha(),
        python=sys.version.split()[0],
        platform=platform.platform(),
        seeds={"data": cfg.dataset.seed, "training": cfg.training.seed},
        updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    info.update(extra)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_run_info(out: Path) -> dict[str, Any]:
    path = out / "run.json"
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
