"""Training rows: FineTome/ShareGPT or ``messages`` rows → validated chat messages, split.

Every row becomes ``{"messages": [{"role", "content"}, ...]}``. Each row is read on its own
terms: a ``conversations`` list of ``{from, value}`` turns (FineTome, ShareGPT) or a
``messages`` list of ``{role, content}`` turns (what ``finechat export-chats`` writes), so a
file of either kind, or a mix, is training data as it is.

A row that cannot be used (an unknown role, an empty turn, no assistant reply, a conversation
that does not end with one) either stops loading with its row number (``on_bad_row = "fail"``,
the default) or is left out and counted under its reason (``"skip"``) — Unsloth's
``standardize_sharegpt`` only inspects the first 10 rows, so a bad row 50,000 fails much later
with an unrelated error, or trains on garbage. Skipping is never silent: the counts go to the
run log and ``run.json``, and more than ``max_bad_rows`` of them stops the run. Filters
(``min_score`` on FineTome's score column, ``max_tokens_per_row``) are counted the same way.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import DatasetSection
from training.errors import DataError

log = logging.getLogger("finechat.training")

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class Split:
    train: list[Conversation]
    validation: list[Conversation]


class BadRow(DataError):
    """One unusable row: ``reason`` is the short category it is counted under."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class DataReport:
    """What loading did with the rows: kept, skipped as bad (per reason), filtered (per reason)."""

    read: int = 0
    kept: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    first_bad: dict[str, int] = field(default_factory=dict)  # reason → first row number

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "bad": dict(self.bad),
            "filtered": dict(self.filtered),
            "first_bad_row": dict(self.first_bad),
        }

    def summary(self) -> str:
        parts = [f"{self.read} rows read, {self.kept} kept"]
        if self.bad:
            parts.append("skipped as bad: " + _counts(self.bad, self.first_bad))
        if self.filtered:
            parts.append("filtered out: " + _counts(self.filtered, {}))
        return "; ".join(parts)


def _counts(counter: Counter[str], first: Mapping[str, int]) -> str:
    return ", ".join(
        f"{n} {reason}" + (f" (first: row {first[reason]})" if reason in first else "")
        for reason, n in counter.most_common()
    )


def detect_format(row: Mapping[str, Any]) -> str:
    """``sharegpt`` for a ``conversations`` list, ``messages`` for a ``messages`` list."""
    if isinstance(row.get("conversations"), list):
        return "sharegpt"
    if isinstance(row.get("messages"), list):
        return "messages"
    return ""


def to_messages(
    row: Any, *, row_number: int, fmt: str, role_map: Mapping[str, str]
) -> Conversation:
    """One dataset row → messages; raises :class:`BadRow` naming the row and the reason."""
    where = f"row {row_number}"
    if not isinstance(row, Mapping):
        raise BadRow(f"{where}: not a JSON object", "not an object")
    if fmt == "auto":
        fmt = detect_format(row) or "auto"
    if fmt == "sharegpt":
        turns, role_key, text_key = row.get("conversations"), "from", "value"
    elif fmt == "messages":
        turns, role_key, text_key = row.get("messages"), "role", "content"
    else:
        raise BadRow(f"{where}: no 'conversations' or 'messages' list", "no turns")
    if not isinstance(turns, list) or not turns:
        name = "conversations" if fmt == "sharegpt" else "messages"
        raise BadRow(f"{where}: no {name!r} list", "no turns")
    out: Conversation = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise BadRow(f"{where}, turn {i}: not an object", "turn not an object")
        raw_role, text = turn.get(role_key), turn.get(text_key)
        if not isinstance(raw_role, str) or raw_role not in role_map:
            known = ", ".join(sorted(role_map))
            raise BadRow(
                f"{where}, turn {i}: unknown role {_clip(raw_role)} (known: {known})",
                "unknown role",
            )
        if not isinstance(text, str) or not text.strip():
            raise BadRow(f"{where}, turn {i}: empty {raw_role} turn", "empty turn")
        out.append({"role": role_map[raw_role], "content": text})
    roles = [m["role"] for m in out]
    if "system" in roles[1:]:
        raise BadRow(f"{where}: a system turn may only come first", "system turn not first")
    if "assistant" not in roles:
        raise BadRow(f"{where}: no assistant turn to learn from", "no assistant turn")
    if roles[-1] != "assistant":
        raise BadRow(
            f"{where}: ends with a {roles[-1]} turn, not an assistant reply",
            "does not end with a reply",
        )
    return out


