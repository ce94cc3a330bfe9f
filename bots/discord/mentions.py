"""Model output that cannot ping anyone on Discord, and still reads the same.

Every message the bot sends already carries ``allowed_mentions=none``; this is the belt to
those braces, and it keeps the text readable: a model that writes ``@everyone``, ``<@123>``,
``<@&456>`` or ``<#789>`` gets a zero-width space after the ``@`` / ``#``, so Discord shows
the text as written but parses no mention (the trick ``discord.utils.escape_mentions`` uses,
extended to roles and channels). Total and linear: one pass of a regular expression with no
nested repetition (the text is cleaned first, like all model text:
:func:`core.textcheck.clean_model_text`). Each neutralised mention grows by one character: neutralise *before*
cutting the answer to Discord's limit.
"""

from __future__ import annotations

import re

from core.textcheck import clean_model_text

ZWSP = "\u200b"
_MENTION = re.compile(r"@(?=everyone|here)|<(?:@[!&]?|#)(?=\d+>)")


def neutralize_mentions(text: str) -> str:
    """``text`` with every Discord mention broken by a zero-width space (see module doc)."""
    return _MENTION.sub(lambda m: m.group(0) + ZWSP, clean_model_text(text))
