"""The ``finechat`` command line, run as a real subprocess (the acceptance commands)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.hf_hub import serve_fake_hub

FINECHAT = [sys.executable, "-m", "core.cli"]
ROOT = Path(__file__).resolve().parents[1]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FINECHAT_", "HF_"))}
    full_env.update({"FINECHAT_MODEL__N_CTX": "1024", "FINECHAT_GENERATION__MAX_TOKENS": "24"})
    full_env.update(env or {})
    return subprocess.run(
        [*FINECHAT, *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT
    )


def test_ask_then_history_acceptance(tmp_path: Path) -> None:
    db = str(tmp_path / "X.sqlite")
    r = run("ask", "hello", "--user", "a", "--db", db, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    reply = r.stdout.strip()
    assert reply
    h = run("history", "--user", "a", "--db", db)
    assert h.returncode == 0, h.stderr
    turns = [line for line in h.stdout.splitlines() if not line.startswith("    ")]
    assert len(turns) == 2  # a multi-line reply continues on indented lines
    assert turns[0].endswith("user: hello")
    assert "assistant: " + reply.splitlines()[0] in turns[1]
    b = run("history", "--user", "b", "--db", db)
    assert b.returncode == 0 and b.stdout.strip() == ""
    # reset keeps the rows but starts over
    assert run("reset", "--user", "a", "--db", db).returncode == 0
    assert run("history", "--user", "a", "--db", db).stdout.strip() == ""
    assert len(run("history", "--user", "a", "--all", "--db", db).stdout.strip().splitlines()) == 2


def test_malformed_config_is_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[model]\nn_ctxx = 5\n")
    r = run("history", "--user", "a", "--config", str(cfg), "--db", str(tmp_path / "d.sqlite"))
    assert r.returncode == 2
    assert "model.n_ctxx: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "model file not found"),
        (b"not a gguf at all", "not a GGUF"),
        (b"GGUF\x03\x00junk", "could not load"),
    ],
)
def test_bad_model_file_is_a_clear_error(tmp_path: Path, content: bytes | None, match: str) -> None:
    model = tmp_path / "m.gguf"
    if content is not None:
        model.write_bytes(content)
    r = run("ask", "hi", "--user", "a", "--model", str(model), "--db", str(tmp_path / "d.sqlite"))
    assert r.returncode == 1
    assert match in r.stderr
    assert "Traceback" not in r.stderr


def test_token_never_printed_on_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[web]\nport = 0\n")
    r = run(
        "history",
        "--user",
        "a",
        "--config",
        str(cfg),
        env={"TELEGRAM_BOT_TOKEN": "123:SUPERSECRET"},
    )
    assert r.returncode == 2
    assert "SUPERSECRET" not in r.stdout + r.stderr


def test_hub_model_downloads_once_then_works_offline(tmp_path: Path, model_path: Path) -> None:
    hf_home = tmp_path / "hf"
    db = str(tmp_path / "hub.sqlite")
    with serve_fake_hub({("acme/tiny-GGUF", "tiny.gguf"): model_path}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home)}
        r = run(
            "ask",
            "hello",
            "--user",
            "h",
            "--model",
            "acme/tiny-GGUF:tiny.gguf",
            "--db",
            db,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()
        assert any(method == "GET" for method, _ in hub.requests)
        missing = run(
            "ask", "hi", "--user", "h", "--model", "acme/nope:x.gguf", "--db", db, env=env
        )
        assert missing.returncode == 1
        assert "not found" in missing.stderr and "Traceback" not in missing.stderr
        nofile = run(
            "ask", "hi", "--user", "h", "--model", "acme/tiny-GGUF:other.gguf", "--db", db, env=env
        )
        assert nofile.returncode == 1 and "other.gguf" in nofile.stderr
    cached = list(hf_home.rglob("tiny.gguf"))
    assert cached, "the download must land in the hub cache"
    # server gone + offline mode: served from the cache
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    r = run(
        "ask", "again", "--user", "h", "--model", "acme/tiny-GGUF:tiny.gguf", "--db", db, env=env
    )
    assert r.returncode == 0, r.stderr
    # a model that was never downloaded, offline: clear error
    r = run("ask", "x", "--user", "h", "--model", "acme/other-GGUF:o.gguf", "--db", db, env=env)
    assert r.returncode == 1 and "local cache" in r.stderr


def test_serve_with_nothing_enabled_fails_clearly(tmp_path: Path) -> None:
    env = {
        "FINECHAT_WEB__ENABLED": "false",
        "FINECHAT_DISCORD__ENABLED": "false",
        "FINECHAT_TELEGRAM__ENABLED": "false",
    }
    r = run("serve", "--db", str(tmp_path / "s.sqlite"), env=env)
    assert r.returncode != 0
    assert "nothing to serve" in r.stderr