def _clip(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_rows(path: str, *, split: str = "train") -> Iterable[Any]:
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


_INVALID_JSON = object()


def _jsonl(p: Path) -> Iterable[Any]:
    """Rows of a jsonl file; a line that is not JSON becomes a bad row, not an abort."""
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {p.name}: {exc}") from None
    rows: list[Any] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            rows.append(_INVALID_JSON)
    return rows


class RowPolicy:
    """Applies ``on_bad_row`` / ``max_bad_rows`` and keeps the per-reason counts."""

    def __init__(self, section: DatasetSection, report: DataReport | None = None) -> None:
        self.section = section
        self.report = report or DataReport()

    def bad(self, err: BadRow, row_number: int) -> None:
        if self.section.on_bad_row == "fail":
            raise DataError(
                f'{self.section_name}: {err} (set dataset.on_bad_row = "skip" to leave such '
                "rows out)"
            )
        self.report.bad[err.reason] += 1
        self.report.first_bad.setdefault(err.reason, row_number)
        total = sum(self.report.bad.values())
        if total > self.section.max_bad_rows:
            raise DataError(
                f"{self.section_name}: more than dataset.max_bad_rows = "
                f"{self.section.max_bad_rows} bad rows: "
                + _counts(self.report.bad, self.report.first_bad)
            )

    @property
    def section_name(self) -> str:
        return Path(self.section.path).name or self.section.path


def load_conversations(
    section: DatasetSection, report: DataReport | None = None
) -> list[Conversation]:
    policy = RowPolicy(section, report)
    rep = policy.report
    out: list[Conversation] = []
    for n, row in enumerate(read_rows(section.path, split=section.split)):
        if section.max_samples and len(out) >= section.max_samples:
            break
        rep.read += 1
        try:
            if row is _INVALID_JSON:
                raise BadRow(f"row {n}: not valid JSON", "invalid JSON")
            conv = to_messages(row, row_number=n, fmt=section.format, role_map=section.role_map)
        except BadRow as err:
            policy.bad(err, n)
            continue
        if section.min_score > 0:
            score = row.get("score")
            if isinstance(score, bool) or not isinstance(score, int | float):
                rep.filtered["no score (min_score is set)"] += 1
                continue
            if score < section.min_score:
                rep.filtered[f"score below {section.min_score:g}"] += 1
                continue
        out.append(conv)
    rep.kept = len(out)
    if not out:
        raise DataError(f"{section.path}: no usable rows ({rep.summary()})")
    return out


def filter_by_tokens(
    conversations: Sequence[Conversation],
    section: DatasetSection,
    report: DataReport,
    *,
    count_tokens: Callable[[Conversation], int],
    max_tokens: int,
    special_tokens: Sequence[str] = (),
) -> list[Conversation]:
    """Drop rows longer than ``max_tokens`` (counted, never cut) and rows whose text spells a
    special token (a bad row: ``<|im_start|>system`` typed by a chat user would teach the model
    a role switch, since the training tokenizer parses special tokens in the rendered text)."""
    policy = RowPolicy(section, report)
    specials = sorted({s for s in special_tokens if s}, key=len, reverse=True)
    # one pass per message, whatever the number of special tokens (Llama 3 has 256)
    pattern = re.compile("|".join(map(re.escape, specials))) if specials else None
    out: list[Conversation] = []
    for n, conv in enumerate(conversations):
        found = (
            next((m for msg in conv if (m := pattern.search(msg["content"]))), None)
            if pattern is not None
            else None
        )
        if found is not None:
            hit = found.group(0)
            policy.bad(BadRow(f"row {n}: a message contains {hit!r}", "special-token text"), n)
            continue
        if count_tokens(conv) > max_tokens:
            report.filtered[f"longer than {max_tokens} tokens"] += 1
            continue
        out.append(conv)
    report.kept = len(out)
    if not out:
        raise DataError(f"{section.path}: no rows left ({report.summary()})")
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


def write_heldout(path: Path, conversations: Iterable[Conversation]) -> int:
    """The validation rows as a ``finechat eval --prompts`` file (ids ``val-001``…)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for conv in conversations:
            n += 1
            row = {"id": f"val-{n:03d}", "messages": conv}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return n
