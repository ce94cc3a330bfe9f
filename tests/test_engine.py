"""The llama.cpp engine on the real bundled model."""

from __future__ import annotations

import asyncio
import time

from core.engine import GenerationRequest, SamplingParams
from core.llama_engine import LlamaEngine
from core.template import Message

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, seed=7)


async def _prompt(engine: LlamaEngine, text: str) -> list[int]:
    return await engine.encode_messages(
        [Message("system", "You are a helpful assistant."), Message("user", text)]
    )


async def test_streaming_yields_tokens_and_result(engine: LlamaEngine) -> None:
    prompt = await _prompt(engine, "Name three colors.")
    stream = engine.generate(GenerationRequest("t:1", prompt, GREEDY))
    pieces = [p async for p in stream]
    assert len(pieces) >= 2
    assert stream.result is not None
    assert stream.result.text == "".join(pieces)
    assert 1 <= stream.result.completion_tokens <= GREEDY.max_tokens
    assert stream.result.prompt_tokens == len(prompt)


async def test_greedy_with_seed_is_deterministic(engine: LlamaEngine) -> None:
    prompt = await _prompt(engine, "Write one sentence about the sea.")
    texts = []
    for _ in range(2):
        stream = engine.generate(GenerationRequest("t:2", prompt, GREEDY))
        texts.append("".join([p async for p in stream]))
    assert texts[0] == texts[1] and texts[0]


async def test_seeded_sampling_is_reproducible_and_seed_matters(engine: LlamaEngine) -> None:
    prompt = await _prompt(engine, "Tell me a story about a dragon.")
    hot = SamplingParams(temperature=1.5, top_p=1.0, top_k=0, max_tokens=20, seed=11)
    runs = []
    for params in (hot, hot, SamplingParams(**{**hot.__dict__, "seed": 12})):
        stream = engine.generate(GenerationRequest("t:3", prompt, params))
        runs.append("".join([p async for p in stream]))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


async def test_stop_token_ends_reply_before_max_tokens(engine: LlamaEngine) -> None:
    prompt = await _prompt(engine, "Reply with just the word: yes")
    params = SamplingParams(temperature=0.0, max_tokens=200, seed=1)
    stream = engine.generate(GenerationRequest("t:4", prompt, params))
    text = "".join([p async for p in stream])
    assert stream.result is not None
    assert stream.result.finish_reason == "stop"
    assert stream.result.completion_tokens < 200
    assert "<|im_end|>" not in text


async def test_max_tokens_gives_length(engine: LlamaEngine) -> None:
    prompt = await _prompt(engine, "Count from one to one hundred in words.")
    params = SamplingParams(temperature=0.0, max_tokens=5, seed=1)
    stream = engine.generate(GenerationRequest("t:5", prompt, params))
    _ = [p async for p in stream]
    assert stream.result is not None
    assert stream.result.finish_reason == "length"
    assert stream.result.completion_tokens == 5


async def test_cancel_stops_between_tokens(engine: LlamaEngine) -> None:
    prompt = await _prompt(engine, "Count from one to one hundred in words.")
    params = SamplingParams(temperature=0.0, max_tokens=300, seed=1)
    stream = engine.generate(GenerationRequest("t:6", prompt, params))
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            stream.cancel()
    assert stream.result is not None
    assert stream.result.finish_reason == "cancelled"
    assert stream.result.completion_tokens < 10
    # The engine is free again right away.
    again = engine.generate(GenerationRequest("t:6", prompt, GREEDY))
    assert [p async for p in again]


async def test_abandoned_stream_frees_the_worker(engine: LlamaEngine) -> None:
    prompt = await _prompt(engine, "Count from one to one hundred in words.")
    params = SamplingParams(temperature=0.0, max_tokens=400, seed=1)
    stream = engine.generate(GenerationRequest("t:7", prompt, params))
    agen = stream.__aiter__()
    await agen.__anext__()
    await agen.aclose()  # the consumer goes away mid-reply
    nxt = engine.generate(GenerationRequest("t:8", prompt, GREEDY))
    assert nxt.queue_position <= 1
    text = "".join([p async for p in nxt])
    assert text
    assert nxt.result is not None and nxt.result.completion_tokens <= GREEDY.max_tokens


async def test_event_loop_stays_responsive_while_decoding(engine: LlamaEngine) -> None:
    prompt = await _prompt(engine, "Count from one to one hundred in words.")
    params = SamplingParams(temperature=0.0, max_tokens=120, seed=1)
    stream = engine.generate(GenerationRequest("t:9", prompt, params))
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    tick = asyncio.create_task(ticker())
    _ = [p async for p in stream]
    tick.cancel()
    assert len(lags) >= 10
    lags.sort()
    # Generous bound: the loop is never blocked for the length of a decode run.
    assert lags[len(lags) // 2] < 0.05


async def test_queue_positions_and_order(engine: LlamaEngine) -> None:
    prompt = await _prompt(engine, "Say hello.")
    n = engine.n_slots + 2
    streams = [engine.generate(GenerationRequest(f"t:q{i}", prompt, GREEDY)) for i in range(n)]
    # every slot starts at once; the two beyond the slots wait in order
    assert [s.queue_position for s in streams] == [0] * engine.n_slots + [1, 2]
    outs = await asyncio.gather(*(_collect(s) for s in streams))
    assert all(o == outs[0] for o in outs) and outs[0]
    assert engine.pending == 0


async def _collect(stream: object) -> str:
    return "".join([p async for p in stream])  # type: ignore[attr-defined]
