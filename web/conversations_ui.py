"""The conversation list beside the chat: resume, rename, delete and download, per person.

Everything comes from the memory store on every call, like the chat itself, so two tabs, a
reload or a restart show the same list. The list holds only the visitor's own conversations and
every action checks ownership again in the core (a conversation id sent by a forged request
reaches nothing). Titles are people's text: they appear in a radio list and a textbox, which
show text, never markup; the status line escapes them.

Downloads are two buttons whose files are regenerated whenever the list is (the open
conversation, all branches, as Markdown and as JSON), so one click downloads the current state.
The files live in a private temporary folder for a few minutes; Gradio serves its own copy from
its cache, which ``delete_cache`` clears.
"""

import atexit
import contextlib
import json
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from core.errors import InvalidInput
from core.memory import ConversationSummary
from core.service import ChatService
from core.transcript import safe_filename
from web.render import ChatMessage, escape_status, to_chat
from web.ui_common import People, user_error, who

LIST_LIMIT = 100
DOWNLOAD_TTL_S = 600.0
_ID_DIGITS = 18


def conversation_id(choice: object) -> int | None:
    """The conversation id a list value names (None for anything that is not one)."""
    if isinstance(choice, int) and not isinstance(choice, bool):
        return choice if choice > 0 else None
    if (
        isinstance(choice, str)
        and choice.isascii()
        and choice.isdigit()
        and len(choice) <= _ID_DIGITS
    ):
        return int(choice) or None
    return None


def choices(summaries: Sequence[ConversationSummary]) -> list[tuple[str, str]]:
    """Radio choices: the title shown, the id as the value."""
    return [(s.title, str(s.id)) for s in summaries]


class DownloadFiles:
    """Short-lived files for the download buttons, in one private folder per app."""

    def __init__(self, ttl: float = DOWNLOAD_TTL_S) -> None:
        self.ttl = ttl
        self._root: Path | None = None
        self._lock = threading.Lock()

    def write(self, name: str, text: str) -> str:
        with self._lock:
            if self._root is None or not self._root.is_dir():
                self._root = Path(tempfile.mkdtemp(prefix="finechat-downloads-"))
                atexit.register(shutil.rmtree, self._root, ignore_errors=True)
            root = self._root
        self.sweep()
        folder = root / secrets.token_hex(12)
        folder.mkdir(mode=0o700)
        path = folder / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def sweep(self) -> None:
        """Remove files older than the time to live."""
        root = self._root
        if root is None:
            return
        cutoff = time.time() - self.ttl
        with contextlib.suppress(OSError):
            for folder in root.iterdir():
                with contextlib.suppress(OSError):
                    if folder.stat().st_mtime < cutoff:
                        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


@dataclass
class ConversationControls:
    listing: gr.Radio
    title: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    confirm_delete: gr.Button
    download_md: gr.DownloadButton
    download_json: gr.DownloadButton
    note: gr.Markdown

    def refresh_outputs(self) -> list[Any]:
        return [self.listing, self.title, self.download_md, self.download_json]


