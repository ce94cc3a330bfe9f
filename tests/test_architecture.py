"""``core`` stays the lowest layer: no Discord, Telegram, Gradio, web or training code in it.

Checked twice: in the source (every import, including those inside function bodies — a lazy
import is still a dependency) and at run time (importing all of ``core`` loads none of them).
Commands that ``web`` and ``training`` add register through the ``finechat.commands`` entry
point instead (:mod:`core.commands`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
FORBIDDEN = ("discord", "telegram", "gradio", "bots", "web", "training", "fastapi", "uvicorn")
TRAINING_LIBS = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "unsloth")


def _imports(path: Path) -> list[str]:
    """Every absolute module a file imports, at any depth (functions included)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_core_source_imports_no_platform_web_or_training_module() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted(CORE.rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN + TRAINING_LIBS
    ]
    assert offenders == []


def test_the_architecture_check_sees_lazy_imports(tmp_path: Path) -> None:
    """The check itself can fail: an import hidden in a function body is found."""
    sample = tmp_path / "lazy.py"
    sample.write_text("def f():\n    from web.server import app\n    import training.cli\n")
    assert _imports(sample) == ["web.server", "training.cli"]


def test_importing_all_of_core_loads_no_platform_library() -> None:
    code = (
        "import importlib, pkgutil, sys, core\n"
        "for m in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module('core.' + m.name)\n"
        f"bad = [n for n in sys.modules if n.split('.')[0] in {FORBIDDEN + TRAINING_LIBS!r}]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_core_has_no_import_cycles() -> None:
    """No module of core imports, directly or through others, a module that imports it back."""
    modules = {p.stem: p for p in CORE.glob("*.py") if p.stem != "__init__"}
    graph = {
        name: {
            n.split(".")[1]
            for n in _imports(path)
            if n.startswith("core.") and n.split(".")[1] in modules
        }
        for name, path in modules.items()
    }
    cycles: list[str] = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" → ".join([*trail, nxt]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert cycles == []


CHAT = ROOT / "bots" / "chat"


def test_conversation_layer_imports_only_core_and_the_standard_library() -> None:
    """``bots/chat`` is platform-free: a feature there lands on every platform at once."""
    offenders = []
    for path in CHAT.rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            allowed = (
                top in sys.stdlib_module_names
                or top == "core"
                or name == "bots.chat"
                or name.startswith("bots.chat.")
            )
            if not allowed:
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_importing_the_conversation_layer_loads_no_platform_library() -> None:
    code = (
        "import importlib, pkgutil, sys, bots.chat\n"
        "for m in pkgutil.iter_modules(bots.chat.__path__):\n"
        "    importlib.import_module('bots.chat.' + m.name)\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('discord', 'telegram', 'gradio')\n"
        "       or n.startswith(('bots.telegram', 'bots.discord'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
