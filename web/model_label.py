"""The model's name as people see it on the web page.

Converters often fill ``general.name`` with a run name ("Smollm2 135M 8k Lc100K Mix1 Ep2"), so
the page shows ``general.basename`` and ``general.size_label`` ("smollm2 135M") when the GGUF
has them, else the file name. An operator's explicit ``[model] name`` wins over both. Model
*ids* (``/v1/models``, ``/model``, the arena) are not affected: they stay ``ModelInfo.name``.
"""

from __future__ import annotations

from pathlib import Path

from core.gguf_meta import display_name
from core.service import ChatService

MAX_LABEL_CHARS = 80


def label_for(path: str, fallback: str) -> str:
    """basename + size label from the GGUF at ``path``, else its file name, else ``fallback``."""
    file = Path(path) if path else None
    if file is not None and file.suffix.lower() == ".gguf":
        try:
            is_file = file.is_file()
        except OSError:
            is_file = False
        if is_file:
            return display_name(file) or file.name
        return file.name
    return fallback


def page_model_name(service: ChatService) -> str:
    """What the page calls the default model."""
    configured = ""
    if service.models is not None:
        configured = service.models.default.config.name
    if configured:
        return _one_line(configured)
    try:
        info = service.engine.info
    except Exception:  # an engine that has not loaded yet: its configured name
        return _one_line(service.model_name)
    return _one_line(label_for(info.path, info.name))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_LABEL_CHARS] or "model"
