"""A tiny fake of the Hugging Face Hub's file-resolve endpoint, served on 127.0.0.1.

It implements what ``hf_hub_download`` needs for a plain (non-Xet) file: HEAD and GET on
``/{owner}/{repo}/resolve/{revision}/{filename}`` with the commit, ETag and size headers, and
the hub's 404 error codes for a missing repository or file.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    files: dict[tuple[str, str], Path]
    url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)


@contextmanager
def serve_fake_hub(files: dict[tuple[str, str], Path]) -> Iterator[FakeHub]:
    hub = FakeHub(files)
    etags = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files.items()}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _resolve(self, send_body: bool) -> None:
            hub.requests.append((self.command, self.path))
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                self.send_error(404)
                return
            repo, filename = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
            if not any(r == repo for r, _ in hub.files):
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = hub.files.get((repo, filename))
            if path is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{etags[(repo, filename)]}"')
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if send_body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            self._resolve(send_body=False)

        def do_GET(self) -> None:
            self._resolve(send_body=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
