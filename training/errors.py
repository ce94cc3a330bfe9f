"""Errors of the training half; messages are one line a person can act on (no tracebacks)."""

from __future__ import annotations

from core.errors import ConfigError, FinechatError


class TrainingError(FinechatError):
    """Training, merging or exporting failed for a reason the message explains."""


class TrainConfigError(ConfigError):
    """The run configuration is invalid; the message names the key."""


class DataError(TrainingError):
    """A dataset row cannot be used; the message names the row number."""


class NoGPUError(TrainingError):
    """``backend = "unsloth"`` was asked for on a machine without a usable GPU."""


class DiskSpaceError(TrainingError):
    """Not enough free disk space for the next artefact (checked before writing it)."""


class UnsupportedArchitecture(TrainingError):
    """llama.cpp's converter does not know the model's architecture."""


class ConverterError(TrainingError):
    """The GGUF converter or quantizer could not be found or failed."""


class VerificationError(TrainingError):
    """An exported GGUF failed a check (tokenization, finite logits, parity)."""
