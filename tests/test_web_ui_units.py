"""Small pieces of the web chat's conversation list and feedback, with hostile inputs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from core.memory import Turn
from web.conversations_ui import DownloadFiles, conversation_id
from web.render import feedback_values, message, message_text

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def test_conversation_ids_from_the_page_are_checked() -> None:
    assert conversation_id("12") == 12 and conversation_id(12) == 12
    for bad in (None, "", "0", "-1", "1.5", "１２", "9" * 19, True, 0, -3, [], "12 ", "0x1"):
        assert conversation_id(bad) is None, bad


@given(JSON)
def test_any_value_the_browser_sends_reads_as_text(value: object) -> None:
    assert isinstance(message_text(value), str)
    conversation_id(value)


def test_message_text_reads_gradio_shapes() -> None:
    shown = message("assistant", "Hi <b>there</b>")["content"]
    assert message_text([[{"type": "text", "text": shown}]]) == shown
    assert message_text([{"role": "assistant", "content": shown}]) == shown
    assert message_text(shown) == shown


def test_feedback_values_follow_the_answers() -> None:
    turns = [
        Turn(1, 1, "user", "q", None, None, 0.0),
        Turn(2, 1, "assistant", "a", None, 1, 0.0, feedback=1),
        Turn(3, 1, "user", "q2", None, 2, 0.0),
        Turn(4, 1, "assistant", "b", None, 3, 0.0, feedback=-1),
        Turn(5, 1, "user", "q3", None, 4, 0.0),
        Turn(6, 1, "assistant", "c", None, 5, 0.0),
    ]
    assert feedback_values(turns) == ["Like", "Dislike", None]


def test_download_files_are_private_and_swept(tmp_path: Path) -> None:
    files = DownloadFiles(ttl=60)
    try:
        path = Path(files.write("chat.md", "# hello\n"))
        assert path.read_text(encoding="utf-8") == "# hello\n"
        assert path.parent.stat().st_mode & 0o077 == 0  # only this user may read the folder
        old = time.time() - 120
        os.utime(path.parent, (old, old))
        Path(files.write("other.md", "x"))
        assert not path.exists()  # swept after its time to live
    finally:
        files.close()
    assert not path.parent.parent.exists()
