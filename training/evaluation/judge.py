"""Pairwise preference by a judge model, position-swapped, read from next-token probabilities.

The judge sees the conversation and two responses and is asked for one letter: ``A``, ``B`` or
``C`` (equally good). Instead of sampling a verdict, the probabilities of those three letters
at the first answer position are read off the logits — deterministic, no parsing, and a weak
judge's indecision shows up as probabilities near a third instead of a random letter.

Every pair is judged twice with the responses swapped. As in MT-Bench (Zheng et al. 2023), a
win needs both orders to agree; any disagreement (a judge that always answers "A") counts as a
tie, so order bias cancels instead of inflating one side. The win rate counts ties as half,
with a Wilson 95 % interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.template import Message
from training.evaluation.scoring import Scorer
from training.evaluation.stats import wilson_interval

Outcome = Literal["a", "b", "tie"]
LABELS = ("A", "B", "C")

JUDGE_SYSTEM = (
    "You are a strict, impartial judge of assistant answers. You compare two answers to the "
    "same conversation for helpfulness, correctness and clarity, ignoring their order and length."
)

MAX_CONTEXT_CHARS = 1500
MAX_ANSWER_CHARS = 1500


@dataclass(frozen=True)
class Verdict:
    """Probabilities of A, B and C (tie), renormalized over the three letters.

    ``mass`` is the raw probability the judge gave the three letters together, before that
    renormalization: a judge that answers letters puts most of its mass there, one that would
    rather say "Sure! Answer A…" or something else entirely puts little, and its verdict is
    then a renormalized whisper — recorded, so a reader can discount it.
    """

    a: float
    b: float
    tie: float
    mass: float = 1.0

    @property
    def label(self) -> str:
        best = max(self.a, self.b, self.tie)
        return "A" if best == self.a else ("B" if best == self.b else "C")


@dataclass(frozen=True)
class PairItem:
    """One prompt judged in both orders; ``first`` is shown as A in the first order."""

    prompt_id: str
    forward: Verdict  # first model as A
    swapped: Verdict  # first model as B
    outcome: Outcome
    soft: float  # first model's expected score (win 1, tie 0.5), averaged over both orders
    truncated: bool

    @property
    def consistent(self) -> bool:
        """Both orders named the same answer (or both said tie)."""
        flip = {"A": "B", "B": "A", "C": "C"}
        return flip[self.forward.label] == self.swapped.label


@dataclass(frozen=True)
class PairResult:
    first: str
    second: str
    judge: str
    items: tuple[PairItem, ...]

    @property
    def wins_first(self) -> int:
        return sum(1 for i in self.items if i.outcome == "a")

    @property
    def wins_second(self) -> int:
        return sum(1 for i in self.items if i.outcome == "b")

    @property
    def ties(self) -> int:
        return sum(1 for i in self.items if i.outcome == "tie")

    @property
    def win_rate(self) -> float:
        """The first model's win rate, ties counted as half."""
        n = len(self.items)
        return (self.wins_first + 0.5 * self.ties) / n if n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.wins_first + 0.5 * self.ties, len(self.items))

    @property
    def mean_soft(self) -> float:
        """The first model's expected score from the judge's probabilities (0.5 = no preference).

        Shows a lean that the hard, both-orders-must-agree verdicts round away to ties."""
        n = len(self.items)
        return sum(i.soft for i in self.items) / n if n else math.nan

    @property
    def mean_letter_mass(self) -> float:
        """The judge's raw probability of answering with a letter at all, averaged."""
        masses = [v.mass for i in self.items for v in (i.forward, i.swapped)]
        return sum(masses) / len(masses) if masses else math.nan

    @property
    def consistency(self) -> float:
        n = len(self.items)
        return sum(1 for i in self.items if i.consistent) / n if n else math.nan


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def judge_messages(
    context: Sequence[Message], answer_a: str, answer_b: str, *, limit: int = MAX_ANSWER_CHARS
) -> list[Message]:
    """The judge's prompt; all quoted text is a message body, so it stays un-special."""
    convo = "\n".join(f"{m.role.upper()}: {m.content}" for m in context if m.role != "system")
    body = (
        "Here is a conversation between a user and an assistant, followed by two candidate "
        "answers to the user's last message.\n\n"
        f"[CONVERSATION]\n{_clip(convo, min(MAX_CONTEXT_CHARS, limit))}\n\n"
        f"[ANSWER A]\n{_clip(answer_a, limit)}\n\n"
        f"[ANSWER B]\n{_clip(answer_b, limit)}\n\n"
        "Which answer is better? Reply with a single letter: A if answer A is better, "
        "B if answer B is better, C if they are equally good."
    )
    return [Message("system", JUDGE_SYSTEM), Message("user", body)]


def label_tokens(scorer: Scorer) -> dict[str, list[int]]:
    """First token of each letter, with and without a leading space (tokenizers differ)."""
    ids: dict[str, list[int]] = {}
    for label in LABELS:
        found: list[int] = []
        for text in (label, " " + label):
            toks = scorer.tokenize(text)
            if toks and toks[0] not in found:
                found.append(toks[0])
        ids[label] = found
    flat = [t for v in ids.values() for t in v]
    if len(flat) != len(set(flat)):  # pragma: no cover - no real tokenizer merges A/B/C
        raise ValueError("the judge's tokenizer does not tell A, B and C apart")
    return ids


def verdict(scorer: Scorer, messages: Sequence[Message], ids: dict[str, list[int]]) -> Verdict:
    logp = scorer.next_token_logprobs(scorer.encode_prompt(messages))
    mass = [float(np.exp(logp[ids[label]]).sum()) for label in LABELS]
    total = sum(mass)
    if total <= 0 or not math.isfinite(total):
        return Verdict(1 / 3, 1 / 3, 1 / 3, 0.0)
    return Verdict(mass[0] / total, mass[1] / total, mass[2] / total, total)


def _fitting_messages(
    scorer: Scorer, context: Sequence[Message], a: str, b: str
) -> tuple[list[Message], bool]:
    """Shorten the answers until the judge prompt fits the judge's context."""
    limit = MAX_ANSWER_CHARS
    truncated = len(a) > limit or len(b) > limit
    while True:
        msgs = judge_messages(context, a, b, limit=limit)
        if len(scorer.encode_prompt(msgs)) < scorer.n_ctx - 1 or limit <= 100:
            return msgs, truncated
        limit //= 2
        truncated = True


def judge_one(
    scorer: Scorer,
    prompt_id: str,
    context: Sequence[Message],
    first: str,
    second: str,
    ids: dict[str, list[int]],
) -> PairItem:
    fwd_msgs, t1 = _fitting_messages(scorer, context, first, second)
    swp_msgs, t2 = _fitting_messages(scorer, context, second, first)
    fwd = verdict(scorer, fwd_msgs, ids)
    swp = verdict(scorer, swp_msgs, ids)
    outcome: Outcome = "tie"
    if fwd.label == "A" and swp.label == "B":
        outcome = "a"
    elif fwd.label == "B" and swp.label == "A":
        outcome = "b"
    soft = 0.5 * ((fwd.a + 0.5 * fwd.tie) + (swp.b + 0.5 * swp.tie))
    return PairItem(prompt_id, fwd, swp, outcome, soft, t1 or t2)
