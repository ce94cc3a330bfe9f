"""``finechat web`` as a person runs it: a real process on the bundled model, stopped by Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_line(proc: subprocess.Popen[str], marker: str) -> str:
    """Read the process's output until ``marker`` (the server is up) or until it exits."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            return line
    return f"process exited with {proc.wait()} before printing {marker!r}"


@pytest.mark.slow
def test_finechat_web_command_serves_the_bundled_model(tmp_path: Path) -> None:
    """The acceptance check: ``finechat web`` on the bundled model, stopped by SIGINT."""
    port = _free_port()
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
        line = _wait_for_line(proc, "web chat on")
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


def test_space_config_listens_where_a_space_expects(tmp_path: Path) -> None:
    from web.app import space_config

    data = tmp_path / "data"
    env = {"SYSTEM": "spaces", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"}
    config = space_config(env, data_dir=data)
    assert (config.web.host, config.web.port, config.web.enabled) == ("0.0.0.0", 7861, True)
    assert config.database.path == "finechat.sqlite"  # no persistent storage attached
    data.mkdir()
    assert space_config(env, data_dir=data).database.path == str(data / "finechat.sqlite")
    explicit = space_config({**env, "FINECHAT_DB": "mine.sqlite"}, data_dir=data)
    assert explicit.database.path == "mine.sqlite"
    with pytest.raises(ConfigError, match="web.port"):
        space_config({"GRADIO_SERVER_PORT": "lots"}, data_dir=data)


@pytest.mark.slow
def test_space_app_file_runs_from_a_plain_checkout(tmp_path: Path) -> None:
    """``python web/app.py`` as the Space runs it: no entry points needed, SIGTERM stops it."""
    port = _free_port()
    app = Path(__file__).resolve().parent.parent / "web" / "app.py"
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "FINECHAT_DB": str(tmp_path / "space.sqlite"),
        "FINECHAT_MODEL__N_CTX": "1024",
        "FINECHAT_MODEL__N_THREADS": "2",
        "FINECHAT_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, str(app)],
        cwd=tmp_path,  # not the repository: the app file must find its own imports
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = _wait_for_line(proc, "web chat on")
        assert f":{port}/" in line, line
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["database_writable"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
