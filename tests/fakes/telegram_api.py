"""A fake Telegram Bot API server on 127.0.0.1 for driving the real python-telegram-bot client.

It speaks the HTTP protocol PTB speaks (``POST /bot<token>/<method>`` with form fields whose
non-string values are JSON) and keeps just enough state to check what a person would see:
each chat's messages with their current text, after parsing HTML the way Telegram does —
strictly: unknown tags, misnesting and bare ``<``/``&`` are rejected with Telegram's
"can't parse entities" error, and texts over 4,096 UTF-16 code units with "message is too long".

Scenarios are driven through ``getUpdates`` (:meth:`FakeBotAPI.send_text` queues an update
and the bot's long poll picks it up). Faults can be armed per method: HTTP 429 with
``retry_after`` or 400 "can't parse entities". Every call is recorded with a monotonic time
stamp, and :meth:`FakeBotAPI.wait_for` waits on a condition over the recorded state instead
of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

MAX_TEXT = 4096
ALLOWED_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "span",
    "tg-spoiler",
    "a",
    "code",
    "pre",
    "blockquote",
    "tg-emoji",
}
_STRING_FIELDS = {"text", "parse_mode", "action", "caption", "description", "short_description"}


class EntityError(ValueError):
    pass


class _TelegramHTML(HTMLParser):
    """Telegram's HTML mode: a few tags, proper nesting, only four named entities."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            raise EntityError(f'Unsupported start tag "{tag}"')
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            raise EntityError(f'Unmatched end tag "{tag}"')
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if "<" in data:
            raise EntityError("Unsupported start tag")
        self.text.append(data)

    def handle_entityref(self, name: str) -> None:
        table = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
        if name not in table:
            raise EntityError(f'Unsupported entity "&{name};"')
        self.text.append(table[name])

    def handle_charref(self, name: str) -> None:
        self.text.append(chr(int(name[1:], 16) if name.lower().startswith("x") else int(name)))


def visible_text(html: str) -> str:
    """The text a person sees for an HTML-mode message, or EntityError like Telegram."""
    if "&" in re.sub(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);", "", html):
        raise EntityError("Can't find end of the entity")
    parser = _TelegramHTML()
    parser.feed(html)
    parser.close()
    if parser.stack:
        raise EntityError(f'Can\'t find end tag corresponding to start tag "{parser.stack[-1]}"')
    return "".join(parser.text)


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int = 200


@dataclass
class FakeMessage:
    chat_id: int
    message_id: int
    text: str
    """What the person sees (HTML parsed)."""
    source: str
    """What the bot sent."""
    parse_mode: str | None
    from_bot: bool
    author: User | None = None
    chat_type: str = "private"
    reply_to: int | None = None
    edits: int = 0
    sent_at: float = 0.0
    thread_id: int | None = None
    """The forum topic (``message_thread_id``) the message is in."""


@dataclass
class Fault:
    method: str
    kind: str  # "retry_after" | "bad_entities"
    retry_after: float = 1
    remaining: int = 1
    when: Callable[[dict[str, Any]], bool] | None = None


@dataclass
class User:
    id: int
    first_name: str
    is_bot: bool = False
    username: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.username:
            d["username"] = self.username
        return d


