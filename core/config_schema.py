"""The configuration schema as data: every section and key with its type, default and description.

It is read from the dataclasses in :mod:`core.config`, so the example file (``finechat config
init``), the effective values (``finechat config check``) and ``docs/configuration.md`` all come
from the one definition and cannot drift from it: a key added to a dataclass shows up in all
three. A key's description is its attribute docstring (the string literal right after the field,
the convention in ``core/config.py``) or ``field(metadata={"doc": ...})``; a section's is its
class docstring. A key is secret when its type is :class:`~core.config.Secret` (read only from
the environment), when its metadata says ``secret``, or when its name says so (``token``,
``password``, ``salt``...); secrets are never printed.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import re
import textwrap
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from typing import Any, get_args, get_origin, get_type_hints

from core.config import TOKEN_ENV, Config, Secret

_SECRET_NAME = re.compile(r"(^|_)(token|secret|password|passwd|salt|api_key|private_key)$")


@dataclass(frozen=True)
class Key:
    """One key of a section."""

    name: str
    type: Any
    default: Any
    doc: str
    secret: bool
    env_only: bool
    """A :class:`Secret`: only from the environment (or a token file), never from TOML."""


@dataclass(frozen=True)
class Section:
    """A TOML table: ``[model]``, ``[model.remote]``, or the named tables ``[models.NAME]``."""

    path: tuple[str, ...]
    doc: str
    keys: tuple[Key, ...]
    tables: tuple[Section, ...]
    """Nested tables (``[model.remote]``), in field order."""
    named: bool = False
    """``[models.NAME]``: any number of tables, each with these keys."""

    @property
    def name(self) -> str:
        return ".".join(self.path)

    def env(self, key: Key) -> str:
        """The environment variable that overrides ``key`` (named tables: with NAME)."""
        parts = [p.upper() for p in self.path]
        if self.named:
            parts.append("NAME")
        return "FINECHAT_" + "__".join([*parts, key.name.upper()])


def clean_doc(text: str | None) -> str:
    """A docstring as plain text with Markdown code spans (``x`` becomes `x`)."""
    if not text:
        return ""
    return inspect.cleandoc(text).replace("``", "`").strip()


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """The string literal after each annotated field of ``cls``'s class body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen build): descriptions only from metadata
        return {}
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
    for node, after in zip(body, [*body[1:], None], strict=True):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = clean_doc(after.value.value)
    return docs


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _section(cls: type, path: tuple[str, ...], doc: str = "", *, named: bool = False) -> Section:
    hints = get_type_hints(cls)
    docs = attribute_docs(cls)
    keys: list[Key] = []
    tables: list[Section] = []
    for f in fields(cls):
        hint = hints[f.name]
        if is_dataclass(hint) and isinstance(hint, type):
            tables.append(_section(hint, (*path, f.name)))
            continue
        meta_doc = f.metadata.get("doc") if f.metadata else None
        keys.append(
            Key(
                name=f.name,
                type=hint,
                default=_default(f),
                doc=clean_doc(meta_doc) if meta_doc else docs.get(f.name, ""),
                secret=hint is Secret
                or bool(f.metadata.get("secret"))
                or bool(_SECRET_NAME.search(f.name)),
                env_only=hint is Secret,
            )
        )
    return Section(path, doc or clean_doc(cls.__doc__), tuple(keys), tuple(tables), named=named)


def schema(root: type = Config) -> tuple[Section, ...]:
    """Every top-level section of the configuration, in the order of :class:`Config`."""
    hints = get_type_hints(root)
    docs = attribute_docs(root)
    out: list[Section] = []
    for f in fields(root):
        hint = hints[f.name]
        if get_origin(hint) is dict:  # [models.NAME]: named tables of one dataclass
            item = get_args(hint)[1]
            out.append(_section(item, (f.name,), docs.get(f.name, ""), named=True))
        elif is_dataclass(hint) and isinstance(hint, type):
            out.append(_section(hint, (f.name,)))
    return tuple(out)


def secret_env(section: Section) -> str:
    """The environment variable a section's token comes from (``DISCORD_BOT_TOKEN``...)."""
    return TOKEN_ENV.get(section.path[0], section.name.upper() + "_TOKEN")


# -- values as TOML ------------------------------------------------------------------------

_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(text: str) -> str:
    """A TOML basic string for any Python string (control characters escaped)."""
    out = []
    for ch in text:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:  # a lone surrogate cannot be written as UTF-8
            out.append("\\ufffd")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(name: str) -> str:
    return name if _BARE_KEY.match(name) else toml_string(name)


def toml_value(value: Any) -> str | None:
    """``value`` as a TOML value, or None when TOML cannot express it (None, objects)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        items = [toml_value(v) for v in value]
        if any(i is None for i in items):
            return None
        return "[" + ", ".join(i for i in items if i is not None) + "]"
    return None


def type_name(hint: Any) -> str:
    """A person's name for a key's type (docs and error-free comments)."""
    if hint is bool:
        return "boolean"
    if hint is int:
        return "integer"
    if hint is float:
        return "number"
    if hint is str:
        return "string"
    if hint is Secret:
        return "secret"
    origin = get_origin(hint)
    if origin in (list, tuple):
        item = next((a for a in get_args(hint) if a is not Ellipsis), str)
        return f"list of {type_name(item)}s"
    args = [a for a in get_args(hint) if a is not type(None)]
    if args and len(args) < len(get_args(hint)):
        return f"{' or '.join(type_name(a) for a in args)} (optional)"
    return getattr(hint, "__name__", str(hint))
