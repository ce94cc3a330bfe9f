"""``finechat eval`` as a real subprocess: the quick report on the bundled model, bad input."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.model_source import bundled_model_path

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINECHAT_", "HF_"))}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "core.cli", "eval", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def _votes_db(path: Path, model: str) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE votes (id INTEGER PRIMARY KEY, model_a, model_b, prompt, winner)")
    con.executemany(
        "INSERT INTO votes (model_a, model_b, prompt, winner) VALUES (?, ?, ?, ?)",
        [(model, "other", "q1", "a"), (model, "other", "q2", "tie"), ("other", model, "q3", "a")],
    )
    con.commit()
    con.close()


def _finite_numbers(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _finite_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _finite_numbers(v)]
    return []


@pytest.mark.slow
def test_quick_report_on_the_bundled_model_at_two_temperatures(tmp_path: Path) -> None:
    out = tmp_path / "report"
    db = tmp_path / "arena.sqlite"
    _votes_db(db, "smollm2")
    # one model at two temperatures: judging needs an explicit --judge, here the model itself
    r = run("--quick", "--out", str(out), "--db", str(db), "--no-progress", "--judge", "bundled")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert (
        "judge: the judge (SmolLM2-135M-Instruct.Q4_1.gguf) is also one of the models" in r.stdout
    )
    assert f"report: {out / 'report.md'}" in r.stdout
    assert "win rate" in r.stdout and "arena: 3 votes" in r.stdout

    md = (out / "report.md").read_text()
    for heading in (
        "## Models",
        "## Latency",
        "### Answers",
        "### Held-out perplexity",
        "### Pairwise preference (judge)",
        "### Arena votes",
        "## Plots",
        "## Reproducibility",
    ):
        assert heading in md, heading
    assert "T=0 " in md and "T=0.8" in md
    assert "| smollm2 | 1 | 1 | 1 |" in md  # the votes table
    for png in ("latency_vs_quality.png", "per_prompt_wins.png"):
        assert f"]({png})" in md
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        from PIL import Image

        with Image.open(out / png) as im:
            im.verify()
            assert im.size[0] >= 600 and im.size[1] >= 200

    res = json.loads((out / "results.json").read_text())
    assert all(math.isfinite(x) for x in _finite_numbers(res))
    model = bundled_model_path()
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert res["settings"]["seed"] == 1234
    assert res["environment"]["packages"]["llama_cpp_python"] != "not installed"
    assert len(res["prompts"]["items"]) == 4
    cold, warm = res["variants"]
    assert (cold["sampling"]["temperature"], warm["sampling"]["temperature"]) == (0.0, 0.8)
    for v in (cold, warm):
        assert v["model"]["sha256"] == sha
        assert v["model"]["size_bytes"] == model.stat().st_size
        assert len(v["trials"]) == 2  # rounds
        for key in ("load_s", "ttft_s", "prefill_tps", "decode_tps", "peak_rss_mib"):
            summary = v["latency"][key]
            assert summary["n"] > 0 and summary["median"] > 0, key
        assert (
            v["latency"]["peak_rss_mib"]["median"] > v["latency"]["rss_before_load_mib"]["median"]
        )
        assert 1 < v["perplexity"] < 1000
        assert len(v["answers"]) == 4 and all(a.strip() for a in v["answers"])
    assert cold["deterministic_across_rounds"] is True  # greedy + fixed seed
    assert cold["answers"] != warm["answers"]  # the temperature really was applied
    (pair,) = res["pairwise"]
    assert pair["wins_first"] + pair["wins_second"] + pair["ties"] == 4
    assert res["judge"]["is_contestant"] is True and "may favour" in res["judge_note"]
    assert 0 < pair["mean_letter_mass"] <= 1
    assert all(0 < it[k]["mass"] <= 1 for it in pair["items"] for k in ("forward", "swapped"))
    lo, hi = pair["ci95"]
    assert 0 <= lo <= pair["win_rate_first"] <= hi <= 1
    assert len(pair["items"]) == 4
    (ppl,) = res["perplexity"]
    assert ppl["sanity"] and all(s["greedy_ppl"] < s["shuffled_ppl"] for s in ppl["sanity"])
    assert res["arena_votes"]["total"] == 3


def test_bad_prompt_file_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": [{"from": "human", "value": "hi"}]}\n{oops\n')
    r = run("--quick", "--prompts", str(bad), "--out", str(tmp_path / "o"), timeout=60)
    assert r.returncode == 1
    assert (
        r.stderr.strip()
        == "error: bad.jsonl line 2: not valid JSON (Expecting property name enclosed in double quotes)"
    )
    assert not (tmp_path / "o").exists()


def test_bad_options_are_configuration_errors(tmp_path: Path) -> None:
    r = run("--quick", "--rounds", "0", "--out", str(tmp_path / "o"), timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --rounds must be at least 1 (got 0)"
    r = run("--model", str(tmp_path / "nope.gguf"), timeout=60)
    assert r.returncode == 1 and "model file not found" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_quick_report_bundled_against_the_tiny_exported_model(tmp_path: Path) -> None:
    """The training pipeline's own output (tiny-cpu, trained and exported here) under eval."""
    for module in ("torch", "transformers", "sentencepiece", "peft", "trl"):
        pytest.importorskip(module)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINECHAT_", "HF_"))}
    env["HF_HUB_OFFLINE"] = "1"
    for argv in (
        ["train", "--config", "tiny-cpu", "--out", str(run_dir)],
        ["export", str(run_dir), "--no-verify"],
    ):
        step = subprocess.run(
            [sys.executable, "-m", "core.cli", *argv],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=ROOT,
        )
        assert step.returncode == 0, step.stderr[-2000:]
    (tiny,) = sorted((run_dir / "gguf").glob("*Q4_K_M.gguf"))

    out = tmp_path / "report"
    r = run(
        "--quick", "--model", str(tiny), "--model", "bundled", "--base", "bundled",
        "--temperature", "0", "--rounds", "1", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert all(math.isfinite(x) for x in _finite_numbers(res))
    trained, small, control = res["variants"]
    # entries keep the order of the --model flags; the --base control row comes last
    assert [v["role"] for v in res["variants"]] == ["model", "model", "control"]
    assert trained["model"]["path"] == str(tiny) and control["name"].endswith("(base)")
    assert [(m["path"], m["role"]) for m in res["models"]] == [
        (str(tiny), "model"),
        (small["model"]["path"], "model"),
        (control["model"]["path"], "control"),
    ]
    assert res["models"][0]["sha256"] == hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert [p["sha256"] for p in res["perplexity"]] == [m["sha256"] for m in res["models"][:2]]
    assert "[control]" in r.stdout and "(base)" in (out / "report.md").read_text()
    # No default judge: it would have been one of the models compared.
    assert res["judge"] is None and res["pairwise"] == []
    assert "never picks a model under test as its own judge" in res["judge_note"]
    assert trained["model"]["size_bytes"] < small["model"]["size_bytes"]
    # A 2-layer random-init model is far faster and far worse than SmolLM2-135M: both
    # measures must see it, per token and per byte (their tokenizers differ).
    assert trained["latency"]["decode_tps"]["median"] > small["latency"]["decode_tps"]["median"]
    ppl = {p["sha256"]: p for p in res["perplexity"]}
    assert (
        ppl[trained["model"]["sha256"]]["bits_per_byte"]
        > ppl[small["model"]["sha256"]]["bits_per_byte"]
    )
    assert trained["perplexity"] > small["perplexity"] == control["perplexity"]
    for png in ("latency_vs_quality.png", "per_prompt_wins.png"):
        assert (out / png).read_bytes().startswith(PNG_MAGIC)


@pytest.mark.slow
def test_a_conversation_longer_than_the_context_is_reported_not_fatal(tmp_path: Path) -> None:
    long = "Please summarise this. " + "The quick brown fox jumps over the lazy dog. " * 80
    rows = [
        {"id": "long", "conversations": [{"from": "human", "value": long}, {"from": "gpt", "value": "A fox."}]},
        {"id": "short", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi!"}]},
    ]  # fmt: skip
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    r = run(
        "--quick", "--prompts", str(prompts), "--n-ctx", "256", "--rounds", "1",
        "--max-tokens", "8", "--out", str(out), "--no-progress", "--judge", "bundled",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    (ppl,) = res["perplexity"]
    assert ppl["skipped_prompts"] == ["long"] and list(ppl["per_prompt"]) == ["short"]
    for v in res["variants"]:
        assert v["answers"][0] == "" and v["answers"][1]
    (pair,) = res["pairwise"]
    assert [i["truncated"] for i in pair["items"]] == [True, False]
    md = (out / "report.md").read_text()
    assert "| 0 (+1 skipped) |" in md
    assert "| 0/2 | 1/2 | 1/2 |" in md  # answers: stopped, hit max_tokens, empty
