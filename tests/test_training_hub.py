"""``--push-to-hub`` against a fake hub on 127.0.0.1: a refused upload is one readable error line
and never echoes the token, even when the server puts it into its error message."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

TOKEN = "hf_finechatTestToken0123456789"


class _Refuse(BaseHTTPRequestHandler):
    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"error": f"Invalid credentials: {self.headers.get('Authorization')}"})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = do_HEAD = _reply

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_refused_push_is_one_line_without_the_token(tmp_path: Path, fake_hub: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"config": {"name": "t"}, "metrics": {"steps": 3}}))
    env = {
        "HF_ENDPOINT": fake_hub,
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    code = (
        "import sys; from pathlib import Path; from core.errors import FinechatError\n"
        "from training.hub import push_to_hub\n"
        "try:\n    push_to_hub(Path(sys.argv[1]), 'me/tiny')\n"
        "except FinechatError as e:\n    print(f'error: {e}'); sys.exit(1)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout.startswith("error: push to me/tiny failed:")
    assert "401" in proc.stdout or "nauthorized" in proc.stdout or "credentials" in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr
    assert (run / "README.md").read_text().startswith("---")  # the model card was written first
