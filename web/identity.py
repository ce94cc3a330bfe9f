"""Whose conversation a web request belongs to.

Three kinds of visitor, three namespaces that can never meet:

* an anonymous visitor owns ``web:anon-{id}``, where ``id`` is a random token kept in the
  browser's localStorage: a reload (or a server restart) finds the same conversation, and two
  browsers never share one;
* a visitor signed in with a password (``[web] auth_file``) owns ``web:{login}``;
* a visitor signed in with their Hugging Face account (a Space with ``hf_oauth``) owns
  ``web:hf:{username}``.

Logins may not contain ``:`` or ``#`` (the separators of keys and sub-conversations such as
``KEY#arena-a``), control characters or surrounding spaces, and may not start with ``anon-``;
such a login is refused, never cleaned into someone else's name. Browser ids have no ``:``.

Before this scheme, Hugging Face logins owned ``web:{username}``; :attr:`Identity.legacy_key`
names that key so the page can move its data once (see ``MemoryStore.adopt_key``).

The browser id is a bearer token for an anonymous conversation, so it must be unguessable
(128 random bits) and anything that does not look like one is replaced, never trusted.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Literal

from core.errors import InvalidInput

ANON_PREFIX = "anon-"
HF_PREFIX = "hf:"
_BROWSER_ID = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
_LOGIN_RESERVED = re.compile(r"[:#\x00-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_LOGIN_CHARS = 128
Provider = Literal["anonymous", "password", "huggingface"]


class LoginRefused(InvalidInput):
    """A login that cannot own a conversation (reserved characters, reserved prefix)."""


@dataclass(frozen=True)
class Identity:
    """The conversation key plus what the page should say about it."""

    key: str
    browser_id: str
    login: str | None
    provider: Provider = "anonymous"
    legacy_key: str | None = None
    """Where this visitor's data lived under the previous key scheme, if elsewhere."""

    @property
    def signed_in(self) -> bool:
        return self.login is not None


def new_browser_id() -> str:
    return secrets.token_urlsafe(16)


def valid_browser_id(value: object) -> bool:
    return isinstance(value, str) and bool(_BROWSER_ID.match(value))


def login_problem(login: str, provider: Provider = "password") -> str | None:
    """Why ``login`` cannot name a conversation, or None when it can."""
    if not login:
        return "the user name is empty"
    if len(login) > MAX_LOGIN_CHARS:
        return f"the user name is longer than {MAX_LOGIN_CHARS} characters"
    if _LOGIN_RESERVED.search(login) or login != login.strip():
        return "user names may not contain ':', '#', control characters or surrounding spaces"
    if provider == "password" and login.lower().startswith(ANON_PREFIX):
        return f"user names may not start with {ANON_PREFIX!r} (kept for visitors not signed in)"
    return None


def identify(login: str | None, browser_id: object, *, provider: Provider = "password") -> Identity:
    """The key for this request; a missing or malformed browser id gets a fresh one.

    Raises :class:`LoginRefused` for a login that :func:`login_problem` refuses.
    """
    bid = browser_id if isinstance(browser_id, str) and valid_browser_id(browser_id) else None
    bid = bid or new_browser_id()
    if login and provider != "anonymous":
        problem = login_problem(login, provider)
        if problem:
            raise LoginRefused(f"This account cannot use the chat: {problem}.")
        if provider == "huggingface":
            return Identity(f"web:{HF_PREFIX}{login}", bid, login, provider, f"web:{login}")
        return Identity(f"web:{login}", bid, login, provider)
    return Identity(f"web:{ANON_PREFIX}{bid}", bid, None)
