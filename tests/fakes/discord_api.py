"""A small fake Discord on 127.0.0.1: a JSON-text WebSocket gateway plus the REST routes a bot uses.

It speaks enough of the real protocol for the real discord.py client: HELLO, heartbeat ACKs,
IDENTIFY → READY + GUILD_CREATE (one guild, a category, a text channel, roles, members), and
dispatches (MESSAGE_CREATE, THREAD_CREATE, INTERACTION_CREATE) pushed by the test. REST covers
login (users/@me, oauth2/applications/@me), command sync, create/edit/delete message, typing,
threads from a message, interaction callbacks and webhook follow-ups. Every REST call is
recorded with its arrival time; :meth:`FakeDiscord.rate_limit_next` makes the next matching
request answer HTTP 429 with ``retry_after`` (with the ``Via`` header Discord's edge adds, which
discord.py requires to treat it as a rate limit rather than a Cloudflare ban).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

TOKEN = "fake-token.abc.def"
BOT_ID = 900
APP_ID = 900
GUILD_ID = 10
CATEGORY_ID = 19
CHANNEL_ID = 20
OTHER_CHANNEL_ID = 21
ROLE_ID = 30
ALICE = 101
BOB = 102
CAROL = 103
OTHER_BOT = 104
ADA = 105
MESSAGE_CONTENT_INTENT = 1 << 15

USERS = {
    BOT_ID: {"username": "finechat", "bot": True},
    ALICE: {"username": "alice"},
    BOB: {"username": "bob"},
    CAROL: {"username": "carol"},
    OTHER_BOT: {"username": "otherbot", "bot": True},
    ADA: {"username": "ada"},
}
MEMBER_ROLES = {ALICE: [ROLE_ID], BOB: [], CAROL: [], BOT_ID: [], OTHER_BOT: [], ADA: []}
MAX_CONTENT = 2000


def user(uid: int) -> dict[str, Any]:
    info = USERS[uid]
    return {
        "id": str(uid),
        "username": info["username"],
        "global_name": info["username"],
        "discriminator": "0",
        "avatar": None,
        "bot": bool(info.get("bot", False)),
    }


def member(uid: int) -> dict[str, Any]:
    return {
        "user": user(uid),
        "roles": [str(r) for r in MEMBER_ROLES[uid]],
        "joined_at": "2026-01-01T00:00:00+00:00",
        "deaf": False,
        "mute": False,
        "flags": 0,
    }


def _now() -> str:
    return "2026-11-28T00:00:00+00:00"


@dataclass
class Call:
    method: str
    path: str
    body: Any
    at: float
    status: int = 200


@dataclass
class FakeDiscord:
    token: str = TOKEN
    forbid_threads: bool = False
    """True answers thread creation with 403 Missing Permissions."""
    message_content_enabled: bool = True
    """False acts like a bot whose MESSAGE CONTENT switch is off in the developer portal."""
    url: str = ""
    gateway_url: str = ""
    calls: list[Call] = field(default_factory=list)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    commands: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    identified: asyncio.Event = field(default_factory=asyncio.Event)
    identify_count: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(5000))
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _ws: web.WebSocketResponse | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _limits: list[tuple[str, re.Pattern[str], float, bool]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    dispatched_at: dict[int, float] = field(default_factory=dict)
    threads: dict[int, dict[str, Any]] = field(default_factory=dict)
    interaction_ids: dict[str, int] = field(default_factory=dict)
    """Interaction token → interaction id."""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/api/v10"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"

    async def stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- test controls ---------------------------------------------------------------------

    def rate_limit_next(
        self, method: str, path_regex: str, retry_after: float, *, like_discord: bool = True
    ) -> None:
        """The next ``method`` request whose path matches gets a 429 with ``retry_after`` in
        the JSON body. ``like_discord=False`` leaves out the ``Via``/``Retry-After`` headers,
        as a bare proxy might (discord.py then raises instead of retrying by itself)."""
        self._limits.append((method, re.compile(path_regex), retry_after, like_discord))

    async def wait_for(self, predicate: Callable[[list[Call]], Any], limit: float = 60.0) -> Any:
        """Wait until ``predicate(calls)`` is truthy; return its value."""
        async with self._changed:
            result = await asyncio.wait_for(
                self._changed.wait_for(lambda: predicate(self.calls)), limit
            )
        return predicate(self.calls) if result is True else result

    def find(self, method: str, path_regex: str) -> list[Call]:
        rx = re.compile(path_regex)
        return [c for c in self.calls if c.method == method and rx.fullmatch(c.path)]

    def bot_messages(self, channel_id: int) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages.values()
            if m["channel_id"] == str(channel_id) and m["author"]["id"] == str(BOT_ID)
        ]

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        assert self._ws is not None, "the bot is not connected"
        await self._ws.send_str(json.dumps({"op": 0, "t": event, "s": next(self._seq), "d": data}))

    async def user_message(
        self,
        author: int,
        content: str,
        *,
        channel_id: int = CHANNEL_ID,
        guild: bool = True,
        mentions: list[int] | None = None,
        reply_to: int | None = None,
        attachments: list[dict[str, Any]] | None = None,
    ) -> int:
        """Post a message as ``author`` (MESSAGE_CREATE) and return its id."""
        mid = next(self._ids)
        msg: dict[str, Any] = {
            "id": str(mid),
            "channel_id": str(channel_id),
            "author": user(author),
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [user(u) for u in (mentions or [])],
            "mention_roles": [],
            "attachments": [
                {
                    "id": str(next(self._ids)),
                    "filename": "file.txt",
                    "size": 10,
                    "url": "https://cdn.example/file.txt",
                    "proxy_url": "https://cdn.example/file.txt",
                    **a,
                }
                for a in attachments or []
            ],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if guild:
            msg["guild_id"] = str(GUILD_ID)
            msg["member"] = {k: v for k, v in member(author).items() if k != "user"}
        if reply_to is not None:
            msg["type"] = 19
            msg["message_reference"] = {
                "type": 0,
                "message_id": str(reply_to),
                "channel_id": str(channel_id),
                **({"guild_id": str(GUILD_ID)} if guild else {}),
            }
            if reply_to in self.messages:
                msg["referenced_message"] = self.messages[reply_to]
        self.messages[mid] = msg
        self.dispatched_at[mid] = time.monotonic()
        await self.dispatch("MESSAGE_CREATE", msg)
        return mid

    async def open_dm(self, uid: int) -> int:
        """A DM channel id for ``uid`` (discord.py learns it from the message itself)."""
        return 7000 + uid

    async def create_thread(self, *, joined: bool, name: str = "talk") -> int:
        tid = next(self._ids)
        data = self._thread_payload(tid, name, owner=ALICE)
        if joined:
            data["member"] = {
                "id": str(tid),
                "user_id": str(BOT_ID),
                "join_timestamp": _now(),
                "flags": 0,
            }
        await self.dispatch("THREAD_CREATE", {**data, "newly_created": True})
        return tid

    async def interaction(
        self,
        author: int,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        channel_id: int = CHANNEL_ID,
        guild: bool = True,
    ) -> str:
        """A slash command (INTERACTION_CREATE); returns its token for the follow-up routes."""
        iid = next(self._ids)
        token = f"itoken-{iid}"
        self.interaction_ids[token] = iid
        guild_cmds = self.commands.get(str(GUILD_ID), []) or self.commands.get("global", [])
        cmd = next(c for c in guild_cmds if c["name"] == name)
        where: dict[str, Any] = (
            {
                "guild_id": str(GUILD_ID),
                "channel": {"id": str(channel_id), "type": 0, "guild_id": str(GUILD_ID)},
                "member": {**member(author), "permissions": "0"},
            }
            if guild
            else {"channel": {"id": str(channel_id), "type": 1}, "user": user(author)}
        )
        if channel_id in self.threads:
            where["channel"] = {**self.threads[channel_id], "type": 11}
        data: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(APP_ID),
            "type": 2,
            "token": token,
            "version": 1,
            "channel_id": str(channel_id),
            **where,
            "app_permissions": "0",
            "attachment_size_limit": 8388608,
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {},
            "data": {
                "id": cmd["id"],
                "name": name,
                "type": 1,
                **({"guild_id": str(GUILD_ID)} if guild else {}),
                "options": [
                    {"name": k, "type": 5 if isinstance(v, bool) else 3, "value": v}
                    for k, v in (options or {}).items()
                ],
            },
        }
        await self.dispatch("INTERACTION_CREATE", data)
        return token

    # -- gateway ---------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            payload = json.loads(msg.data)
            op = payload.get("op")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif op == 2:
                if payload["d"].get("token") != self.token:
                    await ws.close(code=4004, message=b"Authentication failed.")
                    break
                if payload["d"].get("intents", 0) & MESSAGE_CONTENT_INTENT and not (
                    self.message_content_enabled
                ):
                    await ws.close(code=4014, message=b"Disallowed intent(s).")
                    break
                self.identify_count += 1
                await self._send_ready(ws)
                self.identified.set()
        return ws

    async def _send_ready(self, ws: web.WebSocketResponse) -> None:
        ready = {
            "v": 10,
            "user": user(BOT_ID),
            "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
            "session_id": "session-1",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(APP_ID), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await ws.send_str(json.dumps({"op": 0, "t": "READY", "s": next(self._seq), "d": ready}))
        guild = {
            "id": str(GUILD_ID),
            "name": "Test guild",
            "icon": None,
            "owner_id": str(ALICE),
            "unavailable": False,
            "member_count": len(USERS),
            "large": False,
            "features": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "system_channel_flags": 0,
            "emojis": [],
            "stickers": [],
            "roles": [
                _role(GUILD_ID, "@everyone", permissions="1024"),
                _role(ROLE_ID, "trusted", permissions="0"),
            ],
            "channels": [
                {"id": str(CATEGORY_ID), "type": 4, "name": "chat", "position": 0},
                *[
                    {
                        "id": str(cid),
                        "type": 0,
                        "name": f"general-{cid}",
                        "position": i,
                        "parent_id": str(CATEGORY_ID),
                        "permission_overwrites": [],
                        "nsfw": False,
                    }
                    for i, cid in enumerate((CHANNEL_ID, OTHER_CHANNEL_ID))
                ],
            ],
            "threads": [],
            "members": [member(u) for u in USERS],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "joined_at": _now(),
        }
        await ws.send_str(
            json.dumps({"op": 0, "t": "GUILD_CREATE", "s": next(self._seq), "d": guild})
        )

    # -- REST ------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json":
                body = json.loads(raw)
            elif request.content_type.startswith("multipart/"):
                body = {"multipart": raw.decode("utf-8", "replace")}
        call = Call(request.method, path, body, time.monotonic())
        limited = self._take_limit(request.method, path)
        if limited is not None:
            retry_after, like_discord = limited
            call.status = 429
            await self._record(call)
            return _json(
                {
                    "message": "You are being rate limited.",
                    "retry_after": retry_after,
                    "global": False,
                },
                status=429,
                headers={"Via": "1.1 google", "Retry-After": str(retry_after)}
                if like_discord
                else {},
            )
        auth = request.headers.get("Authorization", "")
        if not path.startswith(("/webhooks/", "/interactions/")) and auth != f"Bot {self.token}":
            call.status = 401
            await self._record(call)
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        status, data = self._checked(request.method, path, body, request.query)
        call.status = status
        if status == 200 and re.fullmatch(r"/channels/\d+/messages/\d+/threads", path):
            # Like Discord, announce the new thread on the gateway (discord.py caches it).
            await self.dispatch("THREAD_CREATE", {**data, "newly_created": True})
        await self._record(call)
        if status == 204:
            return web.Response(status=204)
        return _json(data, status=status)

    def _take_limit(self, method: str, path: str) -> tuple[float, bool] | None:
        for i, (m, rx, retry_after, like_discord) in enumerate(self._limits):
            if m == method and rx.fullmatch(path):
                del self._limits[i]
                return retry_after, like_discord
        return None

    async def _record(self, call: Call) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def _checked(self, method: str, path: str, body: Any, query: Any) -> tuple[int, Any]:
        """Discord's content checks, then the route: over 2,000 characters or not valid
        UTF-8 is a 400 (Invalid Form Body), like the real API."""
        text = (body or {}).get("content") if isinstance(body, dict) else None
        if text is None and isinstance(body, dict) and isinstance(body.get("data"), dict):
            text = body["data"].get("content")
        if isinstance(text, str):
            if len(text) > MAX_CONTENT:
                return 400, {"message": "Invalid Form Body", "code": 50035}
            if re.search("[\ud800-\udfff]", text):
                return 400, {"message": "Invalid Form Body", "code": 50109}
        return self._handle(method, path, body, query)

    def _handle(self, method: str, path: str, body: Any, query: Any) -> tuple[int, Any]:
        m = re.fullmatch
        if method == "GET" and path == "/users/@me":
            return 200, user(BOT_ID)
        if method == "GET" and path == "/oauth2/applications/@me":
            return 200, {
                "id": str(APP_ID),
                "name": "finechat",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": user(ALICE),
                "verify_key": "00",
                "flags": 0,
                "summary": "",
                "team": None,
            }
        if hit := m(r"/applications/\d+(?:/guilds/(\d+))?/commands", path):
            if method == "PUT":
                scope = hit.group(1) or "global"
                cmds = [
                    {
                        **c,
                        "id": str(next(self._ids)),
                        "application_id": str(APP_ID),
                        "version": "1",
                        "default_member_permissions": None,
                        "type": c.get("type", 1),
                        **({"guild_id": scope} if scope != "global" else {}),
                    }
                    for c in body
                ]
                self.commands[scope] = cmds
                return 200, cmds
            return 200, self.commands.get(hit.group(1) or "global", [])
        if hit := m(r"/channels/(\d+)/typing", path):
            return 204, None
        if (hit := m(r"/channels/(\d+)/messages", path)) and method == "POST":
            return 200, self._new_message(int(hit.group(1)), body)
        if hit := m(r"/channels/(\d+)/messages/(\d+)", path):
            mid = int(hit.group(2))
            if mid not in self.messages:
                return 404, {"message": "Unknown Message", "code": 10008}
            if method == "PATCH":
                self.messages[mid].update(
                    content=body.get("content", self.messages[mid]["content"]),
                    edited_timestamp=_now(),
                )
                return 200, self.messages[mid]
            if method == "DELETE":
                del self.messages[mid]
                return 204, None
        if hit := m(r"/channels/(\d+)/messages/(\d+)/threads", path):
            if self.forbid_threads:
                return 403, {"message": "Missing Permissions", "code": 50013}
            tid = next(self._ids)
            data = self._thread_payload(tid, body.get("name", "thread"), owner=BOT_ID)
            data["parent_id"] = hit.group(1)
            self.threads[tid] = data
            return 200, data
        if hit := m(r"/interactions/(\d+)/([^/]+)/callback", path):
            cb_type = body["type"]
            inner = body.get("data") or {}
            ephemeral = bool(inner.get("flags", 0) & 64)
            msg = self._new_message(
                CHANNEL_ID, {"content": inner.get("content", "")}, interaction=hit.group(2)
            )
            msg["flags"] = 64 if ephemeral else 0
            msg["interaction_token"] = hit.group(2)
            return 200, {
                "interaction": {
                    "id": hit.group(1),
                    "type": 2,
                    "response_message_id": msg["id"],
                    "response_message_loading": cb_type == 5,
                    "response_message_ephemeral": ephemeral,
                },
                "resource": {"type": cb_type, "message": msg},
            }
        if hit := m(r"/webhooks/(\d+)/([^/]+)/messages/(@original|\d+)", path):
            token, which = hit.group(2), hit.group(3)
            found = [
                x
                for x in self.messages.values()
                if x.get("interaction_token") == token
                and (which != "@original" or x.get("original"))
                and (which == "@original" or x["id"] == which)
            ]
            if not found:
                return 404, {"message": "Unknown Message", "code": 10008}
            if method == "PATCH":
                found[0].update(content=body.get("content", found[0]["content"]))
            return 200, found[0]
        if (hit := m(r"/webhooks/(\d+)/([^/]+)", path)) and method == "POST":
            msg = self._new_message(CHANNEL_ID, body, interaction=hit.group(2))
            msg["interaction_token"] = hit.group(2)
            msg["original"] = False
            msg["flags"] = body.get("flags", 0)
            return 200, msg
        return 404, {"message": f"fake Discord has no route {method} {path}", "code": 0}

    def _new_message(
        self, channel_id: int, body: dict[str, Any], *, interaction: str | None = None
    ) -> dict[str, Any]:
        mid = next(self._ids)
        msg: dict[str, Any] = {
            "id": str(mid),
            "channel_id": str(channel_id),
            "author": user(BOT_ID),
            "content": body.get("content") or "",
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "allowed_mentions": body.get("allowed_mentions"),
        }
        if channel_id in (CHANNEL_ID, OTHER_CHANNEL_ID) or channel_id in self.threads:
            msg["guild_id"] = str(GUILD_ID)
        if body.get("message_reference"):
            msg["type"] = 19
            msg["message_reference"] = body["message_reference"]
        if interaction is not None:
            msg["original"] = True
        self.messages[mid] = msg
        return msg

    def _thread_payload(self, tid: int, name: str, *, owner: int) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(tid),
            "type": 11,
            "guild_id": str(GUILD_ID),
            "parent_id": str(CHANNEL_ID),
            "owner_id": str(owner),
            "name": name,
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _now(),
                "locked": False,
            },
        }
        self.threads[tid] = data
        return data


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON exactly as Discord labels it (discord.py parses only ``application/json``)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _role(rid: int, name: str, *, permissions: str) -> dict[str, Any]:
    return {
        "id": str(rid),
        "name": name,
        "color": 0,
        "hoist": False,
        "position": 0 if rid == GUILD_ID else 1,
        "permissions": permissions,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def allowed_mentions_pinging(call: Call) -> bool:
    """True if Discord would ping anyone for this create/edit payload."""
    body = call.body or {}
    am = body.get("allowed_mentions")
    if am is None:
        return True  # no restriction: Discord parses @everyone, roles and users
    return bool(am.get("parse")) or bool(am.get("users")) or bool(am.get("roles"))
