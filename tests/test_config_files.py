"""``finechat config init|check|docs``: generated from the schema, round-tripping, never leaking.

The commands run as a person runs them (the ``finechat`` entry point in a subprocess) where the
exit code and the streams matter; the generators are also checked against the schema itself, so
a key added to core/config.py without a description, or docs/configuration.md left behind,
fails here.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import Config, load_config
from core.config_files import effective_text, init_text, reference_markdown
from core.config_schema import Section, schema, toml_string, toml_value

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "configuration.md"
TG_TOKEN = "7123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
DC_TOKEN = "MTE5OTk5OTk5OTk5OTk5OTk5.GaBcDe.discord-secret-token-value"


def finechat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FINECHAT_",))}
    clean.pop("DISCORD_BOT_TOKEN", None)
    clean.pop("TELEGRAM_BOT_TOKEN", None)
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=ROOT,
        timeout=120,
    )


def _all_sections(sections: tuple[Section, ...]) -> list[Section]:
    """Every table, nested ones included (those under [models.NAME] are [model]'s again)."""
    out: list[Section] = []
    for s in sections:
        out.append(s)
        if not s.named:
            out.extend(_all_sections(s.tables))
    return out


def _walk(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            keys.add(name + ".")
            keys |= _walk(v, name + ".")
        else:
            keys.add(name)
    return keys


def test_every_section_and_key_is_documented_in_the_schema() -> None:
    missing = []
    for section in _all_sections(schema()):
        if not section.doc:
            missing.append(f"[{section.name}]")
        missing += [f"{section.name}.{k.name}" for k in section.keys if not k.doc]
    assert missing == [], "add a docstring after each of these fields in core/config.py"


def test_init_file_has_every_key_at_its_default_and_loads_to_the_defaults(tmp_path: Path) -> None:
    text = init_text()
    parsed = tomllib.loads(text)
    present = _walk(parsed)
    for section in _all_sections(schema()):
        if section.named:
            assert f"# [{section.name}." in text  # a commented example, not a live table
            continue
        assert section.name + "." in present, section.name
        for key in section.keys:
            if key.env_only:
                assert f"{section.name}.{key.name}" not in present
                assert f"# {key.name}: from the environment" in text
            else:
                assert f"{section.name}.{key.name}" in present
                assert parsed_value(parsed, section.path, key.name) == toml_roundtrip(key.default)
    path = tmp_path / "finechat.toml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path, env={}) == load_config(None, env={})
    # Each key comes with its description as a comment.
    assert "# Context of each conversation slot, in tokens.\nn_ctx = 4096" in text
    assert (
        "# Users the bot ignores, even when an allow list names them.\nblocked_user_ids = []"
        in text
    )


def test_the_commented_models_example_is_valid_once_uncommented(tmp_path: Path) -> None:
    lines = init_text().splitlines()
    start = lines.index("# [models.tiny]")
    example = []
    for line in lines[start:]:
        if not line.startswith("# ") or not line[2:]:
            break
        example.append(line[2:])
    path = tmp_path / "models.toml"
    path.write_text("\n".join(example) + "\n", encoding="utf-8")
    cfg = load_config(path, env={})
    assert cfg.models["tiny"].path == "models/my-finetune.Q4_K_M.gguf"


def parsed_value(parsed: dict[str, Any], path: tuple[str, ...], key: str) -> Any:
    table = parsed
    for part in path:
        table = table[part]
    return table[key]


def toml_roundtrip(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    """Per-person limits."""

    messages_per_minute: int = 20
    """Messages one person may send per minute."""


@dataclasses.dataclass(frozen=True)
class Extended(Config):
    """A configuration with a section another branch might add."""

    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)


def test_a_key_added_to_the_schema_shows_up_everywhere() -> None:
    assert "[limits]\n# Messages one person may send per minute.\nmessages_per_minute = 20" in (
        init_text(Extended)
    )
    doc = reference_markdown(Extended)
    assert "## `[limits]`" in doc and "`FINECHAT_LIMITS__MESSAGES_PER_MINUTE`" in doc


def test_docs_configuration_md_is_generated_from_the_schema() -> None:
    assert DOCS.is_file(), "run: finechat config docs > docs/configuration.md"
    assert DOCS.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/configuration.md is out of date; run: finechat config docs > docs/configuration.md"
    )


def test_config_init_writes_refuses_to_overwrite_and_prints_without_a_path(
    tmp_path: Path,
) -> None:
    out = finechat("config", "init")
    assert out.returncode == 0, out.stderr
    assert out.stdout == init_text()

    path = tmp_path / "finechat.toml"
    first = finechat("config", "init", str(path))
    assert first.returncode == 0, first.stderr
    assert path.read_text(encoding="utf-8") == init_text()

    path.write_text("# my edits\n", encoding="utf-8")
    again = finechat("config", "init", str(path))
    assert again.returncode != 0 and "--force" in again.stderr
    assert path.read_text(encoding="utf-8") == "# my edits\n"  # nothing lost
    forced = finechat("config", "init", str(path), "--force")
    assert forced.returncode == 0 and path.read_text(encoding="utf-8") == init_text()

    nowhere = finechat("config", "init", str(tmp_path / "no" / "such" / "dir.toml"))
    assert nowhere.returncode != 0 and "does not exist" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr


def test_init_then_check_round_trip_masks_secrets(tmp_path: Path) -> None:
    path = tmp_path / "finechat.toml"
    assert finechat("config", "init", str(path)).returncode == 0
    token_file = tmp_path / "discord.token"
    token_file.write_text(DC_TOKEN + "\n", encoding="utf-8")
    text = (
        path.read_text(encoding="utf-8")
        .replace("n_ctx = 4096", "n_ctx = 2048", 1)
        .replace('key_salt = ""', 'key_salt = "pepper-salt-value"')
        .replace('token_file = ""', f"token_file = {toml_string(str(token_file))}", 1)
    )
    path.write_text(text, encoding="utf-8")

    checked = finechat(
        "config", "check", "--config", str(path), env={"TELEGRAM_BOT_TOKEN": TG_TOKEN}
    )
    assert checked.returncode == 0, checked.stderr
    shown = checked.stdout
    for secret in (TG_TOKEN, DC_TOKEN, "pepper-salt-value"):
        assert secret not in shown and secret not in checked.stderr
    assert "# token: set (***)" in shown
    assert 'key_salt = "***"' in shown
    assert "n_ctx = 2048  # default: 4096" in shown
    # The printout is TOML that loads back to the same configuration (secrets aside).
    again = tmp_path / "effective.toml"
    again.write_text(shown, encoding="utf-8")
    reloaded = load_config(again, env={})
    original = load_config(path, env={})
    assert dataclasses.replace(reloaded, logging=original.logging) == original

    via_env = finechat("config", "check", env={"FINECHAT_CONFIG": str(path)})
    assert via_env.returncode == 0 and "n_ctx = 2048" in via_env.stdout


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[model]\nn_ctxx = 1\n", "model.n_ctxx"),
        ("[telegram]\nblocked_user_ids = ['x']\n", "telegram.blocked_user_ids[0]"),
        ("[telegram]\npoll_timeout = 9999\n", "telegram.poll_timeout"),
        ("[telegram]\ntoken = 'abc'\n", "telegram.token"),
        ("[web]\nport = 0\n", "web.port"),
        ("[model.remote]\nretries = 99\n", "model.remote.retries"),
        ("[models.x]\nn_ctx = 1\n", "models.x.n_ctx"),
        ("[nope]\n", "nope"),
        ("[model\n", "invalid TOML"),
    ],
)
def test_check_exits_2_naming_the_bad_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    out = finechat("config", "check", "--config", str(path))
    assert out.returncode == 2
    assert key in out.stderr and out.stdout == ""
    assert "Traceback" not in out.stderr


def test_blocked_user_ids_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "tg.toml"
    path.write_text("[telegram]\nblocked_user_ids = [42, 7]\n", encoding="utf-8")
    assert load_config(path, env={}).telegram.blocked_user_ids == [42, 7]
    env = {"FINECHAT_TELEGRAM__BLOCKED_USER_IDS": "1, 2"}
    assert load_config(None, env=env).telegram.blocked_user_ids == [1, 2]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_string_value_is_written_as_toml_that_reads_back(value: str) -> None:
    rendered = toml_value(value)
    assert rendered is not None
    read = tomllib.loads(f"v = {rendered}\n")["v"]
    assert read == "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200),
    st.lists(st.integers(min_value=-(2**62), max_value=2**62), max_size=5),
)
def test_effective_values_of_hostile_settings_read_back(prompt: str, ids: list[int]) -> None:
    cfg = dataclasses.replace(
        Config(),
        chat=dataclasses.replace(Config().chat, system_prompt=prompt),
        telegram=dataclasses.replace(Config().telegram, blocked_user_ids=ids),
    )
    parsed = tomllib.loads(effective_text(cfg))
    assert parsed["chat"]["system_prompt"] == prompt
    assert parsed["telegram"]["blocked_user_ids"] == ids
