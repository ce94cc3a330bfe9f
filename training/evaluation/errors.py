"""Errors of ``finechat eval``: one line a person can act on, never a traceback."""

from __future__ import annotations

from core.errors import ConfigError, FinechatError


class EvalError(FinechatError):
    """The evaluation could not run (bad prompt file, a model that fails, a worker that died)."""


class EvalConfigError(ConfigError):
    """The evaluation was asked for with options that do not fit together."""
