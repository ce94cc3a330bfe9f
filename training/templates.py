"""Chat templates: one for inference (shipped in the GGUF), one for training with loss markers.

The training template is the inference template plus ``{% generation %}`` around each assistant
reply *and its end-of-turn token*, which is what transformers' ``return_assistant_tokens_mask``
(and so trl's ``assistant_only_loss``) reads. Without the markers trl either fails ("no assistant
tokens") or, with hand-written marker strings, silently trains on the wrong span. Keeping both
templates here, derived from the same pieces, means they render byte-identical text — a test
checks it — so the model is trained on exactly the prompt format the core will serve.

The Llama‑3 template here deliberately omits the "Cutting Knowledge Date / Today Date" system
preamble of Meta's template: it costs tokens on every sample and bakes a date into the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from training.errors import TrainConfigError


@dataclass(frozen=True)
class TemplatePair:
    name: str
    inference: str
    training: str
    end_of_turn: str  # the token that ends every turn (the GGUF's EOS)
    special_tokens: tuple[str, ...]  # tokens the tokenizer must treat as special


def _llama3(generation: bool) -> str:
    open_, close = ("{% generation %}", "{% endgeneration %}") if generation else ("", "")
    return (
        "{{- bos_token }}"
        "{%- for message in messages %}"
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
        "{%- if message['role'] == 'assistant' %}"
        f"{open_}{{{{- message['content'] | trim + '<|eot_id|>' }}}}{close}"
        "{%- else %}"
        "{{- message['content'] | trim + '<|eot_id|>' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}"
        "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{%- endif %}"
    )


def _chatml(generation: bool) -> str:
    open_, close = ("{% generation %}", "{% endgeneration %}") if generation else ("", "")
    return (
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['role'] == 'assistant' %}"
        f"{open_}{{{{- message['content'] | trim + '<|im_end|>' }}}}{close}"
        "{{- '\\n' }}"
        "{%- else %}"
        "{{- message['content'] | trim + '<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


BUILTIN: dict[str, TemplatePair] = {
    "llama-3": TemplatePair(
        "llama-3",
        _llama3(False),
        _llama3(True),
        "<|eot_id|>",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    "chatml": TemplatePair(
        "chatml", _chatml(False), _chatml(True), "<|im_end|>", ("<|im_start|>", "<|im_end|>")
    ),
}
BUILTIN["llama-3.1"] = BUILTIN["llama-3.2"] = BUILTIN["llama-3"]

# Templates that GGUF files carry, each with a training twin that renders byte-identical text
# but marks the assistant replies (and their end-of-turn token) for the loss. A GGUF base with
# ``chat_template = "gguf"`` trains on its own template and the export ships that same text.
_SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_INFERENCE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + _SMOLLM2_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_TRAINING = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + _SMOLLM2_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GGUF_TWINS: dict[str, TemplatePair] = {
    SMOLLM2_INFERENCE: TemplatePair(
        "smollm2", SMOLLM2_INFERENCE, SMOLLM2_TRAINING, "<|im_end|>", ("<|im_start|>", "<|im_end|>")
    ),
}


def for_gguf_template(source: str) -> TemplatePair:
    """The training twin of a GGUF's own chat template (``chat_template = "gguf"``)."""
    pair = GGUF_TWINS.get(source.strip())
    if pair is None:
        known = ", ".join(p.name for p in GGUF_TWINS.values())
        raise TrainConfigError(
            "model.chat_template: 'gguf' needs a template finechat can mark for the "
            f"assistant-only loss (known: {known}); the base GGUF's is not one of them. Use "
            "chatml or llama-3, or a .jinja file with {% generation %} markers"
            if source.strip()
            else "model.chat_template: 'gguf', but the base GGUF carries no chat template"
        )
    return replace(pair, inference=source)


def get_templates(spec: str) -> TemplatePair:
    """A built-in name, or a ``.jinja`` file holding an inference template with markers.

    A custom file must already contain ``{% generation %}`` markers; the inference template is
    derived from it by removing them (so the two cannot drift apart).
    """
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.is_file():
        names = ", ".join(sorted(BUILTIN))
        raise TrainConfigError(f"model.chat_template: {spec!r} is neither {names} nor a file")
    training = path.read_text(encoding="utf-8")
    if "{% generation %}" not in training:
        raise TrainConfigError(
            f"model.chat_template: {path.name} has no {{% generation %}} markers, so the "
            "assistant-only loss could not find the replies"
        )
    inference = training.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    return TemplatePair(path.stem, inference, training, "", ())
