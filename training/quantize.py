"""Quantize a GGUF with the llama.cpp that llama-cpp-python was built with.

Run as ``python -m training.quantize IN OUT TYPE [THREADS]`` — the exporter always does so in a
subprocess, because a crash inside llama.cpp's C code (known segfaults on some builds) must not
take the trainer's process and its in-memory state down with it.
"""

from __future__ import annotations

import sys

from training.errors import ConverterError


def ftype_of(name: str) -> int:
    """``q4_k_m`` → ``LLAMA_FTYPE_MOSTLY_Q4_K_M`` (any type llama-cpp-python exposes)."""
    import llama_cpp

    attr = "LLAMA_FTYPE_MOSTLY_" + name.strip().upper()
    value = getattr(llama_cpp, attr, None)
    if not isinstance(value, int):
        raise ConverterError(
            f"unknown quantization type {name!r} (e.g. {', '.join(quant_types()[:8])}…)"
        )
    return value


def quant_types() -> list[str]:
    import llama_cpp

    prefix = "LLAMA_FTYPE_MOSTLY_"
    return sorted(n[len(prefix) :].lower() for n in dir(llama_cpp) if n.startswith(prefix))


def quantize_in_process(src: str, dst: str, name: str, threads: int = 0) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_of(name)
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        raise ConverterError(f"llama.cpp could not quantize to {name} (code {rc})")


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print("usage: python -m training.quantize IN OUT TYPE [THREADS]", file=sys.stderr)
        return 2
    try:
        quantize_in_process(argv[0], argv[1], argv[2], int(argv[3]) if len(argv) == 4 else 0)
    except ConverterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
