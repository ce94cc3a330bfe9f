"""The arena tab: one prompt, two contenders, answers side by side, a vote, a leaderboard.

A contender is a model plus its sampling settings, so with a single configured model the arena
still compares something real (e.g. temperature 0.2 against 1.0). Both answers are requested
at once: an engine with several slots streams them together, a one-slot engine queues the
second, and either way each side's time to first token is measured from when its own
generation started, so queueing does not penalise side B.

Each side answers in its own conversation (``<visitor key>#arena-a`` / ``-b``), reset before
every round, so arena prompts never leak into the visitor's chat and every round starts clean.
Votes land in the memory database (``votes`` table) with the prompt and both answers: a
ready-made preference data set for the next fine-tune.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import gradio as gr

from core.errors import ConversationBusy, InvalidInput
from core.memory import Tally, Vote
from core.service import ChatService, Delta, Done, ReplyEvent, Started
from web.chat_ui import max_tokens_limit
from web.render import ChatMessage, message, speed
from web.ui_common import People, user_error, who

Side = Literal["a", "b"]
Winner = Literal["a", "b", "tie", "both_bad"]
LEADERBOARD_HEADERS = ["Contender", "Games", "Wins", "Ties", "Losses", "Win rate"]
DEFAULT_ARENA_TOKENS = 192
#: Outputs of a round: chat A, chat B, stats A, stats B, round state, then the four vote buttons.
RoundUpdate = tuple[Any, ...]


@dataclass(frozen=True)
class Contender:
    model: str
    temperature: float

    @property
    def settings(self) -> dict[str, Any]:
        return {"temperature": round(float(self.temperature), 3)}

    @property
    def label(self) -> str:
        return contender_label(self.model, self.settings)


def contender_label(model: str, settings: Mapping[str, Any]) -> str:
    extras = ", ".join(
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(settings.items())
    )
    return f"{model} ({extras})" if extras else model


@dataclass
class SideResult:
    """What one side produced; filled in as its stream runs."""

    text: str = ""
    done: Done | None = None
    queued_behind: int = 0

    def stats(self) -> str:
        if self.done is None:
            if self.queued_behind:
                return "waiting for the model…"
            return "answering…" if self.text else "…"
        d = self.done
        parts = [f"{d.completion_tokens} tokens"]
        if d.ttft_seconds is not None:
            parts.append(f"first token **{d.ttft_seconds:.2f} s**")
        tps = speed(d.completion_tokens, d.ttft_seconds, d.total_seconds)
        if tps is not None:
            parts.append(f"**{tps:.1f} tok/s**")
        if d.finish_reason == "length":
            parts.append("hit the token limit")
        return " · ".join(parts)


@dataclass
class ArenaRound:
    """A finished round waiting for its (single) vote; kept in the visitor's session state."""

    prompt: str
    a: Contender
    b: Contender
    answers: dict[str, str] = field(default_factory=dict)


def arena_key(chat_key: str, side: Side) -> str:
    return f"{chat_key}#arena-{side}"


async def merge(
    streams: Mapping[Side, AsyncIterator[ReplyEvent]],
) -> AsyncIterator[tuple[Side, ReplyEvent]]:
    """Interleave several reply streams as events arrive; an error in one stops all."""
    queue: asyncio.Queue[tuple[Side, ReplyEvent | BaseException | None]] = asyncio.Queue()

    async def pump(side: Side, events: AsyncIterator[ReplyEvent]) -> None:
        try:
            async for event in events:
                await queue.put((side, event))
        except Exception as exc:
            await queue.put((side, exc))
            return
        finally:
            closer = getattr(events, "aclose", None)  # stops its generation at once
            if closer is not None:
                await closer()
        await queue.put((side, None))

    tasks = [asyncio.create_task(pump(side, events)) for side, events in streams.items()]
    try:
        remaining = len(tasks)
        while remaining:
            side, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield side, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def leaderboard_rows(tallies: list[Tally]) -> list[list[Any]]:
    """Contenders by win rate (ties count half), then by number of games."""
    rows = []
    for t in tallies:
        rate = (t.wins + 0.5 * t.ties) / t.games if t.games else 0.0
        rows.append((rate, t.games, contender_label(t.model, t.settings), t))
    rows.sort(key=lambda r: (-r[0], -r[1], r[2]))
    return [[label, t.games, t.wins, t.ties, t.losses, f"{rate:.0%}"] for rate, _, label, t in rows]


