"""Files generated from the configuration schema: the example TOML, the effective values, the docs.

* :func:`init_text` is what ``finechat config init`` writes: every section and key with its
  default, each with its description as a comment. It loads to exactly the defaults.
* :func:`effective_text` is what ``finechat config check`` prints: the values in force (file,
  environment, defaults) as TOML, secrets masked in comments, changed keys marked.
* :func:`reference_markdown` is ``docs/configuration.md`` (a test keeps the file equal to it).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

from core.config import _ENV_SHORTCUTS, Config
from core.config_schema import (
    Key,
    Section,
    schema,
    secret_env,
    toml_key,
    toml_value,
    type_name,
)

WIDTH = 96
#: The example model file name in the commented ``[models.NAME]`` table.
EXAMPLE_MODEL = ("tiny", "models/my-finetune.Q4_K_M.gguf")

INIT_HEADER = """\
finechat configuration, written by `finechat config init` from finechat's configuration
schema: every section and key with its default value and what it does. Change what you need;
a key you delete keeps its default. Check the file with `finechat config check --config PATH`
and use it with `finechat serve --config PATH` (or FINECHAT_CONFIG=PATH).

The environment wins over this file: FINECHAT_<SECTION>__<KEY>, e.g. FINECHAT_MODEL__N_CTX=2048
(lists comma-separated). Bot tokens never go in this file: they come from DISCORD_BOT_TOKEN and
TELEGRAM_BOT_TOKEN, or from the file named by token_file."""


def _comment(text: str, indent: str = "") -> list[str]:
    lines: list[str] = []
    for para in text.split("\n\n"):
        flat = " ".join(para.split())
        if not flat:
            continue
        if lines:
            lines.append(indent + "#")
        lines.extend(
            textwrap.wrap(
                flat,
                WIDTH,
                initial_indent=indent + "# ",
                subsequent_indent=indent + "# ",
                break_on_hyphens=False,
                break_long_words=False,
            )
        )
    return lines


def _header(path: list[str] | tuple[str, ...]) -> str:
    return "[" + ".".join(toml_key(p) for p in path) + "]"


def _key_lines(section: Section, key: Key, value: Any, *, with_docs: bool) -> list[str]:
    lines = _comment(key.doc) if with_docs and key.doc and not key.env_only else []
    if key.env_only:
        env = secret_env(section)
        if with_docs:
            lines.append(f"# {key.name}: from the environment ({env}) or token_file, never here")
        else:
            state = "set (***)" if value else "not set"
            lines.append(f"# {key.name}: {state}; from {env} or token_file")
        return lines
    rendered = toml_value(value)
    if key.secret and value and not with_docs:
        lines.append(f'# {key.name} = "***"  (set; not shown)')
    elif rendered is None:
        lines.append(f"# {key.name} = (not set)")
    else:
        lines.append(f"{toml_key(key.name)} = {rendered}")
    return lines


def _twin(section: Section, sections: tuple[Section, ...]) -> Section | None:
    """The plain section whose keys a named one repeats (``[model]`` for ``[models.NAME]``)."""
    names = [k.name for k in section.keys]
    return next((s for s in sections if not s.named and [k.name for k in s.keys] == names), None)


def init_text(root: type = Config) -> str:
    """The commented example configuration with every section and key at its default."""
    out = _comment(INIT_HEADER)
    sections = schema(root)
    for section in sections:
        out.append("")
        if section.named:
            out.extend(_named_example(section, _twin(section, sections)))
        else:
            out.extend(_init_section(section))
    return "\n".join(out) + "\n"


def _init_section(section: Section) -> Iterator[str]:
    yield from _comment(section.doc)
    yield _header(section.path)
    for key in section.keys:
        yield from _key_lines(section, key, key.default, with_docs=True)
    for table in section.tables:
        yield ""
        yield from _init_section(table)


def _named_example(section: Section, twin: Section | None) -> Iterator[str]:
    """``[models.NAME]``: a commented example table (there are none by default)."""
    name, path = EXAMPLE_MODEL
    keys = f"the keys of [{twin.name}]" if twin else "these keys"
    yield from _comment(section.doc)
    yield from _comment(
        f"Each [{section.name}.NAME] table takes {keys}; a key left out takes its default. "
        "For example:"
    )
    yield f"# {_header([*section.path, name])}"
    shown = [k for k in section.keys if not (k.secret or k.env_only)]
    if any(k.name == "path" for k in shown):
        yield f"# path = {toml_value(path)}"
        shown = [k for k in shown if k.name in {"n_ctx", "idle_unload_seconds"}]
    for key in shown:
        rendered = toml_value(key.default)
        if rendered is not None:
            yield f"# {toml_key(key.name)} = {rendered}"


def effective_text(cfg: Config) -> str:
    """The configuration in force as TOML; secrets masked; changed keys marked with the default."""
    defaults = type(cfg)()
    out = [
        "# The effective configuration: defaults, then the file, then the environment.",
        "# Secrets are masked; '# default: ...' follows a value that differs from its default.",
    ]
    for section in schema(type(cfg)):
        value = getattr(cfg, section.path[0])
        if section.named:
            for name, item in sorted(value.items()):
                out.append("")
                out.extend(_effective(section, item, type(item)(), [section.path[0], name]))
        else:
            out.append("")
            out.extend(
                _effective(section, value, getattr(defaults, section.path[0]), list(section.path))
            )
    return "\n".join(out) + "\n"


def _effective(section: Section, value: Any, default: Any, path: list[str]) -> Iterator[str]:
    yield _header(path)
    for key in section.keys:
        current = getattr(value, key.name)
        lines = _key_lines(section, key, current, with_docs=False)
        was = getattr(default, key.name, None)
        if not (key.secret or lines[-1].startswith("#")) and _normal(was) != _normal(current):
            lines[-1] += f"  # default: {toml_value(was) or '(not set)'}"
        yield from lines
    for table in section.tables:
        name = table.path[-1]
        yield ""
        yield from _effective(table, getattr(value, name), getattr(default, name), [*path, name])


def _normal(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


# -- docs/configuration.md -------------------------------------------------------------------

DOC_INTRO = """\
<!-- Generated from the configuration schema (core/config.py) by `finechat config docs`.
     Edit the docstrings there, then run: finechat config docs > docs/configuration.md -->

