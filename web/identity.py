"""Whose conversation a web request belongs to.

A signed-in visitor (Gradio ``auth`` or a Space's Hugging Face login) owns ``web:{login}``, so
the conversation follows them across browsers, reloads and restarts. An anonymous visitor gets
``web:anon-{id}``, where ``id`` is a random token kept in the browser's localStorage: a reload
(or a server restart) finds the same conversation, and two browsers never share one.

The browser id is a bearer token for an anonymous conversation, so it must be unguessable
(128 random bits) and anything that does not look like one is replaced, never trusted.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

ANON_PREFIX = "anon-"
_BROWSER_ID = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
# Logins come from an auth provider, but they end up inside a key and in log lines.
_LOGIN_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
MAX_LOGIN_CHARS = 128


@dataclass(frozen=True)
class Identity:
    """The conversation key plus what the page should say about it."""

    key: str
    browser_id: str
    login: str | None

    @property
    def signed_in(self) -> bool:
        return self.login is not None


def new_browser_id() -> str:
    return secrets.token_urlsafe(16)


def valid_browser_id(value: object) -> bool:
    return isinstance(value, str) and bool(_BROWSER_ID.match(value))


def identify(login: str | None, browser_id: object) -> Identity:
    """The key for this request; a missing or malformed browser id gets a fresh one."""
    bid = browser_id if isinstance(browser_id, str) and valid_browser_id(browser_id) else None
    bid = bid or new_browser_id()
    if login:
        clean = _LOGIN_UNSAFE.sub("", login).strip()[:MAX_LOGIN_CHARS]
        if clean:
            return Identity(f"web:{clean}", bid, clean)
    return Identity(f"web:{ANON_PREFIX}{bid}", bid, None)
