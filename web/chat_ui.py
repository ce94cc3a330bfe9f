"""The chat tab: streaming answers, stop, retry, new conversation, persona and sampling controls.

The page never holds the truth: every handler reloads the visitor's conversation from the
memory store (the same SQLite file the bots use), so a reload, a second tab or a server
restart shows exactly what is remembered. History goes to Gradio in the messages format.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.errors import ConversationBusy
from core.memory import Turn
from core.service import ChatService, Delta, Done, ReplyEvent, Started
from web.render import (
    ChatMessage,
    dropped_note,
    message,
    stats_line,
    to_chat,
    user_markdown,
)
from web.ui_common import People, user_error, who

MAX_TOKENS_CAP = 2048
BUSY_MESSAGE = "Still answering your previous message: press Stop, or wait for it to finish."
#: Outputs of send/retry: chatbot, textbox, status, browser id.
ChatUpdate = tuple[list[ChatMessage], str, str, str]


def max_tokens_limit(n_ctx: int) -> int:
    """The slider's upper end: leave room for at least a short prompt in the context."""
    return max(16, min(MAX_TOKENS_CAP, n_ctx - 64))


def _started_status(event: Started) -> str:
    lines = []
    if event.queue_position > 0:
        ahead = event.queue_position
        lines.append(f"Waiting for the model ({ahead} answer{'s' if ahead > 1 else ''} ahead)…")
    else:
        lines.append("Answering…")
    note = dropped_note(event.dropped_turns)
    if note:
        lines.append(note)
    return "\n\n".join(lines)


def _done_status(done: Done) -> str:
    line = stats_line(
        completion_tokens=done.completion_tokens,
        prompt_tokens=done.prompt_tokens,
        ttft=done.ttft_seconds,
        total=done.total_seconds,
        finish_reason=done.finish_reason,
    )
    if not done.text and done.finish_reason != "cancelled":
        line = "The model returned an empty answer; try ↻ Retry. · " + line
    note = dropped_note(done.dropped_turns)
    return f"{line}\n\n{note}" if note else line


def _without_last_answer(turns: list[Turn]) -> list[Turn]:
    while turns and turns[-1].role == "assistant":
        turns = turns[:-1]
    return turns


@dataclass
class ChatControls:
    """The components the page-level load event fills in."""

    chatbot: gr.Chatbot
    textbox: gr.Textbox
    status: gr.Markdown
    persona: gr.Textbox
    temperature: gr.Slider
    max_tokens: gr.Slider


