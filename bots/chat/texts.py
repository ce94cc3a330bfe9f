"""Every sentence the bots say on their own, in one place and one wording for all platforms.

The model's answers are the only other text a person sees. Nothing here ever quotes an
exception: internal errors become :data:`APOLOGY`, and only :class:`core.errors.FinechatError`
messages (written to be shown) are passed through as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# -- answers that did not go as planned ------------------------------------------------------

APOLOGY = "Sorry — something went wrong on my side. Please try again in a moment."
TIMEOUT = "Sorry — that took too long, so I stopped. Please try again (maybe shorter)."
SHUTDOWN = "⏹ Interrupted: the bot is restarting. Send your message again in a minute."
STOPPED = "⏹ Stopped."
EMPTY_ANSWER = "I have no answer to that. Try /retry or rephrase your message."
NOT_TEXT = "I can only read text for now — please type your message."
ATTACHMENTS_NOT_READ = "I can't read attachments yet, so I only read the text of your message."
ONLY_MENTION = "Yes? Write your question after my name."
ASK_WHAT = "Ask me something: /ask YOUR QUESTION"


def queue_note(position: int) -> str:
    """Shown while a reply waits for the model; the answer replaces it."""
    ahead = "1 request" if position == 1 else f"{position} requests"
    return f"⏳ The model is busy — {ahead} ahead of you. I'll start answering shortly."


# -- refusals --------------------------------------------------------------------------------


class Refusal(Enum):
    """Why a platform's access rules turned someone away (see each platform's ``rules``)."""

    PRIVATE_DISABLED = "private_disabled"
    USER_NOT_ALLOWED = "user_not_allowed"
    CHAT_NOT_ALLOWED = "chat_not_allowed"
    ADMIN_ONLY = "admin_only"


REFUSALS = {
    Refusal.PRIVATE_DISABLED: (
        "Sorry — I don't answer private messages here. Talk to me in a group or channel "
        "I've been set up for."
    ),
    Refusal.USER_NOT_ALLOWED: (
        "Sorry — this bot is private and you're not on its list of users. "
        "Please ask the person who runs it if you'd like access."
    ),
    Refusal.CHAT_NOT_ALLOWED: (
        "Sorry — I'm not enabled in this chat. Please ask the person who runs me to add it."
    ),
    Refusal.ADMIN_ONLY: "Sorry — only the bot's admins can use this command.",
}

# -- commands --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandInfo:
    name: str
    description: str
    """The command menu's line (Telegram: ≤ 256 characters; Discord: ≤ 100)."""


COMMANDS: tuple[CommandInfo, ...] = (
    CommandInfo("start", "Say hello and show what I can do"),
    CommandInfo("help", "How to talk to me"),
    CommandInfo("ask", "Ask me a question"),
    CommandInfo("reset", "Start a new conversation"),
    CommandInfo("retry", "Write a new answer to your last message"),
    CommandInfo("cancel", "Stop the answer in progress"),
    CommandInfo("persona", "Show or set your system prompt"),
    CommandInfo("stats", "Your turns, tokens and the model"),
    CommandInfo("forget", "Delete everything I stored about you in this chat"),
    CommandInfo("model", "Show or switch the model (admins only)"),
)
COMMAND_NAMES = tuple(c.name for c in COMMANDS)


def help_text(names: tuple[str, ...]) -> str:
    lines = [f"/{c.name} — {c.description}" for c in COMMANDS if c.name in names]
    return "Commands:\n" + "\n".join(lines) + "\n\nEach person has their own memory in each chat."


def how_to_reach(*, private: bool, handle: str) -> str:
    if private:
        return "Just write to me."
    return f"Mention me ({handle}), reply to one of my messages, or use /ask."


def greeting(model: str, *, private: bool, handle: str, names: tuple[str, ...]) -> str:
    return (
        f"Hi! I'm a chat bot running {model} on my own computer. "
        f"{how_to_reach(private=private, handle=handle)}\n\n{help_text(names)}"
    )


RESET_DONE = "🆕 New conversation started — I've put our earlier chat aside."
CANCELLING = "OK, stopping."
NOTHING_TO_CANCEL = "Nothing to cancel — I'm not answering anything for you right now."
PERSONA_SET = "Persona set. It applies from your next message."
PERSONA_RESET = "Persona reset to the default."


def persona_shown(current: str) -> str:
    return (
        f"Your persona (system prompt):\n\n{current}\n\n"
        "Change it with /persona followed by the new text, or /persona reset for the default."
    )


def stats_text(stats: dict[str, object]) -> str:
    """``/stats``: the conversation's counts and, when ``[limits]`` is on, the person's usage."""
    usage = stats.get("usage_line")
    return (
        f"Turns: {stats['replies']}\n"
        f"Messages: {stats['messages']}\n"
        f"Tokens: {stats['tokens']}\n"
        f"Model: {stats['model']}" + (f"\n{usage}" if usage else "")
    )


def forgotten(removed: int) -> str:
    return f"🗑️ Deleted {removed} stored messages and your settings in this chat."


def models_listing(available: list[str], current: str) -> str:
    listing = "\n".join(f"{'•' if m == current else '◦'} {m}" for m in available)
    return f"Models:\n{listing}\n\nSwitch with /model NAME."


def model_set(name: str) -> str:
    return f"Model set to {name}."