class ConversationHandlers:
    """Event handlers of the conversation list, bound to one :class:`ChatService`."""

    def __init__(
        self,
        service: ChatService,
        people: People | None = None,
        downloads: DownloadFiles | None = None,
    ) -> None:
        self.service = service
        self.people = people or People()
        self.downloads = downloads or DownloadFiles()

    async def _refresh(self, key: str) -> tuple[Any, str, Any, Any]:
        """The list (the open conversation selected), its title and its two downloads."""
        summaries = await self.service.conversations(key, LIST_LIMIT)
        active = next((s for s in summaries if s.active), None)
        listing = gr.update(choices=choices(summaries), value=str(active.id) if active else None)
        if active is None:
            off = gr.update(value=None, interactive=False)
            return listing, "", off, off
        stem = safe_filename(active.title, "")
        markdown = await self.service.conversation_markdown(key, active.id)
        data = await self.service.conversation_json(key, active.id)
        md_path = self.downloads.write(f"{stem}.md", markdown)
        json_path = self.downloads.write(
            f"{stem}.json", json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        )
        return (
            listing,
            active.title,
            gr.update(value=md_path, interactive=True),
            gr.update(value=json_path, interactive=True),
        )

    async def refresh(
        self, browser_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> tuple[Any, str, Any, Any]:
        ident = who(request, profile, browser_id)
        try:
            return await self._refresh(ident.key)
        except Exception as exc:
            user_error(exc)

    async def open(
        self,
        choice: str | None,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, str, list[ChatMessage], Any, Any, Any, Any]:
        """Resume the chosen conversation: it becomes the one new messages go to."""
        ident = who(request, profile, browser_id)
        conv = conversation_id(choice)
        try:
            if conv is None:
                raise InvalidInput("Choose a conversation from the list.")
            turns = await self.service.open_conversation(ident.key, conv)
            listing, title, md, js = await self._refresh(ident.key)
        except Exception as exc:
            user_error(exc)
        note = f"Opened “{escape_status(title)}”." if title else ""
        return listing, title, to_chat(turns), md, js, note, gr.update(visible=False)

    async def rename(
        self,
        choice: str | None,
        title: str,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, str, Any, Any, str]:
        """Rename the open conversation; an empty title brings back the automatic one."""
        ident = who(request, profile, browser_id)
        conv = conversation_id(choice)
        try:
            if conv is None:
                raise InvalidInput("There is no conversation to rename yet: send a message first.")
            shown = await self.service.rename_conversation(
                ident.key, conv, title or None, person=self.people.person(request, ident)
            )
            listing, current, md, js = await self._refresh(ident.key)
        except Exception as exc:
            user_error(exc)
        return listing, current, md, js, f"Renamed to “{escape_status(shown)}”."

    def ask_delete(self, choice: str | None) -> tuple[Any, str]:
        """First click: show the confirmation button (deleting cannot be undone)."""
        if conversation_id(choice) is None:
            return gr.update(visible=False), "There is no conversation to delete."
        return (
            gr.update(visible=True),
            "Delete this conversation for good? Press **Yes, delete** to confirm.",
        )

    async def delete(
        self,
        choice: str | None,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, str, list[ChatMessage], Any, Any, str, Any]:
        """Delete the chosen conversation and its messages; the chat starts afresh."""
        ident = who(request, profile, browser_id)
        conv = conversation_id(choice)
        try:
            if conv is None:
                raise InvalidInput("There is no conversation to delete.")
            removed = await self.service.delete_conversation(
                ident.key, conv, person=self.people.person(request, ident)
            )
            turns = await self.service.history(ident.key)
            listing, title, md, js = await self._refresh(ident.key)
        except Exception as exc:
            user_error(exc)
        s = "" if removed == 1 else "s"
        note = f"Deleted the conversation ({removed} message{s})."
        return listing, title, to_chat(turns), md, js, note, gr.update(visible=False)


def build_conversation_list(
    service: ChatService, people: People | None = None
) -> tuple[ConversationControls, ConversationHandlers]:
    """Lay out the list inside the current Blocks context (events are wired by the caller)."""
    handlers = ConversationHandlers(service, people)
    listing = gr.Radio(
        choices=[],
        value=None,
        label="Conversations",
        info="Newest first. Choose one to continue it.",
        elem_id="conv-list",
        interactive=True,
    )
    title = gr.Textbox(
        label="Title",
        placeholder="A title for the open conversation",
        max_lines=1,
        max_length=200,
        elem_id="conv-title",
    )
    with gr.Row():
        rename = gr.Button("Rename", size="sm", elem_id="conv-rename")
        delete = gr.Button("Delete", size="sm", variant="stop", elem_id="conv-delete")
    confirm = gr.Button(
        "Yes, delete", size="sm", variant="stop", visible=False, elem_id="conv-confirm-delete"
    )
    with gr.Row():
        download_md = gr.DownloadButton(
            "⬇ Markdown", size="sm", interactive=False, elem_id="conv-download-md"
        )
        download_json = gr.DownloadButton(
            "⬇ JSON", size="sm", interactive=False, elem_id="conv-download-json"
        )
    note = gr.Markdown("", elem_id="conv-note")
    controls = ConversationControls(
        listing, title, rename, delete, confirm, download_md, download_json, note
    )
    return controls, handlers
