"""The shared splitter (:mod:`bots.chat.split`): where it cuts, and how it balances fences."""

from __future__ import annotations

import re

import pytest

from bots.chat.split import MIN_LIMIT, close_open_fence, split_message
from bots.telegram.chunks import utf16_len


def _words(text: str) -> list[str]:
    return re.findall(r"[^\s`]+", text)


@pytest.mark.parametrize("limit", [2000, 4096])
def test_short_text_is_one_chunk(limit: int) -> None:
    assert split_message("hello world", limit) == ["hello world"]
    assert split_message("  \n\t ", limit) == []


def test_prefers_paragraph_then_sentence_then_word() -> None:
    para = "First paragraph sentence one. Sentence two.\n\n" + "x " * 30
    assert split_message(para, 60)[0] == "First paragraph sentence one. Sentence two."
    chunks = split_message("This is a sentence. " * 10, 70)
    assert all(c.endswith(".") for c in chunks)
    chunks = split_message("word " * 100, 50)
    assert all(len(c) <= 50 and c.endswith("word") for c in chunks)


def test_never_loses_text_and_respects_limit() -> None:
    text = ("Lorem ipsum dolor sit amet, consectetur. " * 40 + "\n\n") * 5 + "end"
    for limit in (100, 2000, 4096):
        chunks = split_message(text, limit)
        assert all(len(c) <= limit for c in chunks)
        assert _words(" ".join(chunks)) == _words(text)


def test_hard_cut_keeps_characters_whole() -> None:
    assert "".join(split_message("a" * 250, 100)) == "a" * 250
    family = "👨‍👩‍👧‍👦"  # 7 code points joined by ZWJ
    chunks = split_message(family * 30, 40)
    assert "".join(chunks) == family * 30
    assert all(c.startswith("👨") and c.endswith("👦") for c in chunks)


def test_code_fence_closed_and_reopened_with_its_info_string() -> None:
    code = "```python\n" + "".join(f"print({i})\n" for i in range(300)) + "```\nafter"
    chunks = split_message("Intro.\n\n" + code, 2000)
    assert len(chunks) >= 2
    for c in chunks:
        assert len(c) <= 2000
        assert close_open_fence(c) == c, c[-80:]
    assert all(c.startswith("```python\n") for c in chunks[1:])
    assert _words(" ".join(chunks)).count("print(299)") == 1
    assert chunks[-1].endswith("after")


def test_tilde_fences_and_long_markers_close_with_their_own_marker() -> None:
    text = "~~~~ text\n" + "line of code\n" * 50
    chunks = split_message(text, 120)
    assert all(len(c) <= 120 and c.endswith("\n~~~~") for c in chunks)
    assert all(c.startswith("~~~~ text\n") for c in chunks)


def test_an_open_fence_at_the_end_is_closed_and_the_suffix_goes_inside() -> None:
    assert split_message("a\n```py\ncode", 100, suffix=" ▌") == ["a\n```py\ncode ▌\n```"]
    assert split_message("plain", 100, suffix=" ▌") == ["plain ▌"]


def test_no_empty_block_is_left_at_a_cut() -> None:
    text = "x" * 50 + "\n```python\n" + "y = 1\n" * 40 + "```"
    chunks = split_message(text, 60)
    assert chunks[0] == "x" * 50  # the opening line went to the next chunk with its code
    assert not any(c.endswith("```python\n```") for c in chunks)


def test_measure_counts_utf16_units() -> None:
    text = "😀" * 100
    chunks = split_message(text, 50, measure=utf16_len)
    assert [utf16_len(c) for c in chunks] == [50, 50, 50, 50]


def test_limit_below_the_minimum_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        split_message("x", MIN_LIMIT - 1)
    with pytest.raises(ValueError):
        split_message("x", 100, suffix="x" * 30)


def test_close_open_fence() -> None:
    assert close_open_fence("text") == "text"
    assert close_open_fence("```py\ncode") == "```py\ncode\n```"
    assert close_open_fence("````\ncode\n```\n") == "````\ncode\n```\n````"
    assert close_open_fence("```a`b") == "```a`b"  # inline code, not a fence
    assert close_open_fence("~~~\nx\n~~~") == "~~~\nx\n~~~"
