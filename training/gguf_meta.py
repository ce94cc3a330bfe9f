"""Give an exported GGUF the tokenizer metadata of the GGUF its base model came from.

When the base model was a GGUF, the converter writes a tokenizer built from the merged HF folder
— which is only as faithful as the HF tokenizer. Copying ``tokenizer.*`` from the source GGUF
instead (vocabulary, merges, token types, ``tokenizer.ggml.pre``, BOS/EOS/padding ids) makes the
fine-tuned file tokenize exactly like the model people were already serving. The chat template
is the one the run trained with (for ``chat_template = "gguf"`` that is the source's own).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from training.errors import ConverterError

log = logging.getLogger("finechat.training")


def adopt_tokenizer(
    source: Path,
    target: Path,
    *,
    chat_template: str | None = None,
    eos_token: str | None = None,
) -> list[str]:
    """Rewrite ``target`` in place with ``source``'s ``tokenizer.*`` keys; returns what changed."""
    import gguf

    src = gguf.GGUFReader(str(source))
    dst = gguf.GGUFReader(str(target))
    src_tokens = src.fields.get("tokenizer.ggml.tokens")
    if src_tokens is None:
        raise ConverterError(f"{source.name} has no tokenizer to copy")
    tokens: list[str] = list(src_tokens.contents())
    embd = next((t for t in dst.tensors if t.name == "token_embd.weight"), None)
    if embd is not None and int(embd.shape[-1]) != len(tokens):
        raise ConverterError(
            f"{target.name} has {int(embd.shape[-1])} token embeddings but {source.name}'s "
            f"vocabulary has {len(tokens)} tokens: they are not the same model family"
        )
    arch = str(dst.fields["general.architecture"].contents())
    tmp = target.with_name(target.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=dst.endianess)
    changed: list[str] = []

    def add(field: gguf.ReaderField, value: object | None = None) -> None:
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(
            field.name, field.contents() if value is None else value, kind, sub_type=sub
        )

    old = {k: f.contents() for k, f in dst.fields.items() if k.startswith("tokenizer.")}
    for field in dst.fields.values():
        if field.name.startswith(("GGUF.", "tokenizer.")) or field.name == "general.architecture":
            continue
        add(field)
    eos_id = tokens.index(eos_token) if eos_token and eos_token in tokens else None
    for field in src.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        if field.name == "tokenizer.chat_template" and chat_template is not None:
            continue
        if field.name == "tokenizer.ggml.eos_token_id" and eos_id is not None:
            add(field, eos_id)
        else:
            add(field)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for key, f in src.fields.items():
        if key.startswith("tokenizer.") and old.get(key) != f.contents():
            changed.append(key)
    for tensor in dst.tensors:
        writer.add_tensor_info(
            tensor.name,
            tensor.data.shape,
            tensor.data.dtype,
            tensor.data.nbytes,
            tensor.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in dst.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=dst.endianess)
    writer.close()
    del src, dst  # release the memory maps before replacing the file
    os.replace(tmp, target)
    log.info("%s: tokenizer metadata from %s (%s)", target.name, source.name, ", ".join(changed))
    return changed
