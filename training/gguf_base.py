"""A GGUF file as the base model: the weights dequantized, the tokenizer rebuilt faithfully.

People who serve a GGUF want to fine-tune *that* model, and often have no other copy of it.
transformers reads GGUF weights (dequantizing them to float), but the tokenizer it rebuilds from
the GGUF does not always reproduce llama.cpp's pre-tokenizer: SmolLM2's ``smollm`` pre-tokenizer
splits digits one by one, which transformers' generic GGUF conversion does not. A model trained
on one tokenization and served with another sees token sequences it never learned.

So the tokenizer is built here from the GGUF's own vocabulary, merges, token types and
``tokenizer.ggml.pre``, with the exact regular expressions llama.cpp uses for that
pre-tokenizer; :mod:`training.tokenizer_check` proves the two agree on a thousand nasty strings.
Unknown pre-tokenizers fall back to transformers' conversion, and the parity check decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import BUNDLED_BASE, is_hub_gguf
from training.errors import TrainingError

log = logging.getLogger("finechat.training")

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # gguf.TokenType

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp), applied one after another, each
# splitting the pieces of the previous one; text no expression matches stays a piece of its own
# (the tokenizers library's Split(..., "isolated") does the same).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "smollm": (r"\p{N}", _GPT2),
    "gpt-2": (_GPT2,),
    "llama-bpe": (_LLAMA3,),
}
IGNORE_MERGES = {"llama-bpe"}  # llama.cpp takes a whole word that is in the vocabulary as is


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer part of a GGUF's metadata."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece) …
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    pad_id: int | None
    unk_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str
    architecture: str
    extra: dict[str, Any] = field(default_factory=dict)

    def token(self, i: int | None) -> str | None:
        return self.tokens[i] if i is not None and 0 <= i < len(self.tokens) else None

    @property
    def special_tokens(self) -> list[str]:
        """Control tokens: the ones chat text must never produce (parsing special tokens off)."""
        return [t for t, k in zip(self.tokens, self.types, strict=False) if k == CONTROL]


def resolve_gguf(base: str) -> Path:
    """``bundled``, ``owner/repo:file.gguf`` or a local path → a checked local GGUF file."""
    from core.errors import ModelLoadError
    from core.model_source import ModelSpec, resolve_model

    if base == BUNDLED_BASE:
        spec = ModelSpec()
    elif is_hub_gguf(base):
        spec = ModelSpec.parse(base)
    else:
        spec = ModelSpec(path=base)
    try:
        return resolve_model(spec)
    except ModelLoadError as exc:
        raise TrainingError(f"model.base: {exc}") from None


def read_vocab(path: Path) -> GGUFVocab:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    def opt_int(key: str) -> int | None:
        v = value(key)
        return None if v is None else int(v)

    tokens = value("tokenizer.ggml.tokens")
    if not tokens:
        raise TrainingError(f"{path.name} has no tokenizer in its metadata")
    return GGUFVocab(
        model=str(value("tokenizer.ggml.model", "")),
        pre=str(value("tokenizer.ggml.pre", "default")),
        tokens=list(tokens),
        types=[int(t) for t in value("tokenizer.ggml.token_type", [])],
        merges=list(value("tokenizer.ggml.merges", []) or []),
        bos_id=opt_int("tokenizer.ggml.bos_token_id"),
        eos_id=opt_int("tokenizer.ggml.eos_token_id"),
        eot_id=opt_int("tokenizer.ggml.eot_token_id"),
        pad_id=opt_int("tokenizer.ggml.padding_token_id"),
        unk_id=opt_int("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(value("tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(value("tokenizer.ggml.add_eos_token", False)),
        chat_template=str(value("tokenizer.chat_template", "") or ""),
        architecture=str(value("general.architecture", "")),
    )


def build_tokenizer(path: Path, vocab: GGUFVocab | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` that tokenizes like llama.cpp does with this GGUF."""
    vocab = vocab or read_vocab(path)
    if vocab.model == "gpt2" and vocab.pre in PRE_TOKENIZERS:
        tok = _byte_level_bpe(vocab)
    else:
        log.warning(
            "%s: no finechat rebuild for the %s/%s tokenizer; using transformers' GGUF "
            "conversion (the export's tokenizer check will say whether it matches llama.cpp)",
            path.name,
            vocab.model,
            vocab.pre,
        )
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if vocab.chat_template:
        tok.chat_template = vocab.chat_template
    return tok


def _byte_level_bpe(vocab: GGUFVocab) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ids = {t: i for i, t in enumerate(vocab.tokens)}
    merges: list[tuple[str, str]] = []
    for m in vocab.merges:
        left, _, right = m.partition(" ")
        merges.append((left, right))
    bpe = models.BPE(
        vocab=ids,
        merges=merges,
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=vocab.pre in IGNORE_MERGES,
    )
    backend = Tokenizer(bpe)
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in PRE_TOKENIZERS[vocab.pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    special: list[AddedToken] = []
    plain: list[AddedToken] = []
    for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.types, strict=False)):
        if kind == CONTROL:
            special.append(AddedToken(text, special=True, normalized=False))
        elif kind == USER_DEFINED:
            plain.append(AddedToken(text, special=False, normalized=False))
        assert ids[text] == i or kind not in (CONTROL, USER_DEFINED)
    backend.add_special_tokens(special)
    backend.add_tokens(plain)
    if vocab.add_bos and vocab.bos_id is not None:
        from tokenizers import processors

        bos = vocab.tokens[vocab.bos_id]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab.bos_id)]
        )
    kwargs = {
        name: vocab.token(i)
        for name, i in (
            ("bos_token", vocab.bos_id),
            ("eos_token", vocab.eos_id),
            ("unk_token", vocab.unk_id),
            ("pad_token", vocab.pad_id),
        )
        if vocab.token(i) is not None
    }
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
        **kwargs,
    )
    tok.add_bos_token = vocab.add_bos
    return tok


def load_model(path: Path, dtype: Any) -> Any:
    """The GGUF's weights dequantized into a transformers model (tied embeddings kept tied)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    try:  # transformers >= 5.2x can keep GGUF blocks packed; training needs plain weights
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older releases always dequantize
        pass
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype, **kwargs
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if getattr(quantizer, "packed_modules", None):
            raise TrainingError(
                f"transformers kept {path.name}'s weights packed; LoRA training needs them "
                "dequantized (please report this with your transformers version)"
            )
        quantizer.remove_quantization_config(model)  # the weights are plain tensors now
    if not _has_output_tensor(path) and not model.config.tie_word_embeddings:
        # No output.weight in the GGUF means the model shares its embedding matrix.
        model.config.tie_word_embeddings = True
        model.tie_weights()
    return model


def _has_output_tensor(path: Path) -> bool:
    from gguf import GGUFReader

    return any(t.name == "output.weight" for t in GGUFReader(str(path)).tensors)
