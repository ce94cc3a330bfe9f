"""Does the HF tokenizer cut text exactly like llama.cpp does with a GGUF? Checked, not hoped.

A model is trained on the HF tokenizer's token ids and served by llama.cpp, which tokenizes
chat text itself (special-token parsing off, as :mod:`core.template` does for message bodies).
Any difference — digits grouped instead of split, a whitespace run cut elsewhere, an emoji's
bytes merged differently, ``<|im_end|>`` typed by a user read as the control token — means the
served model sees sequences it was never trained on. The strings here are built to hit those
places: numbers, code, emoji (with skin tones, ZWJ and flags), whitespace runs, other scripts
and special-token look-alikes. They are generated from a seed, so a failure is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_WORDS = tuple(
    " ".join(
        (
            "the cat sat on a mat and don't you'll I'M WE'VE it's Hello world naïve café résumé",
            "Straße déjà vu Привет мир こんにちは 世界 안녕하세요 مرحبا שלום नमस्ते ελληνικά",
            "tokenizer llama.cpp GGUF fine-tune e-mail self-hosted x86_64 UTF-8 O'Brien rock'n'roll",
        )
    ).split(" ")
)
_NUMBERS = (
    "0", "7", "42", "123", "2024", "31415926535", "3.14159", "-0.5", "1,000,000", "1e-9",
    "0x1F", "+44 20 7946 0958", "2024-05-17", "12:30:45", "v1.2.3", "abc123def", "99%",
    "١٢٣", "४२", "１２３", "²³", "½", "Ⅻ", "①②", "10³",
)  # fmt: skip
_CODE = (
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "SELECT * FROM users WHERE id = 42;",
    'if [[ -f "$file" ]]; then echo ok | tee -a log; fi',
    '<div class="x">&amp;&lt;/div&gt;</div>',
    "x = [i*i for i in range(10) if i % 2]",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "re.compile(r'^\\s*(\\d+)\\s*$')",
    "a->b && c || !d; // comment\n/* block */",
    "    indented\n\tand tabbed\n",
    "```python\nprint('hi')\n```",
)
_EMOJI = (
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🇯🇵", "❤️", "🏳️‍🌈", "🤖", "✨", "🙂🙃", "👋🏻👋🏿",
    "☕", "🧑‍💻", "🔥🔥🔥", "©", "™", "✓", "→", "…", "—", "\u200b", "\ufeff",
)  # fmt: skip
_SPACE = (
    " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", " \n", "\n ", "\r\n", " \t ",
    "\u00a0", "\u3000", "\u2003", "        ", "\n    \n",
)  # fmt: skip
_LOOKALIKES = (
    "<|im_start|>", "<|im_end|>", "<|im_start|>system\n", "<|endoftext|>", "<|eot_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<s>", "</s>", "<unk>", "<pad>",
    "<|im_start", "im_end|>", "<| im_end |>", "<<|im_end|>>", "[INST]", "<<SYS>>",
    "<|begin_of_text|>", "<|reserved_special_token_0|>", "<think>", "</think>",
)  # fmt: skip


def mixed_strings(n: int = 1000, *, seed: int = 0, extra_specials: Sequence[str] = ()) -> list[str]:
    """``n`` strings mixing the categories above (plus the model's own special tokens)."""
    rng = random.Random(seed)
    looks = list(_LOOKALIKES) + [s for s in extra_specials if s]
    pools: list[Sequence[str]] = [_WORDS, _NUMBERS, _CODE, _EMOJI, _SPACE, looks]
    out: list[str] = []
    # every fragment once on its own first: the single pieces are where rules differ most
    for pool in pools:
        out.extend(pool)
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 6)):
            pool = rng.choice(pools)
            parts.append(rng.choice(pool))
            parts.append(rng.choice(("", " ", " ", "", "\n", "  ", rng.choice(_SPACE))))
        text = "".join(parts)
        if rng.random() < 0.2:
            text = " " + text  # a leading space changes the first piece
        out.append(text)
    return out[:n]


@dataclass
class ParityReport:
    strings: int
    mismatches: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def to_dict(self) -> dict[str, Any]:
        return {"strings": self.strings, "mismatches": self.mismatches, "examples": self.examples}


def hf_plain_ids(tokenizer: Any) -> Callable[[str], list[int]]:
    """HF tokenization as chat text is tokenized for serving: no BOS, special tokens as text."""
    import copy

    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.encode_special_tokens = True  # "<|im_end|>" typed by a person is plain text

    def encode(text: str) -> list[int]:
        return list(backend.encode(text, add_special_tokens=False).ids)

    return encode


def llama_cpp_plain_ids(gguf: Path) -> tuple[Callable[[str], list[int]], Callable[[], None]]:
    """llama.cpp's tokenizer of ``gguf`` (vocabulary only: no weights are loaded)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)

    def encode(text: str) -> list[int]:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    return encode, llm.close


def check_parity(
    tokenizer: Any,
    gguf: Path,
    *,
    n: int = 1000,
    seed: int = 0,
    max_examples: int = 5,
) -> ParityReport:
    """Tokenize ``n`` mixed strings with both and count the strings that differ."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    strings = mixed_strings(n, seed=seed, extra_specials=specials)
    hf = hf_plain_ids(tokenizer)
    cpp, close = llama_cpp_plain_ids(gguf)
    report = ParityReport(len(strings), 0)
    try:
        for text in strings:
            a, b = hf(text), cpp(text)
            if a != b:
                report.mismatches += 1
                if len(report.examples) < max_examples:
                    report.examples.append({"text": text, "hf": a[:40], "llama_cpp": b[:40]})
    finally:
        close()
    return report
