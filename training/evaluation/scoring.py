"""Token-level scoring through a GGUF: reference perplexity, judge verdicts, greedy decoding.

llama-cpp-python's ``logits_all=True`` keeps an ``n_ctx x n_vocab`` float32 matrix for the life of
the model (1 GB for a 128k vocabulary at 2k context). Instead this drives the llama.cpp C API
directly with its own batch, asks for logits only where they are needed, and turns each chunk
into log-probabilities at once, so memory stays at ``n_batch x n_vocab``.

Prompts are rendered through :mod:`core.template` exactly as the serving engine does: message
bodies are tokenized with special-token parsing off, so a reference answer or a response under
judgement that contains ``<|im_end|>`` is scored as text, not as a role switch.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from core.template import FALLBACK_TEMPLATE, ChatTemplate, Message, tokenize_segments
from training.evaluation.errors import EvalError


@dataclass(frozen=True)
class TextScore:
    """Negative log-likelihood of one continuation (natural log, summed over its tokens)."""

    nll: float
    tokens: int
    truncated: bool
    bytes: int = 0  # UTF-8 bytes of the scored text, for a tokenizer-independent rate

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else math.nan


def corpus_perplexity(scores: Sequence[TextScore]) -> float:
    """Token-weighted perplexity over many continuations (what ``llama-perplexity`` reports)."""
    tokens = sum(s.tokens for s in scores)
    return math.exp(sum(s.nll for s in scores) / tokens) if tokens else math.nan


def bits_per_byte(scores: Sequence[TextScore]) -> float:
    """NLL in bits per UTF-8 byte of text: comparable between models with different tokenizers,
    where per-token perplexity is not (a bigger vocabulary spends fewer, harder tokens)."""
    n = sum(s.bytes for s in scores)
    return sum(s.nll for s in scores) / (math.log(2) * n) if n else math.nan


def _log_softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


@dataclass(frozen=True)
class PromptFormat:
    """What rendering a chat needs from a GGUF: its template and BOS rule (as the engine reads them)."""

    template: ChatTemplate
    add_bos: bool
    bos_text: str


def prompt_format(llama: Any) -> PromptFormat:
    meta: dict[str, str] = dict(llama.metadata or {})

    def piece(token: int) -> str:
        if token < 0:
            return ""
        return bytes(llama.detokenize([token], special=True)).decode("utf-8", "replace")

    bos_text, eos_text = piece(int(llama.token_bos())), piece(int(llama.token_eos()))
    source = meta.get("tokenizer.chat_template") or FALLBACK_TEMPLATE
    add_bos = meta.get("tokenizer.ggml.add_bos_token", "false").lower() == "true"
    return PromptFormat(
        ChatTemplate(source, bos_token=bos_text, eos_token=eos_text),
        add_bos,
        bos_text if add_bos else "",
    )


class Scorer:
    """One GGUF loaded for scoring. Not thread-safe: use it from one thread, then ``close``."""

    def __init__(self, llama: Any, fmt: PromptFormat, n_batch: int) -> None:
        import llama_cpp

        self._llama = llama
        self.format = fmt
        self.n_ctx = int(llama.n_ctx())
        self.n_vocab = int(llama.n_vocab())
        self._n_batch = n_batch
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._closed = False
        self._end_of_turn: list[int] | None = None

    @classmethod
    def load(cls, path: Path, *, n_ctx: int, n_threads: int, n_batch: int = 256) -> Scorer:
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - base dependency
            raise EvalError(f"llama-cpp-python is not installed ({exc})") from None
        try:
            llama = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EvalError(f"llama.cpp could not load {path.name}: {exc}") from None
        return cls(llama, prompt_format(llama), min(n_batch, n_ctx))

    def close(self) -> None:
        import llama_cpp

        if self._closed:
            return
        self._closed = True
        llama_cpp.llama_batch_free(self._batch)
        self._llama.close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Plain text, special-token parsing off (user and model text is never a control token)."""
        if not text:
            return []
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def end_of_turn_tokens(self) -> list[int]:
        """The token that ends an assistant turn in this model's template (``<|im_end|>``…).

        Read off the template itself: the first token it writes after an assistant reply, when
        llama.cpp counts it as end-of-generation; else the vocabulary's EOT, else its EOS.
        Scoring it with the reply measures whether the model knows when to stop.
        """
        if self._end_of_turn is None:
            self._end_of_turn = self._find_end_of_turn()
        return list(self._end_of_turn)

    def _find_end_of_turn(self) -> list[int]:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        try:
            segments = self.format.template.render(
                [Message("user", "Hi."), Message("assistant", "Hello.")],
                add_generation_prompt=False,
            )
        except ValueError:
            segments = []
        last_body = max((i for i, s in enumerate(segments) if not s.trusted), default=None)
        if last_body is not None:
            after = "".join(s.text for s in segments[last_body + 1 :])
            toks = (
                list(self._llama.tokenize(after.encode("utf-8"), add_bos=False, special=True))
                if after
                else []
            )
            if toks and llama_cpp.llama_vocab_is_eog(vocab, toks[0]):
                return [int(toks[0])]
        for tok in (int(llama_cpp.llama_vocab_eot(vocab)), int(self._llama.token_eos())):
            if tok >= 0:
                return [tok]
        return []

    def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(self._llama.detokenize(list(tokens), special=False)).decode("utf-8", "replace")

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """The model's chat template with the generation prompt, bodies un-special."""
        segments = self.format.template.render(list(messages), add_generation_prompt=True)
        return tokenize_segments(
            segments,
            lambda text, add_bos, special: (
                list(self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))
                if text
                else []
            ),
            add_bos=self.format.add_bos,
            bos_text=self.format.bos_text,
        )

    # -- the forward pass ----------------------------------------------------------------------

    def _clear(self) -> None:
        import llama_cpp

        memory = llama_cpp.llama_get_memory(self._llama.ctx)
        if memory is not None:
            llama_cpp.llama_memory_clear(memory, True)

    def _decode(self, tokens: Sequence[int], n_past: int, want: Sequence[bool]) -> Any:
        """Run one batch; returns the logits rows of the positions flagged in ``want``."""
        import llama_cpp

        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, tok in enumerate(tokens):
            batch.token[i] = tok
            batch.pos[i] = n_past + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = want[i]
        rc = llama_cpp.llama_decode(self._llama.ctx, batch)
        if rc != 0:
            raise EvalError(f"llama_decode failed with code {rc}")
        rows = sum(1 for w in want if w)
        if rows == 0:
            return None
        ptr = llama_cpp.llama_get_logits(self._llama.ctx)
        flat = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(flat, shape=(rows * self.n_vocab,)).reshape(rows, self.n_vocab)

    def continuation_nll(self, prefix: Sequence[int], continuation: Sequence[int]) -> TextScore:
        """NLL of ``continuation`` given ``prefix``, cut to what fits the context window."""
        if not prefix:
            raise EvalError("scoring needs a non-empty prefix")
        room = self.n_ctx - len(prefix)
        if room <= 0:
            raise EvalError(
                f"the prompt ({len(prefix)} tokens) does not fit the context ({self.n_ctx})"
            )
        cont = list(continuation[:room])
        truncated = len(cont) < len(continuation)
        if not cont:
            return TextScore(0.0, 0, truncated, 0)
        seq = [*prefix, *cont]
        # Position j predicts seq[j + 1]; logits are needed from len(prefix) - 1 onwards.
        first = len(prefix) - 1
        targets = seq[first + 1 :]
        self._clear()
        nll = 0.0
        k = 0  # next target index
        for start in range(0, len(seq) - 1, self._n_batch):
            chunk = seq[start : min(start + self._n_batch, len(seq) - 1)]
            want = [start + i >= first for i in range(len(chunk))]
            logits = self._decode(chunk, start, want)
            if logits is None:
                continue
            logp = _log_softmax(logits)
            ids = np.asarray(targets[k : k + logp.shape[0]], dtype=np.int64)
            nll -= float(logp[np.arange(len(ids)), ids].sum())
            k += len(ids)
        return TextScore(nll, len(cont), truncated, len(self.detokenize(cont).encode("utf-8")))

    def next_token_logprobs(self, prompt: Sequence[int]) -> npt.NDArray[np.float64]:
        """Log-probabilities of the token after ``prompt`` (over the whole vocabulary)."""
        if not prompt or len(prompt) >= self.n_ctx:
            raise EvalError(f"the prompt ({len(prompt)} tokens) does not fit ({self.n_ctx})")
        self._clear()
        seq = list(prompt)
        last: Any = None
        for start in range(0, len(seq), self._n_batch):
            chunk = seq[start : start + self._n_batch]
            is_last = start + len(chunk) == len(seq)
            want = [is_last and i == len(chunk) - 1 for i in range(len(chunk))]
            out = self._decode(chunk, start, want)
            if out is not None:
                last = out[0]
        assert last is not None
        result: npt.NDArray[np.float64] = _log_softmax(np.asarray(last))
        return result

    def greedy(self, prompt: Sequence[int], max_new: int) -> list[int]:
        """Pure argmax decoding (no penalties): the model's own most likely continuation."""
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._clear()
        seq = list(prompt)
        n_past = 0
        out: list[int] = []
        pending = seq
        while len(out) < max_new and n_past + len(pending) < self.n_ctx:
            for start in range(0, len(pending), self._n_batch):
                chunk = pending[start : start + self._n_batch]
                is_last = start + len(chunk) == len(pending)
                want = [is_last and i == len(chunk) - 1 for i in range(len(chunk))]
                logits = self._decode(chunk, n_past + start, want)
            n_past += len(pending)
            token = int(np.argmax(logits[0]))
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            out.append(token)
            pending = [token]
        return out