# Configuration reference

finechat reads one TOML file (`--config PATH`, or the `FINECHAT_CONFIG` environment variable),
then the environment. Every key is optional: an empty file (or none) runs the bundled model
with the web chat on <http://127.0.0.1:7860>.

- `finechat config init finechat.toml` writes a commented file with every key below at its
  default (without a path it prints the file).
- `finechat config check --config finechat.toml` validates a file and prints the values in
  force, secrets masked; it exits 2 and names the bad key when something is wrong.

**Environment.** Any key can be set as `FINECHAT_<SECTION>__<KEY>` (the "Environment" column),
which wins over the file. Nested tables add another `__`
(`FINECHAT_MODEL__REMOTE__BASE_URL`), named models their name
(`FINECHAT_MODELS__TINY__PATH`). Lists are comma-separated (`1234,5678`). Shortcuts:
{shortcuts}.

**Secrets.** Bot tokens are never read from the file: they come from `DISCORD_BOT_TOKEN` /
`TELEGRAM_BOT_TOKEN`, or from the file named by `token_file`. They are never logged or printed.
"""


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _md_default(key: Key) -> str:
    if key.env_only:
        return "—"
    rendered = toml_value(key.default)
    if rendered is None:
        return "(not set)"
    return "`" + rendered.replace("|", "\\|").replace("`", "'") + "`"


def reference_markdown(root: type = Config) -> str:
    """The configuration reference (docs/configuration.md)."""
    shortcuts = ", ".join(
        f"`{var}` (`{'.'.join(target)}`)" for var, target in sorted(_ENV_SHORTCUTS.items())
    )
    out = [DOC_INTRO.format(shortcuts=shortcuts)]
    sections = schema(root)
    for section in sections:
        out.extend(_md_section(section, _twin(section, sections) if section.named else None))
    return "\n".join(out).rstrip() + "\n"


def _md_section(section: Section, twin: Section | None = None) -> Iterator[str]:
    title = f"{section.name}.NAME" if section.named else section.name
    yield f"## `[{title}]`"
    yield ""
    if section.doc:
        yield section.doc
        yield ""
    if section.named:
        example = _header([*section.path, EXAMPLE_MODEL[0]])
        if twin is not None:
            yield (
                f"Any number of `[{section.name}.NAME]` tables (for example `{example}`), each "
                f"taking the keys of `[{twin.name}]` above; a key left out takes its default. "
                f"Environment: `FINECHAT_{section.name.upper()}__NAME__KEY`."
            )
            yield ""
            return
        yield (
            f"Any number of `[{section.name}.NAME]` tables (for example `{example}`), each "
            "taking the keys below; a key left out takes its default."
        )
        yield ""
    yield "| Key | Type | Default | Environment | Description |"
    yield "|---|---|---|---|---|"
    for key in section.keys:
        if key.env_only:
            env = f"`{secret_env(section)}`"
            doc = key.doc or "From the environment only."
        else:
            env = f"`{section.env(key)}`"
            doc = key.doc
        if key.secret and not key.env_only:
            doc = (doc + " Secret: masked by `config check`.").strip()
        yield (
            f"| `{key.name}` | {type_name(key.type)} | {_md_default(key)} | {env} "
            f"| {_md_cell(doc)} |"
        )
    yield ""
    for table in section.tables:
        nested = Section(
            (*section.path, *(["NAME"] if section.named else []), table.path[-1]),
            table.doc,
            table.keys,
            table.tables,
        )
        if section.named:
            continue  # the same table as under the unnamed section; documented there
        yield from _md_section(nested)