def _vote_buttons(enabled: bool) -> list[Any]:
    return [gr.update(interactive=enabled) for _ in range(4)]


class ArenaHandlers:
    def __init__(self, service: ChatService, people: People | None = None) -> None:
        self.service = service
        self.people = people or People()

    async def leaderboard(self) -> list[list[Any]]:
        try:
            return leaderboard_rows(await self.service.store.vote_tally())
        except Exception as exc:
            user_error(exc)

    async def run(
        self,
        prompt: str,
        model_a: str,
        temperature_a: float,
        model_b: str,
        temperature_b: float,
        max_tokens: float,
        browser_id: str | None,
        request: gr.Request,
        profile: gr.OAuthProfile | None,
    ) -> AsyncIterator[RoundUpdate]:
        """Send ``prompt`` to both contenders and stream both answers side by side."""
        ident = who(request, profile, browser_id)
        contenders: dict[Side, Contender] = {
            "a": Contender(model_a, float(temperature_a)),
            "b": Contender(model_b, float(temperature_b)),
        }
        keys = {side: arena_key(ident.key, side) for side in contenders}
        if any(self.service.busy(k) for k in keys.values()):
            user_error(_busy())
        try:
            for key in keys.values():
                await self.service.reset(key)  # every round is a fresh one-turn conversation
        except Exception as exc:
            user_error(exc)
        results: dict[Side, SideResult] = {"a": SideResult(), "b": SideResult()}
        person = self.people.person(request, ident)
        streams = {
            side: self.service.reply(
                keys[side],
                prompt or "",
                settings={**c.settings, "max_tokens": int(max_tokens)},
                model=c.model,
                person=person,
            )
            for side, c in contenders.items()
        }
        shown_prompt = message("user", (prompt or "").strip())

        def view(state: ArenaRound | None) -> RoundUpdate:
            chats: list[list[ChatMessage]] = [
                [shown_prompt, message("assistant", results[s].text)] for s in ("a", "b")
            ]
            return (
                *chats,
                results["a"].stats(),
                results["b"].stats(),
                state,
                *_vote_buttons(state is not None),
            )

        try:
            async for side, event in merge(streams):
                if isinstance(event, Started):
                    results[side].queued_behind = event.queue_position
                elif isinstance(event, Delta):
                    results[side].text += event.text
                elif isinstance(event, Done):
                    results[side].done = event
                    results[side].text = event.text or results[side].text
                yield view(None)
        except Exception as exc:
            user_error(exc)
        finished = all(
            r.done is not None and r.done.finish_reason != "cancelled" for r in results.values()
        )
        state = (
            ArenaRound(
                prompt=(prompt or "").strip(),
                a=contenders["a"],
                b=contenders["b"],
                answers={s: results[s].text for s in ("a", "b")},
            )
            if finished
            else None
        )
        yield view(state)

    async def vote(
        self,
        winner: Winner,
        state: ArenaRound | None,
        browser_id: str | None,
        request: gr.Request | None,
        profile: gr.OAuthProfile | None,
    ) -> tuple[Any, ...]:
        if state is None:
            user_error(_no_round())
        ident = who(request, profile, browser_id)
        try:
            if self.service.limiter is not None:  # votes are writes, limited like settings
                await self.service.limiter.admit_write(self.people.person(request, ident))
            await self.service.store.add_vote(
                Vote(
                    key=ident.key,
                    prompt=state.prompt,
                    model_a=state.a.model,
                    model_b=state.b.model,
                    settings_a=state.a.settings,
                    settings_b=state.b.settings,
                    answer_a=state.answers.get("a", ""),
                    answer_b=state.answers.get("b", ""),
                    winner=winner,
                )
            )
            rows = leaderboard_rows(await self.service.store.vote_tally())
        except Exception as exc:
            user_error(exc)
        verdict = {
            "a": f"A — {state.a.label}",
            "b": f"B — {state.b.label}",
            "tie": "a tie",
            "both_bad": "both bad",
        }[winner]
        return rows, f"Thanks! Recorded: {verdict}.", None, *_vote_buttons(False)

    def voter(self, winner: Winner) -> Callable[..., Coroutine[Any, Any, tuple[Any, ...]]]:
        """A handler for one vote button (Gradio reads the signature for request injection)."""

        async def cast(
            state: ArenaRound | None,
            browser_id: str | None,
            request: gr.Request,
            profile: gr.OAuthProfile | None,
        ) -> tuple[Any, ...]:
            return await self.vote(winner, state, browser_id, request, profile)

        return cast


