"""``finechat web`` as a person runs it: a real process on the bundled model, stopped by Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


@pytest.mark.slow
def test_finechat_web_command_serves_the_bundled_model(tmp_path: Path) -> None:
    """The acceptance check: ``finechat web`` on the bundled model, stopped by SIGINT."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    finechat = Path(sys.executable).with_name("finechat")
    proc = subprocess.Popen(
        [
            *(str(finechat), "web", "--port", str(port), "--db", str(tmp_path / "cli.sqlite")),
            *("--n-ctx", "1024", "--threads", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        for line in proc.stdout:  # blocks until the server announces itself (or exits)
            if "web chat on" in line:
                break
        assert f"http://127.0.0.1:{port}/" in line, line
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["model_loaded"] is True
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "finechat" in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
