"""``finechat export-chats --feedback`` and ``--preferences``: feedback that trains.

The database is written through the real MemoryStore (as the bots and the web chat write it);
the files come from the real command; and TRL's own dataset code reads them: ``datasets``
loads the JSON lines, ``trl.data_utils.is_conversational`` recognises the layout and
``maybe_apply_chat_template`` (what TRL's SFT and DPO trainers run on every row) renders them
with a chat template. No training, nothing downloaded.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.memory import MemoryStore, Turn, Vote
from training.chats import export_chats, export_preferences
from training.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
TG = "telegram:-100123:4242"
WEB = "web:anon-" + "w" * 22


async def _fill(db: Path) -> None:
    store = await MemoryStore.open(db)
    try:

        async def say(
            key: str, role: str, text: str, parent: Turn | None, fb: int | None = None
        ) -> Turn:
            turn = await store.add_message(key, role, text, parent_id=parent.id if parent else None)  # type: ignore[arg-type]
            if fb is not None:
                assert await store.set_feedback(key, turn.id, fb)
            return turn

        q = await say(TG, "user", "What is a rainbow?", None)
        good = await say(TG, "assistant", "Sunlight split by raindrops.", q, 1)
        await say(TG, "assistant", "A kind of cloud.", q, -1)  # regenerated: a sibling
        await say(TG, "assistant", "Light and rain.", q)  # unrated sibling
        q2 = await say(TG, "user", "And the colours?", good)
        await say(TG, "assistant", "Red to violet.", q2, 1)
        # A 👍 after a 👎 answer in the same path is not used for --feedback.
        await store.reset(TG)
        q3 = await say(TG, "user", "Capital of Peru?", None)
        bad = await say(TG, "assistant", "Quito.", q3, -1)
        q4 = await say(TG, "user", "Are you sure?", bad)
        await say(TG, "assistant", "Sorry, Lima.", q4, 1)
        # Web: a 👍 answer and a vote; a discord conversation with no feedback at all.
        w = await say(WEB, "user", "Tip for cooking?", None)
        await say(WEB, "assistant", "Taste as you go.", w, 1)
        await store.add_message("discord:5:7", "user", "hi there")
        await store.add_message("discord:5:7", "assistant", "hello")
        for winner, a, b in (("a", "Use salt.", "Burn it."), ("b", "x", "Rest the meat."),
                             ("tie", "p", "q"), ("both_bad", "r", "s"), ("a", "same", "same")):  # fmt: skip
            await store.add_vote(
                Vote(WEB, "How to cook a steak?", "m", "m", winner, answer_a=a, answer_b=b)  # type: ignore[arg-type]
            )
        await store.add_vote(Vote("discord:1:2", "p", "m", "m", "a", answer_a="1", answer_b="2"))
    finally:
        await store.aclose()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "memory.sqlite"
    asyncio.run(_fill(path))
    return path


def _msgs(*pairs: str) -> list[dict[str, str]]:
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(pairs)]


def test_feedback_rows_end_only_at_liked_answers(db: Path) -> None:
    rows = export_chats(db, ["telegram"], feedback=True).rows
    assert rows == [
        (
            "telegram",
            _msgs(
                "What is a rainbow?",
                "Sunlight split by raindrops.",
                "And the colours?",
                "Red to violet.",
            ),
        ),
    ]  # fmt: skip  (the shorter liked path is inside the longer one; Lima follows a 👎)
    assert export_chats(db, ["web", "discord"], feedback=True).per_platform() == {"web": 1}
    # Without --feedback every answered path is exported as before.
    assert export_chats(db, ["telegram"]).per_platform() == {"telegram": 4}


def test_preferences_from_votes_and_sibling_feedback(db: Path) -> None:
    prefs = export_preferences(db, ["telegram", "web"])
    rows = [(p, pair.row()) for p, pair in prefs.rows]
    assert (prefs.from_feedback, prefs.from_votes) == (1, 2)
    assert rows == [
        ("telegram", {
            "prompt": [{"role": "user", "content": "What is a rainbow?"}],
            "chosen": [{"role": "assistant", "content": "Sunlight split by raindrops."}],
            "rejected": [{"role": "assistant", "content": "A kind of cloud."}],
        }),
        ("web", {
            "prompt": [{"role": "user", "content": "How to cook a steak?"}],
            "chosen": [{"role": "assistant", "content": "Use salt."}],
            "rejected": [{"role": "assistant", "content": "Burn it."}],
        }),
        ("web", {
            "prompt": [{"role": "user", "content": "How to cook a steak?"}],
            "chosen": [{"role": "assistant", "content": "Rest the meat."}],
            "rejected": [{"role": "assistant", "content": "x"}],
        }),
    ]  # fmt: skip
    assert export_preferences(db, ["discord"]).per_platform() == {"discord": 1}
    assert export_preferences(db, ["cli"]).rows == []
    with pytest.raises(DataError, match="name the platforms"):
        export_preferences(db, [" "])


def _tokenizer() -> Any:
    """A word-level tokenizer built in memory, with a chat template (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({"[UNK]": 0, "<eos>": 1}, unk_token="[UNK]"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<eos>", unk_token="[UNK]")
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tok


def _finechat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )


@pytest.mark.slow
def test_trl_reads_the_exported_files(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    data_utils = pytest.importorskip("trl.data_utils")

    liked, prefs = tmp_path / "liked.jsonl", tmp_path / "prefs.jsonl"
    base = ["export-chats", "--db", str(db), "--platform", "telegram,web"]
    out = _finechat(*base, "--feedback", "--out", str(liked))
    assert out.returncode == 0, out.stderr
    assert "wrote 2 conversations ending at a 👍 answer" in out.stdout
    out = _finechat(*base, "--preferences", "--out", str(prefs))
    assert out.returncode == 0, out.stderr
    assert "wrote 3 preference pairs" in out.stdout and "2 from arena votes" in out.stdout
    both = _finechat(*base, "--feedback", "--preferences", "--out", str(prefs))
    assert both.returncode == 2 and "not allowed with" in both.stderr
    for path in (liked, prefs):
        text = path.read_text(encoding="utf-8")
        assert "4242" not in text and "telegram:" not in text and "anon-" not in text

    tok = _tokenizer()
    cache = str(tmp_path / "hf-cache")
    sft = datasets.load_dataset("json", data_files=str(liked), split="train", cache_dir=cache)
    assert sft.num_rows == 2 and data_utils.is_conversational(sft[0])
    text = data_utils.maybe_apply_chat_template(sft[0], tok)["text"]
    assert text.endswith("<|assistant|>Red to violet.<eos>")

    dpo = datasets.load_dataset("json", data_files=str(prefs), split="train", cache_dir=cache)
    assert dpo.column_names == ["prompt", "chosen", "rejected"]
    assert all(data_utils.is_conversational(row) for row in dpo)
    rendered = dpo.map(data_utils.maybe_apply_chat_template, fn_kwargs={"processing_class": tok})
    first = rendered[0]
    assert first["prompt"] == "<|user|>What is a rainbow?<eos><|assistant|>"
    assert first["chosen"].startswith("Sunlight split by raindrops.")
    assert first["rejected"].startswith("A kind of cloud.")
    assert json.loads(prefs.read_text(encoding="utf-8").splitlines()[0])["chosen"][0]["role"] == (
        "assistant"
    )