def _busy() -> Exception:
    return ConversationBusy("The arena is still answering your previous prompt.")


def _no_round() -> Exception:
    return InvalidInput("Send a prompt to both sides first; each round takes one vote.")


def build_arena_tab(
    service: ChatService, browser_state: gr.BrowserState, people: People | None = None
) -> gr.Dataframe:
    """Lay out the arena inside the current Blocks context; returns the leaderboard table."""
    handlers = ArenaHandlers(service, people)
    models = service.available_models()
    limit = max_tokens_limit(service.engine.info.n_ctx)
    single = len(models) == 1
    gr.Markdown(
        "Send one prompt to two contenders, compare the answers and their speed, then vote. "
        + (
            "Only one model is configured, so the two sides differ by **temperature**."
            if single
            else "Pick two models (or one model at two temperatures)."
        )
    )
    columns: list[tuple[gr.Dropdown, gr.Slider]] = []
    with gr.Row():
        for side, temp in (("A", 0.2), ("B", 1.0)):
            with gr.Column():
                model = gr.Dropdown(
                    models,
                    value=models[0] if side == "A" or single else models[1],
                    label=f"Model {side}",
                    elem_id=f"arena-model-{side.lower()}",
                )
                temperature = gr.Slider(
                    0.0, 2.0, value=temp, step=0.05, label=f"Temperature {side}"
                )
                columns.append((model, temperature))
    with gr.Row(equal_height=True):
        prompt = gr.Textbox(
            show_label=False,
            placeholder="One prompt for both sides",
            lines=1,
            max_lines=8,
            scale=8,
            elem_id="arena-input",
        )
        go = gr.Button("Send to both", variant="primary", scale=1, elem_id="arena-send")
    max_tokens = gr.Slider(
        16, limit, value=min(DEFAULT_ARENA_TOKENS, limit), step=16, label="Max tokens per answer"
    )
    with gr.Row():
        with gr.Column():
            chat_a = gr.Chatbot(
                label="A",
                height=360,
                buttons=["copy"],
                feedback_options=None,
                allow_tags=False,
                elem_id="arena-chat-a",
            )
            stats_a = gr.Markdown("", elem_id="arena-stats-a")
        with gr.Column():
            chat_b = gr.Chatbot(
                label="B",
                height=360,
                buttons=["copy"],
                feedback_options=None,
                allow_tags=False,
                elem_id="arena-chat-b",
            )
            stats_b = gr.Markdown("", elem_id="arena-stats-b")
    with gr.Row():
        buttons = [
            gr.Button("A is better", interactive=False, elem_id="vote-a"),
            gr.Button("Tie", interactive=False, elem_id="vote-tie"),
            gr.Button("B is better", interactive=False, elem_id="vote-b"),
            gr.Button("Both are bad", interactive=False, elem_id="vote-both-bad"),
        ]
    vote_status = gr.Markdown("", elem_id="arena-vote-status")
    gr.Markdown("### Leaderboard\nWin rate counts a tie (or “both bad”) as half a win.")
    table = gr.Dataframe(
        headers=LEADERBOARD_HEADERS,
        interactive=False,
        wrap=True,
        elem_id="arena-leaderboard",
    )
    round_state = gr.State(None)

    (model_a, temp_a), (model_b, temp_b) = columns
    round_outputs: list[Any] = [chat_a, chat_b, stats_a, stats_b, round_state, *buttons]
    run_inputs: list[Any] = [prompt, model_a, temp_a, model_b, temp_b, max_tokens, browser_state]
    for trigger in (go.click, prompt.submit):
        trigger(
            handlers.run,
            run_inputs,
            round_outputs,
            api_name="arena",
            api_visibility="public" if trigger == go.click else "private",
            show_progress="hidden",
            concurrency_limit=None,
        )
    vote_outputs: list[Any] = [table, vote_status, round_state, *buttons]
    for button, winner in zip(buttons, ("a", "tie", "b", "both_bad"), strict=True):
        button.click(
            handlers.voter(winner),  # type: ignore[arg-type]
            [round_state, browser_state],
            vote_outputs,
            api_name=f"vote_{winner}",
        )
    return table


def wire_leaderboard(demo: gr.Blocks, service: ChatService, table: gr.Dataframe) -> None:
    demo.load(ArenaHandlers(service).leaderboard, None, [table], api_name="leaderboard")
