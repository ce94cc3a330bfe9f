"""Pieces every tab of the web chat shares: who is asking, and how errors reach the page.

Gradio injects ``gr.Request`` / ``gr.OAuthProfile`` by type hint, resolved with
``typing.get_type_hints`` on the handler, so modules defining handlers import ``gradio`` at
runtime and do not use postponed annotations.
"""

import html
import logging
from collections.abc import Mapping
from typing import NoReturn

import gradio as gr

from core.errors import FinechatError
from web.clients import Network, resolve_client
from web.identity import Identity, identify

log = logging.getLogger("finechat.web")

GENERIC_ERROR = "Something went wrong on our side. Please try again in a moment."


def who(
    request: gr.Request | None, profile: gr.OAuthProfile | None, browser_id: object
) -> Identity:
    """The conversation this request belongs to: the login when there is one, else the browser.

    A Hugging Face login and a password login live in different namespaces (web.identity); a
    login that cannot own a conversation becomes the toast that says why.
    """
    try:
        if profile is not None:
            username = str(getattr(profile, "username", "") or "")
            if username:
                return identify(username, browser_id, provider="huggingface")
        login = getattr(request, "username", None) if request is not None else None
        if isinstance(login, str) and login:
            return identify(login, browser_id, provider="password")
        return identify(None, browser_id)
    except FinechatError as exc:
        user_error(exc)


class People:
    """Whose ``[limits]`` a web request counts against.

    A signed-in visitor is their login; an anonymous visitor is their client address
    (``web:addr:IP``: a new browser id costs nothing, an address does), resolved through
    ``[web] trusted_proxies``.
    """

    def __init__(self, trusted: tuple[Network, ...] = ()) -> None:
        self.trusted = trusted

    def person(self, request: gr.Request | None, ident: Identity) -> str:
        if ident.signed_in:
            return ident.key
        peer: str | None = None
        headers: Mapping[str, str] = {}
        if request is not None:
            client = getattr(request, "client", None)
            peer = getattr(client, "host", None) if client is not None else None
            raw = getattr(request, "headers", None)
            if raw is not None:
                headers = {str(k).lower(): str(v) for k, v in dict(raw).items()}
        return "web:addr:" + resolve_client(peer, headers, self.trusted).address


def user_error(exc: BaseException) -> NoReturn:
    """Raise the toast a visitor sees: the safe message of a FinechatError, else a generic one.

    ``gr.Error`` renders its message as HTML, and ours may quote user input, so it is escaped.
    Unexpected exceptions are logged (with traceback) here and never shown.
    """
    if isinstance(exc, FinechatError):
        raise gr.Error(html.escape(str(exc)), print_exception=False) from None
    log.error("web handler failed", exc_info=exc)
    raise gr.Error(GENERIC_ERROR, print_exception=False) from None
