"""Configuration: TOML + environment, validated with errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.config import Config, ConfigError, load_config, with_overrides


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "finechat.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, env={})
    assert cfg == dataclasses.replace(Config(), discord=cfg.discord, telegram=cfg.telegram)
    assert not cfg.discord.token and not cfg.telegram.token


def test_file_and_env_overrides(tmp_path: Path) -> None:
    p = _write(tmp_path, "[model]\nn_ctx = 2048\n[generation]\ntemperature = 0.2\n")
    cfg = load_config(p, env={"FINECHAT_GENERATION__MAX_TOKENS": "64", "FINECHAT_DB": "x.db"})
    assert cfg.model.n_ctx == 2048
    assert cfg.generation.temperature == 0.2
    assert cfg.generation.max_tokens == 64
    assert cfg.database.path == "x.db"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[model]\nn_ctxx = 1\n", "model.n_ctxx: unknown key"),
        ("[modle]\n", "modle: unknown section"),
        ("[model]\nn_ctx = 'big'\n", "model.n_ctx: expected an integer"),
        ("[generation]\ntemperature = 9\n", "generation.temperature"),
        ("[web]\nport = 70000\n", "web.port"),
        ("[model\n", "invalid TOML"),
        ("model = 3\n", "model: must be a table"),
        ("[telegram]\ntoken = 'abc'\n", "TELEGRAM_BOT_TOKEN"),
        ("[model]\nrepo = 'a/b'\n", "model.file"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text), env={})


def test_binary_config_file(tmp_path: Path) -> None:
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p, env={})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "nope.toml", env={})


def test_bad_env_override_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="model.n_threads"):
        load_config(None, env={"FINECHAT_MODEL__N_THREADS": "many"})
    with pytest.raises(ConfigError, match="FINECHAT_NOPE__X"):
        load_config(None, env={"FINECHAT_NOPE__X": "1"})


def test_tokens_come_from_env_or_file_and_never_show(tmp_path: Path) -> None:
    secret_file = tmp_path / "tg.token"
    secret_file.write_text("123:file-secret\n")
    p = _write(tmp_path, f'[telegram]\ntoken_file = "{secret_file}"\n')
    cfg = load_config(p, env={"DISCORD_BOT_TOKEN": "env-secret"})
    assert cfg.telegram.token.reveal() == "123:file-secret"
    assert cfg.discord.token.reveal() == "env-secret"
    shown = repr(cfg) + str(cfg)
    assert "file-secret" not in shown and "env-secret" not in shown


def test_unreadable_token_file(tmp_path: Path) -> None:
    p = _write(tmp_path, f'[discord]\ntoken_file = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match="discord.token_file"):
        load_config(p, env={})


def test_cli_overrides_are_validated() -> None:
    cfg = load_config(None, env={})
    with pytest.raises(ConfigError, match="generation.max_tokens"):
        with_overrides(cfg, generation={"max_tokens": 10**6})
    assert with_overrides(cfg, generation={"seed": 3, "top_p": None}).generation.seed == 3
