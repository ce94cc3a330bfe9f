"""Votes from the web arena, read straight from the memory database when it has them.

The arena (``web/arena.py``, memory schema v2) stores one row per vote: the two contenders'
models and generation settings, the prompt and the winner (``a``, ``b``, ``tie`` or
``both_bad``). A contender is a model *with its settings*, since the arena can pit one model at
two temperatures against itself. "Both bad" counts as a tie, as on the arena's own leaderboard.
This reader opens the file read-only with plain ``sqlite3`` (no migration is ever run from
here) and tolerates naming variants (``choice`` for ``winner``, a winner given as a model
name), so a schema detail does not break evaluation. No table, no file: "no votes".
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from training.evaluation.stats import wilson_interval

TABLE_NAMES = ("votes", "arena_votes")
_A = ("model_a", "a", "left_model")
_B = ("model_b", "b", "right_model")
_WINNER = ("winner", "choice", "vote", "result")
_TIES = {"tie", "both_bad", "draw", "both", "equal", "none", "neither", "c"}


@dataclass(frozen=True)
class ModelVotes:
    model: str
    wins: int
    losses: int
    ties: int

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float:
        return (self.wins + 0.5 * self.ties) / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.wins + 0.5 * self.ties, self.n)


@dataclass(frozen=True)
class ArenaVotes:
    """``status`` says why there is nothing, when there is nothing."""

    source: str
    total: int
    models: tuple[ModelVotes, ...]
    status: str


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def contender(model: str, settings: object) -> str:
    """``model`` plus its settings as ``k=v`` (``{"temperature": 0.7}`` → ``model (temperature=0.7)``)."""
    try:
        data = json.loads(settings) if isinstance(settings, str) and settings else {}
    except json.JSONDecodeError:
        data = {}
    if not isinstance(data, dict) or not data:
        return model
    return f"{model} ({', '.join(f'{k}={v}' for k, v in sorted(data.items()))})"


def read_votes(db_path: str | Path | None) -> ArenaVotes:
    if not db_path or not Path(db_path).is_file():
        return ArenaVotes(str(db_path or ""), 0, (), "no votes (no arena database)")
    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as exc:
        return ArenaVotes(str(db_path), 0, (), f"no votes (cannot open the database: {exc})")
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        table = next((t for t in TABLE_NAMES if t in tables), None)
        if table is None:
            return ArenaVotes(str(db_path), 0, (), "no votes (the database has no votes table)")
        columns = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
        ca, cb, cw = _pick(columns, _A), _pick(columns, _B), _pick(columns, _WINNER)
        if not (ca and cb and cw):
            return ArenaVotes(
                str(db_path), 0, (), f"no votes (table {table} lacks model/winner columns)"
            )
        sa, sb = _pick(columns, ("settings_a",)), _pick(columns, ("settings_b",))
        settings = f'"{sa}", "{sb}"' if sa and sb else "NULL, NULL"
        rows = con.execute(f'SELECT "{ca}", "{cb}", "{cw}", {settings} FROM "{table}"').fetchall()
    except sqlite3.Error as exc:
        return ArenaVotes(str(db_path), 0, (), f"no votes (cannot read them: {exc})")
    finally:
        con.close()
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    counted = 0
    for model_a, model_b, w, set_a, set_b in rows:
        a, b = contender(str(model_a), set_a), contender(str(model_b), set_b)
        w = str(w).strip()
        if w.lower() in ("a", str(model_a).lower()) and w.lower() not in _TIES:
            tally[a][0] += 1
            tally[b][1] += 1
        elif w.lower() in ("b", str(model_b).lower()) and w.lower() not in _TIES:
            tally[b][0] += 1
            tally[a][1] += 1
        elif w.lower() in _TIES:
            tally[a][2] += 1
            tally[b][2] += 1
        else:
            continue  # a winner that names neither model: not a vote we can count
        counted += 1
    models = tuple(ModelVotes(m, *v) for m, v in sorted(tally.items()))
    status = f"{counted} votes" if counted else "no votes (the votes table is empty)"
    return ArenaVotes(str(db_path), counted, models, status)
