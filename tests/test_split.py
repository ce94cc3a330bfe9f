"""Message splitting for platform limits."""

from __future__ import annotations

import re

import pytest

from bots.split import split_message


def _words(text: str) -> list[str]:
    return re.findall(r"[^\s`]+", text)


@pytest.mark.parametrize("limit", [2000, 4096])
def test_short_text_is_one_chunk(limit: int) -> None:
    assert split_message("hello world", limit) == ["hello world"]


def test_prefers_paragraph_then_sentence_then_word() -> None:
    para = "First paragraph sentence one. Sentence two.\n\n" + "x " * 30
    chunks = split_message(para, 60)
    assert chunks[0] == "First paragraph sentence one. Sentence two."
    long_sentences = "This is a sentence. " * 10
    chunks = split_message(long_sentences, 70)
    assert all(c.endswith(".") for c in chunks)
    words = "word " * 100
    assert all(len(c) <= 50 and not c.endswith("wor") for c in split_message(words, 50))


def test_never_loses_text_and_respects_limit() -> None:
    text = ("Lorem ipsum dolor sit amet, consectetur. " * 40 + "\n\n") * 5 + "end"
    for limit in (100, 2000, 4096):
        chunks = split_message(text, limit)
        assert all(len(c) <= limit for c in chunks)
        assert _words(" ".join(chunks)) == _words(text)


def test_hard_cut_for_a_giant_word() -> None:
    chunks = split_message("a" * 250, 100)
    assert "".join(chunks) == "a" * 250
    assert all(len(c) <= 100 for c in chunks)


def test_code_fence_closed_and_reopened() -> None:
    code = "```python\n" + "".join(f"print({i})\n" for i in range(300)) + "```\nafter"
    chunks = split_message("Intro.\n\n" + code, 2000)
    assert len(chunks) >= 2
    for c in chunks:
        assert len(c) <= 2000
        assert c.count("```") % 2 == 0, c[:80]
    assert chunks[1].startswith("```python\n")
    assert _words(" ".join(chunks)).count("print(299)") == 1
    assert chunks[-1].rstrip().endswith("after")
