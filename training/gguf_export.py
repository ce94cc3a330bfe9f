"""HF folder → GGUF → quantized GGUF, offline, with the llama.cpp that serves the model.

Unsloth's exporter downloads ``convert_hf_to_gguf.py`` from GitHub master and builds llama.cpp
at run time: it fails offline and without compilers, and a master converter can write tensors an
older runtime cannot load. Here the converter comes from the PyPI sdist of the *installed*
llama-cpp-python version (the sdist vendors the script with its ``conversion/`` package and its
own ``gguf-py``), fetched once with pip and extracted into a cache; a local llama.cpp checkout
can be used instead. Quantization uses ``llama_cpp.llama_model_quantize``. Both run in
subprocesses.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from training.errors import ConverterError, UnsupportedArchitecture
from training.merge import ensure_free_space

log = logging.getLogger("finechat.training")

SCRIPT = "convert_hf_to_gguf.py"
_KEEP = (SCRIPT, "conversion/", "gguf-py/", "LICENSE")


@dataclass(frozen=True)
class Converter:
    root: Path  # holds convert_hf_to_gguf.py (+ conversion/, gguf-py/)
    origin: str  # "llama-cpp-python X sdist" or "checkout PATH"

    @property
    def script(self) -> Path:
        return self.root / SCRIPT


def cache_dir() -> Path:
    env = os.environ.get("FINECHAT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "finechat"


def llama_cpp_version() -> str:
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        raise ConverterError("llama-cpp-python is not installed") from None


def locate_converter(checkout: str | Path | None = None, *, progress: bool = True) -> Converter:
    """A local checkout if given, else the cached sdist extraction (fetched once with pip)."""
    if checkout:
        root = Path(checkout).expanduser()
        if not (root / SCRIPT).is_file():
            raise ConverterError(f"{root} has no {SCRIPT} (expected a llama.cpp checkout)")
        return Converter(root, f"checkout {root}")
    version = llama_cpp_version()
    root = cache_dir() / f"llama-cpp-python-{version}-convert"
    if not (root / ".complete").is_file():
        _fetch_sdist_converter(version, root, progress=progress)
    return Converter(root, f"llama-cpp-python {version} sdist")


def _fetch_sdist_converter(version: str, root: Path, *, progress: bool) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".fetch-") as tmp:
        log.info("fetching the llama.cpp converter from the llama-cpp-python %s sdist", version)
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            f"llama-cpp-python=={version}", "-d", tmp,
        ]  # fmt: skip
        proc = subprocess.run(
            cmd, capture_output=not progress, text=True, stdin=subprocess.DEVNULL, check=False
        )
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            tail = (proc.stderr or "").strip().splitlines()[-3:] if not progress else []
            raise ConverterError(
                f"could not fetch the llama-cpp-python {version} sdist with pip "
                f"({' / '.join(tail) or 'see the output above'}); pass --converter PATH to a "
                "llama.cpp checkout instead"
            )
        staging = Path(tmp) / "convert"
        with tarfile.open(archives[0]) as tar:
            prefix = f"{tar.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(_KEEP):
                    m.name = m.name[len(prefix) :]
                    members.append(m)
            if not any(m.name == SCRIPT for m in members):
                raise ConverterError(f"the llama-cpp-python {version} sdist has no {SCRIPT}")
            tar.extractall(staging, members=members, filter="data")
        (staging / ".complete").write_text(version, encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)


def check_architecture(converter: Converter, model_dir: Path) -> str:
    """Fail fast, with the name, when the converter has no class for the model's architecture."""
    import json

    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConverterError(f"{model_dir} has no readable config.json ({exc})") from None
    archs = cfg.get("architectures") or []
    if not archs:
        raise UnsupportedArchitecture(f"{model_dir}/config.json names no architecture")
    arch = str(archs[0])
    pattern = re.compile(r"register\([^)]*[\"']" + re.escape(arch) + r"[\"']", re.S)
    sources = [converter.script, *sorted((converter.root / "conversion").glob("*.py"))]
    for src in sources:
        if pattern.search(src.read_text(encoding="utf-8", errors="replace")):
            return arch
    raise UnsupportedArchitecture(
        f"llama.cpp's converter ({converter.origin}) does not support {arch}; "
        "a newer llama-cpp-python (or --converter PATH to a newer llama.cpp checkout) may"
    )


def _run(cmd: list[str], what: str, on_line: Callable[[str], None] | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    tail: deque[str] = deque(maxlen=12)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, errors="replace", env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        if on_line is not None:
            on_line(line)
        else:
            log.debug("%s: %s", what, line)
    if proc.wait() != 0:
        detail = " | ".join(t for t in tail if t.strip())[-1500:]
        raise ConverterError(f"{what} failed (exit {proc.returncode}): {detail}")


def convert(
    converter: Converter,
    model_dir: Path,
    outfile: Path,
    *,
    outtype: str = "bf16",
    on_line: Callable[[str], None] | None = None,
) -> Path:
    """Run ``convert_hf_to_gguf.py`` in a subprocess (bf16 by default: f16 can overflow)."""
    check_architecture(converter, model_dir)
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    ensure_free_space(outfile.parent, weights + 50_000_000, f"the {outtype} GGUF")
    outfile.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(converter.script), str(model_dir), "--outfile", str(outfile),
           "--outtype", outtype]  # fmt: skip
    _run(cmd, "convert_hf_to_gguf", on_line)
    if not outfile.is_file():
        raise ConverterError(f"the converter wrote no {outfile.name}")
    return outfile


def quantize(src: Path, dst: Path, quant: str, *, threads: int = 0) -> Path:
    """``llama_model_quantize`` in a subprocess (a C crash must not kill this process)."""
    from training.quantize import ftype_of

    ftype_of(quant)  # unknown names fail here, with the list of valid ones
    ensure_free_space(dst.parent, src.stat().st_size, f"the {quant} GGUF")
    cmd = [sys.executable, "-m", "training.quantize", str(src), str(dst), quant, str(threads)]
    _run(cmd, f"quantize to {quant}", None)
    if not dst.is_file():
        raise ConverterError(f"quantizing wrote no {dst.name}")
    return dst
