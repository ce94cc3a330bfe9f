"""A tiny random Llama with a locally trained SentencePiece tokenizer (``base = "tiny:llama"``).

It lets the whole pipeline — SFT, merge, GGUF, q4_k_m, serving — run offline on a CPU in
minutes. Sizes are multiples of 256 so llama.cpp's K-quants really apply (QK_K = 256), and the
tokenizer is SentencePiece because llama.cpp's converter reads SPM models without the BPE
pre-tokenizer hash a home-made byte-level BPE would fail. transformers 5 keeps added tokens only
in ``tokenizer.json``, while the converter's SPM path reads ``added_tokens_decoder`` from
``tokenizer_config.json``; without it llama.cpp spells ``<|eot_id|>`` letter by letter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from training.templates import get_templates

TINY_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def build_tiny_llama(
    out: Path,
    texts: Iterable[str],
    *,
    template: str = "llama-3",
    vocab_size: int = 384,
    seed: int = 0,
) -> Path:
    """Write a loadable HF model folder to ``out`` (tokenizer trained on ``texts``)."""
    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    pair = get_templates(template)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in texts if t.strip()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out / "tokenizer"),
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=list(pair.special_tokens),
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    corpus.unlink()
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    eot = pair.end_of_turn
    decoder = {
        str(i): {
            "content": sp.id_to_piece(i),
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for i in [0, 1, 2, *(sp.piece_to_id(t) for t in pair.special_tokens)]
    }
    tok_config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": eot,
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": False,
        "legacy": False,
        "model_max_length": 2048,
        "added_tokens_decoder": decoder,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    tokenizer.chat_template = pair.inference
    tokenizer.save_pretrained(str(out))
    _keep_added_tokens_decoder(out, decoder)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=sp.piece_to_id(eot),
        pad_token_id=2,
        **TINY_SHAPE,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = sp.piece_to_id(eot)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def _keep_added_tokens_decoder(folder: Path, decoder: dict[str, dict[str, object]]) -> None:
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.setdefault("added_tokens_decoder", decoder)
    cfg["add_prefix_space"] = False
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