@dataclass
class FakeBotAPI:
    token: str
    bot: User = field(
        default_factory=lambda: User(7000001, "Finechat", is_bot=True, username="finechat_test_bot")
    )
    calls: list[Call] = field(default_factory=list)
    messages: dict[tuple[int, int], FakeMessage] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    update_times: dict[int, float] = field(default_factory=dict)
    """update_id → when getUpdates handed it to the bot."""

    def __post_init__(self) -> None:
        self._updates: list[dict[str, Any]] = []
        self._next_update = 1
        self._next_message: dict[int, int] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.stopping = True
        await self._notify()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- driving ---------------------------------------------------------------------------

    def send_text(
        self,
        chat_id: int,
        user: User,
        text: str,
        *,
        chat_type: str = "private",
        reply_to: tuple[int, int] | None = None,
        reply_to_message: dict[str, Any] | None = None,
        instead_of_text: dict[str, Any] | None = None,
        topic: int | None = None,
    ) -> int:
        """Queue an incoming text message; returns its message id.

        ``instead_of_text`` sends other content (e.g. ``{"location": {...}}``) and no text; a
        ``caption`` in it gets its entities like a text would. ``topic`` puts the message in
        that forum topic, as Telegram does: ``message_thread_id``, ``is_topic_message`` and,
        when it replies to nothing else, a reply to the topic's creation message.
        """
        message_id = self._new_message_id(chat_id)
        msg: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": _chat(chat_id, chat_type, user, forum=topic is not None),
            "from": user.as_dict(),
        }
        if instead_of_text is not None:
            msg.update(instead_of_text)
            caption_entities = _entities(str(instead_of_text.get("caption", "")))
            if caption_entities:
                msg["caption_entities"] = caption_entities
        else:
            msg["text"] = text
        entities = _entities(text) if instead_of_text is None else []
        if entities:
            msg["entities"] = entities
        if topic is not None:
            msg["message_thread_id"] = topic
            msg["is_topic_message"] = True
        if reply_to is not None:
            target = self.messages[reply_to]
            msg["reply_to_message"] = self._message_dict(target)
        elif reply_to_message is not None:
            msg["reply_to_message"] = reply_to_message
        elif topic is not None:
            msg["reply_to_message"] = {
                "message_id": topic,
                "date": int(time.time()),
                "chat": _chat(chat_id, chat_type, user, forum=True),
                "from": user.as_dict(),
                "message_thread_id": topic,
                "forum_topic_created": {"name": f"Topic {topic}", "icon_color": 7322096},
            }
        self.messages[(chat_id, message_id)] = FakeMessage(
            chat_id,
            message_id,
            text,
            text,
            None,
            from_bot=False,
            author=user,
            chat_type=chat_type,
            thread_id=topic,
        )
        self._updates.append({"update_id": self._next_update, "message": msg})
        self._next_update += 1
        asyncio.get_running_loop().create_task(self._notify())
        return message_id

    def fail(
        self,
        method: str,
        kind: str,
        *,
        retry_after: float = 1,
        times: int = 1,
        when: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Fault:
        fault = Fault(method, kind, retry_after, times, when)
        self.faults.append(fault)
        return fault

    # -- inspecting ------------------------------------------------------------------------

    def bot_messages(self, chat_id: int) -> list[FakeMessage]:
        return sorted(
            (m for (c, _), m in self.messages.items() if c == chat_id and m.from_bot),
            key=lambda m: m.message_id,
        )

    def calls_to(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and (chat_id is None or c.params.get("chat_id") == chat_id)
        ]

    async def wait_for(self, condition: Callable[[], Any], within: float = 60.0) -> Any:
        """Wait until ``condition()`` is truthy (re-checked on every API call)."""
        async with asyncio.timeout(within), self._changed:
            while True:
                value = condition()
                if value:
                    return value
                await self._changed.wait()

    # -- the HTTP side ---------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await _params(request)
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        try:
            fault = self._take_fault(method, params)
            if fault is not None:
                call.status = 429 if fault.kind == "retry_after" else 400
                if fault.kind == "retry_after":
                    return _error(
                        429,
                        f"Too Many Requests: retry after {fault.retry_after}",
                        {"retry_after": fault.retry_after},
                    )
                return _error(
                    400,
                    "Bad Request: can't parse entities: Can't find end of the entity "
                    "starting at byte offset 0",
                )
            handler = getattr(self, "_api_" + method, None)
            if handler is None:
                call.status = 404
                return _error(404, "Not Found: method not found")
            try:
                result = await handler(params)
            except _APIError as exc:
                call.status = exc.status
                return _error(exc.status, exc.description)
            return web.json_response({"ok": True, "result": result})
        finally:
            await self._notify()

    def _take_fault(self, method: str, params: dict[str, Any]) -> Fault | None:
        for fault in self.faults:
            if fault.method == method and fault.remaining > 0:
                if fault.when is not None and not fault.when(params):
                    continue
                fault.remaining -= 1
                return fault
        return None

    # -- methods ---------------------------------------------------------------------------

    async def _api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.bot.as_dict(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_setMyCommands(self, params: dict[str, Any]) -> bool:
        self.commands = list(params.get("commands", []))
        return True

    async def _api_sendChatAction(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        timeout = min(float(params.get("timeout") or 0), 5.0)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not self._updates and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        await self._changed.wait()
                except TimeoutError:
                    break
        batch = self._updates[: int(params.get("limit") or 100)]
        now = time.monotonic()
        for update in batch:
            self.update_times.setdefault(update["update_id"], now)
        return batch

    async def _api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        text, source = self._render(params)
        reply = params.get("reply_parameters") or {}
        thread = params.get("message_thread_id")
        message = FakeMessage(
            chat_id,
            self._new_message_id(chat_id),
            text,
            source,
            params.get("parse_mode"),
            from_bot=True,
            chat_type=self._chat_type(chat_id),
            reply_to=reply.get("message_id"),
            sent_at=time.monotonic(),
            thread_id=int(thread) if thread is not None else None,
        )
        self.messages[(chat_id, message.message_id)] = message
        return self._message_dict(message)

    async def _api_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        key = (chat_id, int(params["message_id"]))
        message = self.messages.get(key)
        if message is None or not message.from_bot:
            raise _APIError(400, "Bad Request: message to edit not found")
        text, source = self._render(params)
        if source == message.source and params.get("parse_mode") == message.parse_mode:
            raise _APIError(
                400,
                "Bad Request: message is not modified: specified new message content and "
                "reply markup are exactly the same as a current content and reply markup "
                "of the message",
            )
        message.text, message.source = text, source
        message.parse_mode = params.get("parse_mode")
        message.edits += 1
        return self._message_dict(message)

    async def _api_deleteMessage(self, params: dict[str, Any]) -> bool:
        key = (int(params["chat_id"]), int(params["message_id"]))
        if self.messages.pop(key, None) is None:
            raise _APIError(400, "Bad Request: message to delete not found")
        return True

    # -- helpers ---------------------------------------------------------------------------

    def _render(self, params: dict[str, Any]) -> tuple[str, str]:
        source = str(params.get("text", ""))
        if re.search("[\ud800-\udfff]", source):  # a lone surrogate is not UTF-8
            raise _APIError(400, "Bad Request: strings must be encoded in UTF-8")
        text = source
        if params.get("parse_mode") == "HTML":
            try:
                text = visible_text(source)
            except EntityError as exc:
                raise _APIError(400, f"Bad Request: can't parse entities: {exc}") from None
        if not text.strip():
            raise _APIError(400, "Bad Request: message text is empty")
        if _utf16_len(text) > MAX_TEXT:  # Telegram counts UTF-16 units: an emoji is two
            raise _APIError(400, "Bad Request: message is too long")
        return text, source

    def _new_message_id(self, chat_id: int) -> int:
        self._next_message[chat_id] = self._next_message.get(chat_id, 0) + 1
        return self._next_message[chat_id]

    def _chat_type(self, chat_id: int) -> str:
        for (c, _), m in self.messages.items():
            if c == chat_id and not m.from_bot:
                return m.chat_type
        return "private"

    def _message_dict(self, message: FakeMessage) -> dict[str, Any]:
        author = self.bot if message.from_bot else message.author or self.bot
        forum = message.thread_id is not None
        out: dict[str, Any] = {
            "message_id": message.message_id,
            "date": int(time.time()),
            "chat": _chat(message.chat_id, message.chat_type, message.author, forum=forum),
            "from": author.as_dict(),
            "text": message.text,
        }
        if forum:
            out["message_thread_id"] = message.thread_id
            out["is_topic_message"] = True
        return out


class _APIError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def _chat(
    chat_id: int, chat_type: str, user: User | None, *, forum: bool = False
) -> dict[str, Any]:
    if chat_type == "private":
        return {"id": chat_id, "type": "private", "first_name": user.first_name if user else "x"}
    chat: dict[str, Any] = {"id": chat_id, "type": chat_type, "title": f"Group {chat_id}"}
    if forum:
        chat["is_forum"] = True
    return chat


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


async def _params(request: web.Request) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if request.content_type == "application/json":
        raw = await request.json()
    else:
        form = await request.post()
        raw = {k: v for k, v in form.items() if isinstance(v, str)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _STRING_FIELDS or not isinstance(value, str):
            out[key] = value
            continue
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _entities(text: str) -> list[dict[str, Any]]:
    """bot_command at the start and @mentions, as Telegram's clients would mark them."""
    found: list[dict[str, Any]] = []
    command = re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text)
    if command:
        found.append({"type": "bot_command", "offset": 0, "length": _utf16_len(command.group(0))})
    for mention in re.finditer(r"(?<![\w/@])@[A-Za-z0-9_]{3,}", text):
        found.append(
            {
                "type": "mention",
                "offset": _utf16_len(text[: mention.start()]),
                "length": _utf16_len(mention.group(0)),
            }
        )
    return found