class ChatHandlers:
    """Event handlers of the chat tab, bound to one :class:`ChatService`."""

    def __init__(self, service: ChatService, people: People | None = None) -> None:
        self.service = service
        self.people = people or People()

    async def _stream(
        self,
        events: AsyncIterator[ReplyEvent],
        shown: list[ChatMessage],
        browser_id: str,
    ) -> AsyncIterator[ChatUpdate]:
        """Show a reply as it streams; input errors keep the message in the box (nothing lost)."""
        try:
            first = await anext(events)
        except ConversationBusy:
            # The service's wording names the bots' /cancel command; the page has a button.
            user_error(ConversationBusy(BUSY_MESSAGE))
        except StopAsyncIteration:  # pragma: no cover - a reply always starts
            return
        except Exception as exc:  # a FinechatError's own text, else a generic apology
            await _close(events)
            user_error(exc)
        answer = ""
        status = ""
        try:
            event: ReplyEvent | None = first
            while event is not None:
                if isinstance(event, Started):
                    status = _started_status(event)
                    yield [*shown, message("assistant", "")], "", status, browser_id
                elif isinstance(event, Delta):
                    answer += event.text
                    yield [*shown, message("assistant", answer)], "", status, browser_id
                elif isinstance(event, Done):
                    final = event.text or answer
                    body = [*shown, message("assistant", final)] if final else shown
                    yield body, "", _done_status(event), browser_id
                event = await anext(events, None)
        except Exception as exc:
            user_error(exc)
        finally:
            await _close(events)

    async def send(
        self,
        text: str,
        temperature: float,
        max_tokens: float,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> AsyncIterator[ChatUpdate]:
        """Answer ``text`` in the visitor's conversation, streaming partial answers."""
        ident = who(request, profile, browser_id)
        settings = {"temperature": temperature, "max_tokens": int(max_tokens)}
        try:
            shown = to_chat(await self.service.history(ident.key))
        except Exception as exc:
            user_error(exc)
        events = self.service.reply(
            ident.key,
            text or "",
            settings=settings,
            person=self.people.person(request, ident),
        )
        shown = [*shown, message("user", (text or "").strip())]
        async for update in self._stream(events, shown, ident.browser_id):
            yield update

    async def retry(
        self,
        temperature: float,
        max_tokens: float,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> AsyncIterator[ChatUpdate]:
        """A new answer to the last message; the old answer stays on disk as a branch."""
        ident = who(request, profile, browser_id)
        settings = {"temperature": temperature, "max_tokens": int(max_tokens)}
        try:
            shown = to_chat(_without_last_answer(await self.service.history(ident.key)))
        except Exception as exc:
            user_error(exc)
        events = self.service.retry(
            ident.key, settings=settings, person=self.people.person(request, ident)
        )
        async for update in self._stream(events, shown, ident.browser_id):
            yield update

    def stop(
        self, browser_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> str:
        """Stop the answer in flight; the streaming handler then finishes on its own."""
        ident = who(request, profile, browser_id)
        if self.service.cancel(ident.key):
            return "Stopping…"
        return "Nothing to stop."

    async def new_conversation(
        self, browser_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> tuple[list[ChatMessage], str]:
        ident = who(request, profile, browser_id)
        try:
            await self.service.reset(ident.key)
        except Exception as exc:
            user_error(exc)
        return [], "New conversation. The previous one is still saved on the server."

    async def save_persona(
        self,
        persona: str,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[str, str]:
        """Set the system prompt; an empty box restores the default."""
        ident = who(request, profile, browser_id)
        try:
            await self.service.set_persona(
                ident.key, persona or None, person=self.people.person(request, ident)
            )
            current = await self.service.get_persona(ident.key)
        except Exception as exc:
            user_error(exc)
        restored = not (persona or "").strip()
        note = "Persona reset to the default." if restored else "Persona saved."
        return current, f"{note} It applies from your next message."

    async def save_settings(
        self,
        temperature: float,
        max_tokens: float,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> str:
        ident = who(request, profile, browser_id)
        try:
            await self.service.update_settings(
                ident.key,
                {"temperature": temperature, "max_tokens": int(max_tokens)},
                person=self.people.person(request, ident),
            )
        except Exception as exc:
            user_error(exc)
        return f"Settings saved: temperature {temperature:g}, up to {int(max_tokens)} tokens."

    async def load(
        self, browser_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> tuple[str, list[ChatMessage], str, float, int, str]:
        """Page load: the visitor's id (created on first visit), history, persona, settings."""
        ident = who(request, profile, browser_id)
        try:
            if ident.legacy_key is not None:
                # Earlier versions kept Hugging Face logins at web:NAME; move them over once.
                await self.service.store.adopt_key(ident.legacy_key, ident.key)
            turns = await self.service.history(ident.key)
            persona = await self.service.get_persona(ident.key)
            sampling = await self.service.sampling_for(ident.key)
        except Exception as exc:
            user_error(exc)
        limit = max_tokens_limit(self.service.engine.info.n_ctx)
        if ident.signed_in:
            assert ident.login is not None
            who_line = (
                f"Signed in as **{user_markdown(ident.login)}**: your conversation is saved "
                "with your account."
            )
        else:
            who_line = (
                "Not signed in: this browser keeps your conversation (a private id in its "
                "local storage). Clearing site data starts afresh."
            )
        return (
            ident.browser_id,
            to_chat(turns),
            persona,
            float(sampling.temperature),
            min(int(sampling.max_tokens), limit),
            who_line,
        )


def build_chat_tab(
    service: ChatService, browser_state: gr.BrowserState, people: People | None = None
) -> ChatControls:
    """Lay out the chat tab inside the current Blocks context and wire its events."""
    handlers = ChatHandlers(service, people)
    limit = max_tokens_limit(service.engine.info.n_ctx)
    defaults = service.defaults
    chatbot = gr.Chatbot(
        label=f"Chat with {service.model_name}",
        elem_id="chatbot",
        height=520,
        buttons=["copy", "copy_all"],
        feedback_options=None,
        sanitize_html=True,
        allow_tags=False,
        placeholder="Say hello. Your conversation is remembered.",
    )
    status = gr.Markdown("", elem_id="chat-status")
    with gr.Row(equal_height=True):
        textbox = gr.Textbox(
            show_label=False,
            placeholder="Message (Enter sends, Shift+Enter adds a line)",
            lines=1,
            max_lines=10,
            scale=8,
            autofocus=True,
            elem_id="chat-input",
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="chat-send")
        stop = gr.Button("■ Stop", variant="stop", scale=1, min_width=80, elem_id="chat-stop")
    with gr.Row():
        retry = gr.Button("↻ Retry", size="sm", elem_id="chat-retry")
        new = gr.Button("+ New conversation", size="sm", elem_id="chat-new")
    with gr.Accordion("Persona and settings", open=False):
        persona = gr.Textbox(
            label="Persona (system prompt)",
            info="How the assistant should behave. Empty = the server's default.",
            lines=3,
            max_lines=12,
            elem_id="chat-persona",
        )
        save_persona = gr.Button("Save persona", size="sm", elem_id="chat-save-persona")
        with gr.Row():
            temperature = gr.Slider(
                0.0,
                2.0,
                value=defaults.temperature,
                step=0.05,
                label="Temperature",
                info="0 = always the most likely word; higher = more varied",
            )
            max_tokens = gr.Slider(
                16,
                limit,
                value=min(defaults.max_tokens, limit),
                step=16,
                label="Max tokens per answer",
            )

    gen_inputs: list[Any] = [temperature, max_tokens, browser_state]
    chat_outputs: list[Any] = [chatbot, textbox, status, browser_state]
    send.click(
        handlers.send,
        [textbox, *gen_inputs],
        chat_outputs,
        api_name="chat",
        show_progress="hidden",
        concurrency_limit=None,
    )
    textbox.submit(
        handlers.send,
        [textbox, *gen_inputs],
        chat_outputs,
        api_visibility="private",
        show_progress="hidden",
        concurrency_limit=None,
    )
    retry.click(
        handlers.retry,
        gen_inputs,
        chat_outputs,
        api_name="retry",
        show_progress="hidden",
        concurrency_limit=None,
    )
    stop.click(handlers.stop, [browser_state], [status], api_name="stop", queue=False)
    new.click(handlers.new_conversation, [browser_state], [chatbot, status], api_name="new")
    # The chatbot's own trash icon means the same thing (else a reload would bring it all back).
    chatbot.clear(
        handlers.new_conversation,
        [browser_state],
        [chatbot, status],
        api_visibility="private",
    )
    save_persona.click(
        handlers.save_persona, [persona, browser_state], [persona, status], api_name="persona"
    )
    for slider in (temperature, max_tokens):
        slider.release(
            handlers.save_settings,
            gen_inputs,
            [status],
            api_name="settings",
            api_visibility="public" if slider is temperature else "private",
            show_progress="hidden",
        )
    return ChatControls(chatbot, textbox, status, persona, temperature, max_tokens)


def wire_load(
    demo: gr.Blocks,
    service: ChatService,
    browser_state: gr.BrowserState,
    controls: ChatControls,
    who_line: gr.Markdown,
    people: People | None = None,
) -> None:
    handlers = ChatHandlers(service, people)
    demo.load(
        handlers.load,
        [browser_state],
        [
            browser_state,
            controls.chatbot,
            controls.persona,
            controls.temperature,
            controls.max_tokens,
            who_line,
        ],
        api_name="history",
        show_progress="hidden",
    )


async def _close(events: AsyncIterator[ReplyEvent]) -> None:
    closer = getattr(events, "aclose", None)  # service streams are async generators
    if closer is not None:
        await closer()
