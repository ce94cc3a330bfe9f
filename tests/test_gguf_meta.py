"""Reading a GGUF header's ``general.*`` strings for the web page's model name: exact and total."""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.gguf_meta import display_name, read_strings
from core.model_source import bundled_model_path
from web.model_label import label_for


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def gguf_header(kvs: list[tuple[str, int, bytes]], version: int = 3) -> bytes:
    """A GGUF header with the given (key, type, encoded value) entries and no tensors."""
    out = b"GGUF" + struct.pack("<I", version) + struct.pack("<QQ", 0, len(kvs))
    for key, kind, value in kvs:
        out += _string(key) + struct.pack("<I", kind) + value
    return out


def test_the_bundled_model_is_called_by_basename_and_size() -> None:
    path = bundled_model_path()
    meta = read_strings(path, ["general.basename", "general.size_label", "general.name"])
    assert meta == {
        "general.basename": "smollm2",
        "general.size_label": "135M",
        "general.name": "Smollm2 135M 8k Lc100K Mix1 Ep2",
    }
    assert display_name(path) == "smollm2 135M"
    assert label_for(str(path), "ignored") == "smollm2 135M"


def test_values_after_big_arrays_are_found(tmp_path: Path) -> None:
    tokens = struct.pack("<IQ", 8, 3) + b"".join(_string(t) for t in ("<s>", "a", "b"))
    ints = struct.pack("<IQ", 5, 4) + struct.pack("<4i", 1, 2, 3, 4)
    header = gguf_header(
        [
            ("tokenizer.ggml.tokens", 9, tokens),
            ("some.ints", 9, ints),
            ("general.alignment", 4, struct.pack("<I", 32)),
            ("general.basename", 8, _string("Qwen2.5")),
            ("general.size_label", 8, _string("0.5B")),
        ]
    )
    path = tmp_path / "m.gguf"
    path.write_bytes(header)
    assert display_name(path) == "Qwen2.5 0.5B"
    # A size label already in the base name is not repeated; no base name means no label.
    path.write_bytes(gguf_header([("general.basename", 8, _string("tiny-1B")),
                                  ("general.size_label", 8, _string("1B"))]))  # fmt: skip
    assert display_name(path) == "tiny-1B"
    path.write_bytes(gguf_header([("general.size_label", 8, _string("1B"))]))
    assert display_name(path) is None
    assert label_for(str(path), "x") == "m.gguf"


def test_broken_files_give_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    for data in (
        b"",
        b"GGML",
        b"GGUF\x09\x00\x00\x00",
        gguf_header([("general.basename", 8, struct.pack("<Q", 2**63) + b"x")]),
        gguf_header([("x", 9, struct.pack("<IQ", 8, 2**60))]),
        gguf_header([("x", 99, b"")]),
        gguf_header([("general.basename", 8, _string("ok"))])[:-1],
    ):
        path.write_bytes(data)
        assert read_strings(path, ["general.basename"]) == {}
    assert read_strings(tmp_path / "missing.gguf", ["general.basename"]) == {}
    assert read_strings(tmp_path, ["general.basename"]) == {}  # a directory


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=60))
def test_any_bytes_after_a_valid_start_never_raise(tmp_path: Path, tail: bytes, cut: int) -> None:
    good = gguf_header(
        [
            ("general.basename", 8, _string("name")),
            ("k", 9, struct.pack("<IQ", 8, 1) + _string("v")),
        ]
    )
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(good[: len(good) - cut] + tail)
    result = read_strings(path, ["general.basename", "general.size_label"])
    assert set(result) <= {"general.basename", "general.size_label"}
    assert isinstance(display_name(path), str | type(None))
