"""Pieces every tab of the web chat shares: who is asking, and how errors reach the page.

Gradio injects ``gr.Request`` / ``gr.OAuthProfile`` by type hint, resolved with
``typing.get_type_hints`` on the handler, so modules defining handlers import ``gradio`` at
runtime and do not use postponed annotations.
"""

import html
import logging
from typing import NoReturn

import gradio as gr

from core.errors import FinechatError
from web.identity import Identity, identify

log = logging.getLogger("finechat.web")

GENERIC_ERROR = "Something went wrong on our side. Please try again in a moment."


def who(
    request: gr.Request | None, profile: gr.OAuthProfile | None, browser_id: object
) -> Identity:
    """The conversation this request belongs to: the login when there is one, else the browser."""
    login: str | None = None
    if profile is not None:
        login = str(getattr(profile, "username", "") or "") or None
    if login is None and request is not None:
        login = getattr(request, "username", None) or None
    return identify(login, browser_id)


def user_error(exc: BaseException) -> NoReturn:
    """Raise the toast a visitor sees: the safe message of a FinechatError, else a generic one.

    ``gr.Error`` renders its message as HTML, and ours may quote user input, so it is escaped.
    Unexpected exceptions are logged (with traceback) here and never shown.
    """
    if isinstance(exc, FinechatError):
        raise gr.Error(html.escape(str(exc)), print_exception=False) from None
    log.error("web handler failed", exc_info=exc)
    raise gr.Error(GENERIC_ERROR, print_exception=False) from None
