"""The chat tab: streaming answers, stop, retry, edit, 👍/👎, new conversation, the list of
conversations, persona and sampling controls.

The page never holds the truth: every handler reloads the visitor's conversation from the
memory store (the same SQLite file the bots use), so a reload, a second tab or a server
restart shows exactly what is remembered. History goes to Gradio in the messages format.

Editing loads the last message's stored text (not its escaped display form) into the message
box; sending it then makes a new branch through ``ChatService.edit`` (the old message and its
answer stay on disk). 👍/👎 use the Chatbot's own buttons; each click names a message by its
position, which is checked against the stored conversation before the rating is saved.
"""

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from core.errors import ConversationBusy, InvalidInput
from core.memory import Turn
from core.service import ChatService, Delta, Done, ReplyEvent, Started
from web.conversations_ui import (
    ConversationControls,
    ConversationHandlers,
    build_conversation_list,
)
from web.render import (
    ChatMessage,
    dropped_note,
    feedback_values,
    message,
    message_text,
    stats_line,
    to_chat,
    user_markdown,
)
from web.ui_common import People, user_error, who

MAX_TOKENS_CAP = 2048
BUSY_MESSAGE = "Still answering your previous message: press Stop, or wait for it to finish."
EDIT_LABEL = "✎ Edit last message"
EDITING_LABEL = "✕ Cancel edit"
EDITING_NOTE = (
    "Editing your last message: change it and press Send. The answer to the new version "
    "becomes a new branch; the old one stays saved."
)
FEEDBACK_OPTIONS = ("Like", "Dislike")
_RATINGS: dict[object, int | None] = {True: 1, False: -1, "": None}
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
    conversations: ConversationControls
    conversation_handlers: ConversationHandlers


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

    async def send_or_edit(
        self,
        text: str,
        temperature: float,
        max_tokens: float,
        browser_id: str | None,
        editing: int | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> AsyncIterator[tuple[list[ChatMessage], str, str, str, None]]:
        """The Send button: a new message, or the edited one while editing (then not any more)."""
        if not isinstance(editing, int) or isinstance(editing, bool):
            async for update in self.send(
                text, temperature, max_tokens, browser_id, request, profile
            ):
                yield (*update, None)
            return
        async for update in self.edit(
            text, editing, temperature, max_tokens, browser_id, request, profile
        ):
            yield (*update, None)

    async def edit(
        self,
        text: str,
        message_id: int,
        temperature: float,
        max_tokens: float,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> AsyncIterator[ChatUpdate]:
        """Replace a user message (the last one) with ``text``: a new branch."""
        ident = who(request, profile, browser_id)
        settings = {"temperature": temperature, "max_tokens": int(max_tokens)}
        try:
            history = await self.service.history(ident.key)
            cut = next((i for i, t in enumerate(history) if t.id == message_id), None)
            if cut is None:
                raise InvalidInput("That message is no longer in this conversation.")
            shown = to_chat(history[:cut])
        except Exception as exc:
            user_error(exc)
        events = self.service.edit(
            ident.key,
            text or "",
            message_id=message_id,
            settings=settings,
            person=self.people.person(request, ident),
        )
        shown = [*shown, message("user", (text or "").strip())]
        async for update in self._stream(events, shown, ident.browser_id):
            yield update

    async def start_edit(
        self,
        editing: int | None,
        text: str,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> tuple[str, int | None, str, Any]:
        """Put the last message's stored text in the box to edit (a second press cancels)."""
        if isinstance(editing, int) and not isinstance(editing, bool):
            return "", None, "Edit cancelled.", gr.update(value=EDIT_LABEL)
        ident = who(request, profile, browser_id)
        try:
            history = await self.service.history(ident.key)
        except Exception as exc:
            user_error(exc)
        last = next((t for t in reversed(history) if t.role == "user"), None)
        if last is None:
            user_error(InvalidInput("There is no message to edit yet."))
        return last.text, last.id, EDITING_NOTE, gr.update(value=EDITING_LABEL)

    async def feedback_marks(
        self, browser_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None
    ) -> Any:
        """The stored 👍/👎 of the shown answers (the chat's ``feedback_value``)."""
        ident = who(request, profile, browser_id)
        try:
            turns = await self.service.history(ident.key)
        except Exception as exc:
            user_error(exc)
        return gr.update(feedback_value=feedback_values(turns))

    async def like(
        self,
        data: gr.LikeData,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> str:
        """Store 👍/👎 (or clear it) on the answer at the clicked position."""
        ident = who(request, profile, browser_id)
        index = data.index[0] if isinstance(data.index, (tuple, list)) else data.index
        if data.liked not in _RATINGS:
            return ""
        try:
            turns = [
                t for t in await self.service.history(ident.key) if t.role in ("user", "assistant")
            ]
            if not isinstance(index, int) or not 0 <= index < len(turns):
                raise InvalidInput("That answer is no longer here; reload the page.")
            turn = turns[index]
            shown = message_text(data.value)
            if turn.role != "assistant" or (
                shown and shown != message("assistant", turn.text)["content"]
            ):
                raise InvalidInput("The conversation changed; reload the page and try again.")
            rating = _RATINGS[data.liked]
            await self.service.set_feedback(
                ident.key, turn.id, rating, person=self.people.person(request, ident)
            )
        except Exception as exc:
            user_error(exc)
        if rating is None:
            return "Feedback removed."
        return (
            "Thanks — saved as a good answer." if rating > 0 else "Thanks — saved as a poor answer."
        )

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
    service: ChatService,
    browser_state: gr.BrowserState,
    people: People | None = None,
    model_label: str | None = None,
) -> ChatControls:
    """Lay out the chat tab (conversation list, chat, controls) and wire its events."""
    handlers = ChatHandlers(service, people)
    limit = max_tokens_limit(service.engine.info.n_ctx)
    defaults = service.defaults
    editing = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=220, elem_id="conv-column"):
            conv, conv_handlers = build_conversation_list(service, people)
        with gr.Column(scale=3, min_width=320):
            chatbot = gr.Chatbot(
                label=f"Chat with {model_label or service.model_name}",
                elem_id="chatbot",
                height=520,
                buttons=["copy", "copy_all"],
                feedback_options=FEEDBACK_OPTIONS,
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
                send = gr.Button(
                    "Send", variant="primary", scale=1, min_width=80, elem_id="chat-send"
                )
                stop = gr.Button(
                    "■ Stop", variant="stop", scale=1, min_width=80, elem_id="chat-stop"
                )
            with gr.Row():
                retry = gr.Button("↻ Retry", size="sm", elem_id="chat-retry")
                edit = gr.Button(EDIT_LABEL, size="sm", elem_id="chat-edit")
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
    refresh = conv.refresh_outputs()

    def after(event: Any) -> None:
        """Once an answer (or its error) is done: the edit button, 👍/👎 and the list catch up."""
        event.then(lambda: gr.update(value=EDIT_LABEL), None, [edit], api_visibility="private")
        event.then(conv_handlers.refresh, [browser_state], refresh, api_visibility="private")
        event.then(handlers.feedback_marks, [browser_state], [chatbot], api_visibility="private")

    for trigger, visibility in ((send.click, "public"), (textbox.submit, "private")):
        after(
            trigger(
                handlers.send_or_edit,
                [textbox, *gen_inputs, editing],
                [*chat_outputs, editing],
                api_name="chat",
                api_visibility=visibility,  # type: ignore[arg-type]
                show_progress="hidden",
                concurrency_limit=None,
            )
        )
    after(
        retry.click(
            handlers.retry,
            gen_inputs,
            chat_outputs,
            api_name="retry",
            show_progress="hidden",
            concurrency_limit=None,
        )
    )
    edit.click(
        handlers.start_edit,
        [editing, textbox, browser_state],
        [textbox, editing, status, edit],
        api_visibility="private",
        show_progress="hidden",
    )
    chatbot.like(
        handlers.like,
        [browser_state],
        [status],
        api_visibility="private",
        show_progress="hidden",
    )
    stop.click(handlers.stop, [browser_state], [status], api_name="stop", queue=False)
    after(new.click(handlers.new_conversation, [browser_state], [chatbot, status], api_name="new"))
    # The chatbot's own trash icon means the same thing (else a reload would bring it all back).
    after(
        chatbot.clear(
            handlers.new_conversation,
            [browser_state],
            [chatbot, status],
            api_visibility="private",
        )
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
    wire_conversation_list(conv, conv_handlers, browser_state, chatbot, editing, edit, after)
    return ChatControls(
        chatbot, textbox, status, persona, temperature, max_tokens, conv, conv_handlers
    )


def wire_conversation_list(
    conv: ConversationControls,
    handlers: ConversationHandlers,
    browser_state: gr.BrowserState,
    chatbot: gr.Chatbot,
    editing: gr.State,
    edit: gr.Button,
    after: Callable[[Any], None],
) -> None:
    refresh = conv.refresh_outputs()
    opened = conv.listing.input(
        handlers.open,
        [conv.listing, browser_state],
        [conv.listing, conv.title, chatbot, conv.download_md, conv.download_json, conv.note,
         conv.confirm_delete],
        api_name="open_conversation",
        show_progress="hidden",
    )  # fmt: skip
    # A conversation switch ends any edit in progress; its 👍/👎 show.
    opened.then(lambda: None, None, [editing], api_visibility="private")
    after(opened)
    for trigger in (conv.rename.click, conv.title.submit):
        trigger(
            handlers.rename,
            [conv.listing, conv.title, browser_state],
            [*refresh, conv.note],
            api_name="rename_conversation",
            api_visibility="public" if trigger == conv.rename.click else "private",
            show_progress="hidden",
        )
    conv.delete.click(
        handlers.ask_delete,
        [conv.listing],
        [conv.confirm_delete, conv.note],
        api_visibility="private",
        queue=False,
    )
    deleted = conv.confirm_delete.click(
        handlers.delete,
        [conv.listing, browser_state],
        [conv.listing, conv.title, chatbot, conv.download_md, conv.download_json, conv.note,
         conv.confirm_delete],
        api_name="delete_conversation",
        show_progress="hidden",
    )  # fmt: skip
    deleted.then(lambda: None, None, [editing], api_visibility="private")
    after(deleted)


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
    ).then(
        controls.conversation_handlers.refresh,
        [browser_state],
        controls.conversations.refresh_outputs(),
        api_name="conversations",
        show_progress="hidden",
    ).then(
        handlers.feedback_marks,
        [browser_state],
        [controls.chatbot],
        api_visibility="private",
        show_progress="hidden",
    )


async def _close(events: AsyncIterator[ReplyEvent]) -> None:
    closer = getattr(events, "aclose", None)  # service streams are async generators
    if closer is not None:
        await closer()
