"""Training rows: FineTome/ShareGPT or ``messages`` rows → validated chat messages, split.

Every row becomes ``{"messages": [{"role", "content"}, ...]}``. A row that cannot be used (an
unknown role, an empty turn, no assistant reply, a reply that is not last) stops loading with
its row number — Unsloth's ``standardize_sharegpt`` only inspects the first 10 rows, so a bad
row 50,000 fails much later with an unrelated error, or trains on garbage.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import DatasetSection
from training.errors import DataError

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class Split:
    train: list[Conversation]
    validation: list[Conversation]


def to_messages(
    row: Mapping[str, Any], *, row_number: int, fmt: str, role_map: Mapping[str, str]
) -> Conversation:
    """One dataset row → messages; raises :class:`DataError` naming the row."""
    where = f"row {row_number}"
    if fmt == "sharegpt":
        turns, role_key, text_key = row.get("conversations"), "from", "value"
    else:
        turns, role_key, text_key = row.get("messages"), "role", "content"
    if not isinstance(turns, list) or not turns:
        field = "conversations" if fmt == "sharegpt" else "messages"
        raise DataError(f"{where}: no {field!r} list")
    out: Conversation = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise DataError(f"{where}, turn {i}: not an object")
        raw_role, text = turn.get(role_key), turn.get(text_key)
        if not isinstance(raw_role, str) or raw_role not in role_map:
            known = ", ".join(sorted(role_map))
            raise DataError(f"{where}, turn {i}: unknown role {raw_role!r} (known: {known})")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}, turn {i}: empty {raw_role} turn")
        out.append({"role": role_map[raw_role], "content": text})
    roles = [m["role"] for m in out]
    if "system" in roles[1:]:
        raise DataError(f"{where}: a system turn may only come first")
    if "assistant" not in roles:
        raise DataError(f"{where}: no assistant turn to learn from")
    return out


def read_rows(path: str, *, split: str = "train") -> Iterable[Mapping[str, Any]]:
    """Rows from a local json/jsonl/parquet file, or from a hub dataset id (via ``datasets``)."""
    p = Path(path)
    if p.suffix == ".jsonl":
        return _jsonl(p)
    if p.suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {p.name}: {exc}") from None
        if not isinstance(data, list):
            raise DataError(f"{p.name}: expected a JSON list of rows")
        return data
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows: list[Mapping[str, Any]] = pq.read_table(p).to_pylist()
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {p.name}: {exc}") from None
        return rows
    if p.exists():
        raise DataError(f"{p.name}: unsupported file type (json, jsonl or parquet)")
    from datasets import load_dataset

    try:
        ds = load_dataset(path, split=split)
    except Exception as exc:  # offline, unknown id, gated: the library raises many kinds
        raise DataError(f"cannot load dataset {path!r}: {type(exc).__name__}: {exc}") from None
    return ds  # type: ignore[no-any-return]


def _jsonl(p: Path) -> Iterable[Mapping[str, Any]]:
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {p.name}: {exc}") from None
    rows: list[Mapping[str, Any]] = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{p.name} line {n + 1}: invalid JSON ({exc})") from None
        rows.append(row)
    return rows


def load_conversations(section: DatasetSection) -> list[Conversation]:
    out: list[Conversation] = []
    for n, row in enumerate(read_rows(section.path, split=section.split)):
        if section.max_samples and len(out) >= section.max_samples:
            break
        out.append(to_messages(row, row_number=n, fmt=section.format, role_map=section.role_map))
    if not out:
        raise DataError(f"{section.path}: no rows")
    return out


def split(conversations: list[Conversation], fraction: float, seed: int) -> Split:
    """A seeded shuffle, then the first ``fraction`` (at least one row if > 0) is validation."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_val = 0 if fraction <= 0 else max(1, round(len(order) * fraction))
    if n_val >= len(order):
        raise DataError(f"validation_fraction {fraction} leaves no training rows")
    val = [conversations[i] for i in order[:n_val]]
    train = [conversations[i] for i in order[n_val:]]
    return Split(train, val)


def load_split(section: DatasetSection) -> Split:
    return split(load_conversations(section), section.validation_fraction, section.seed)


def write_jsonl(path: Path, conversations: Iterable[Conversation]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for conv in conversations:
            f.write(json.dumps({"messages": conv}, ensure_ascii=False) + "\n")
            n += 1
    return n
