"""Read a few ``general.*`` metadata strings from a GGUF file header, in pure Python.

The web page names the model after ``general.basename`` and ``general.size_label`` ("SmolLM2
135M") rather than ``general.name``, which converters often fill with a run name ("Smollm2 135M
8k Lc100K Mix1 Ep2"). Reading them needs no llama.cpp and no ``gguf`` package (a training
extra), works for remote engines given a local tokenizer GGUF, and never loads tensors.

A model file is outside input: the reader checks every length against the file size and a
budget, skips what it does not need without reading it, and answers ``{}`` for anything that
is not a well-formed little-endian GGUF header instead of raising.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
MAX_KEYS = 1 << 20
MAX_STRING = 1 << 20
MAX_DEPTH = 4


class _Bad(Exception):
    """The header is malformed (internal; the public function answers {})."""


class _Reader:
    def __init__(self, f: BinaryIO, size: int, v1: bool) -> None:
        self.f, self.size, self.v1 = f, size, v1

    def take(self, n: int) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise _Bad
        data = self.f.read(n)
        if len(data) != n:
            raise _Bad
        return data

    def skip(self, n: int) -> None:
        if n < 0 or self.f.tell() + n > self.size:
            raise _Bad
        self.f.seek(n, 1)

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def count(self) -> int:
        """A length or count: 32-bit in GGUF v1, 64-bit since."""
        return self.u32() if self.v1 else int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> bytes:
        n = self.count()
        if n > MAX_STRING:
            raise _Bad
        return self.take(n)

    def skip_string(self) -> None:
        self.skip(self.count())

    def skip_value(self, kind: int, depth: int = 0) -> None:
        if kind in _FIXED:
            self.skip(_FIXED[kind])
        elif kind == _STRING:
            self.skip_string()
        elif kind == _ARRAY and depth < MAX_DEPTH:
            item, n = self.u32(), self.count()
            if item in _FIXED:
                self.skip(_FIXED[item] * n)
            else:
                # Every element needs at least 4 bytes (a length or a type): bounds the loop.
                if n * 4 > self.size - self.f.tell():
                    raise _Bad
                for _ in range(n):
                    self.skip_value(item, depth + 1)
        else:
            raise _Bad


def read_strings(path: str | Path, keys: Collection[str]) -> dict[str, str]:
    """The string values of ``keys`` found in the GGUF header at ``path`` ({} if none/bad)."""
    wanted = set(keys)
    found: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            if f.read(4) != MAGIC:
                return {}
            version = struct.unpack("<I", f.read(4))[0]
            if version not in (1, 2, 3):
                return {}
            r = _Reader(f, size, v1=version == 1)
            r.count()  # tensors
            n_keys = r.count()
            for _ in range(min(n_keys, MAX_KEYS)):
                key = r.string().decode("utf-8", "replace")
                kind = r.u32()
                if key in wanted and kind == _STRING:
                    found[key] = r.string().decode("utf-8", "replace")
                    if len(found) == len(wanted):
                        break
                else:
                    r.skip_value(kind)
    except (OSError, struct.error, _Bad, OverflowError, ValueError):
        pass
    return found


def display_name(path: str | Path) -> str | None:
    """``general.basename`` plus ``general.size_label`` ("SmolLM2 135M"), or None."""
    meta = read_strings(path, ("general.basename", "general.size_label"))
    base = " ".join(meta.get("general.basename", "").split())[:80]
    size = " ".join(meta.get("general.size_label", "").split())[:20]
    if not base:
        return None
    if size and size.casefold() not in base.casefold():
        return f"{base} {size}"
    return base
