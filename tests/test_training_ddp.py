"""More than one process through an existing engine: the ``hf`` back end under
``accelerate launch`` (DDP), unchanged, on the CPU with two gloo processes and the tiny model.

Two processes with a per-process batch of 2 take the same optimizer steps as one process with a
batch of 2 and 2 accumulation steps (accelerate deals the batches of the same seeded order out
to the ranks), so the loss after N steps must match within floating-point noise.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from training.config import load_run_config

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def _config(tmp_path: Path, name: str, base: str, accumulation: int) -> Path:
    data = load_run_config("tiny-cpu").dataset.path
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""name = "{name}"
[model]
base = {json.dumps(base)}
backend = "hf"
load_in_4bit = false
max_seq_length = 256
[dataset]
path = {json.dumps(data)}
max_samples = 64
[training]
learning_rate = 5e-3
warmup_steps = 1
batch_size = 2
gradient_accumulation_steps = {accumulation}
max_steps = {STEPS}
eval_steps = 0
save_steps = 0
logging_steps = 1
seed = 0
""",
        encoding="utf-8",
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINECHAT_", "ACCELERATE_"))}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=600, check=False, env=env, cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _losses(run: Path) -> list[float]:
    info = json.loads((run / "run.json").read_text())
    return [float(e["loss"]) for e in info["metrics"]["log_history"] if "loss" in e]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    one = tmp_path / "one"
    cfg = _config(tmp_path, "one", "tiny:llama", accumulation=2)
    proc = _run(
        [sys.executable, "-m", "core.cli", "train", "--config", str(cfg), "--out", str(one)]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    two = tmp_path / "two"
    cfg = _config(tmp_path, "two", str(one / "base"), accumulation=1)  # the same tiny base
    launch = [
        # the documented multi-GPU command; without CUDA its processes train on the CPU over
        # gloo (accelerate's --cpu alone would start one process: CPU DDP needs mpirun there)
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "core.cli", "train", "--config", str(cfg), "--out", str(two),
    ]  # fmt: skip
    proc = _run(launch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"trained {STEPS} steps with hf") == 1  # rank 0 reports
    info = json.loads((two / "run.json").read_text())
    assert info["processes"] == 2

    single, ddp = _losses(one), _losses(two)
    print(f"losses, one process: {single}; two gloo processes: {ddp}")
    assert len(single) == len(ddp) == STEPS
    assert single[-1] < single[0]  # it learned something, so matching is not trivial
    for a, b in zip(single, ddp, strict=True):
        assert b == pytest.approx(a, rel=1e-3), (single, ddp)  # measured: identical
    assert (two / "adapter" / "adapter_model.safetensors").is_file()
