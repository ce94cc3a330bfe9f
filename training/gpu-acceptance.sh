#!/usr/bin/env bash
# GPU acceptance for finechat's training half: the Unsloth path and the hf back end on a GPU.
#
# Sized for a lent GPU machine that has no internet, PyTorch and transformers preinstalled, and
# at most 64 MiB of files carried in. Three modes:
#
#   bash training/gpu-acceptance.sh prepare      # here, with PyPI: fill .gpu-carry/ (≈25 MiB)
#   bash training/gpu-acceptance.sh run          # there, on the GPU, offline, from .gpu-carry/
#   bash training/gpu-acceptance.sh cpu-dry-run  # here, no GPU: the same steps minus Unsloth
#
# `prepare` downloads wheels for what such a machine lacks (Python 3.12, manylinux x86_64):
# unsloth + unsloth_zoo (2026.10.9; unsloth's web "studio" stripped: 82 MB of UI nothing here
# imports), trl 1.15.0 (Unsloth's ceiling), datasets 4.8.5 (Unsloth wants < 5), bitsandbytes
# (only its CUDA 13 and CPU libraries kept), torchao, cut_cross_entropy, tyro and its helpers,
# gguf, diskcache, aiosqlite; plus this machine's own llama-cpp-python build (the ctypes
# libraries only; built for x86-64 with AVX2, glibc 2.36) and llama.cpp's converter from the
# llama-cpp-python sdist. It fails if the carry would not fit. xformers, diffusers and
# hf_transfer are left out on purpose: Unsloth imports them only if present.
#
# `run` installs the carried wheels into /tmp/site (nothing outside it changes), builds the tiny
# random Llama on the spot (a SentencePiece tokenizer trained on the shipped sample), and then:
#   1. Unsloth: 4-bit load, LoRA at the llama-3.2-1b-r8 config's settings (r=8, alpha=16, the
#      7 projections, lr 2e-4, batch 2 x 4, adamw_8bit), responses-only loss; then merge → GGUF
#      bf16 → q4_k_m → the export's checks (tokenizer, template, EOS, parity, export gate);
#   2. the hf back end on the GPU (transformers + peft + trl, bitsandbytes 4-bit), same settings,
#      same export;
# and prints steps/s and the export's checks of each. Results go to $OUT (the device tool's
# folder) or ./gpu-acceptance-out. Run it under the device tool as, for example:
#   run(command="bash training/gpu-acceptance.sh run", carry=[".gpu-carry"], timeout_s=540)
# Exit status: 0 when both paths trained, exported and passed their checks.
set -euo pipefail

MODE="${1:-help}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="${GPU_CARRY:-$ROOT/.gpu-carry}"
RESULTS="${OUT:-$ROOT/gpu-acceptance-out}"
STEPS="${GPU_ACCEPTANCE_STEPS:-40}"
BUDGET_MIB="${GPU_CARRY_BUDGET_MIB:-60}"  # leave room for the repository itself (~1 MiB)
PY312=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps
       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
       --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
WHEELS=(
  unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 dill==0.4.1
  multiprocess==0.70.19 bitsandbytes==0.50.2 torchao==0.17.0 cut_cross_entropy==25.1.1
  tyro==1.0.17 docstring_parser==0.18.0 shtab==1.13.0 typeguard==4.6.1 gguf==0.19.0
  diskcache==5.6.3 aiosqlite==0.22.1
)

say() { printf '\n== %s\n' "$*"; }

python_here() {
  if [[ -x "$ROOT/.venv/bin/python" ]]; then echo "$ROOT/.venv/bin/python"; else command -v python3; fi
}

# A copy of a wheel without some of its files, RECORD rewritten (pip checks it).
slim_wheel() {  # slim_wheel IN.whl OUT.whl PYTHON-REGEX-OF-PATHS-TO-DROP
  "$PYTHON" - "$1" "$2" "$3" <<'PY'
import base64, hashlib, re, sys, zipfile
src, dst, drop = sys.argv[1], sys.argv[2], re.compile(sys.argv[3])
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    lines = []
    for info in zin.infolist():
        if info.filename == record_name or drop.search(info.filename):
            continue
        data = zin.read(info)
        zout.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{info.filename},sha256={digest},{len(data)}")
    lines.append(f"{record_name},,")
    zout.writestr(record_name, "\n".join(lines) + "\n")
PY
}

# This machine's llama-cpp-python as a wheel holding only what ctypes loads.
llama_cpp_wheel() {  # llama_cpp_wheel OUT_DIR
  "$PYTHON" - "$1" <<'PY'
import base64, hashlib, importlib.metadata as md, pathlib, sys, zipfile
out = pathlib.Path(sys.argv[1])
dist = md.distribution("llama_cpp_python")
version = dist.version
pkg = pathlib.Path(dist.locate_file("llama_cpp"))
libs = {"libllama.so", "libggml.so", "libggml.so.0", "libggml-base.so", "libggml-base.so.0",
        "libggml-cpu.so", "libggml-cpu.so.0"}
files = [p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts
         and (p.parent.name != "lib" or p.name in libs) and "server" not in p.parts]
missing = libs - {p.name for p in files}
if missing:
    sys.exit(f"llama_cpp/lib lacks {sorted(missing)}: build llama-cpp-python first (make install-test)")
info = f"llama_cpp_python-{version}.dist-info"
wheel = out / f"llama_cpp_python-{version}-py3-none-linux_x86_64.whl"
record = []
with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
    def put(name, data):
        z.writestr(name, data)
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={h},{len(data)}")
    for p in sorted(files):
        put(f"llama_cpp/{p.relative_to(pkg).as_posix()}", p.read_bytes())
    put(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: {version}\n".encode())
    put(f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: finechat-gpu-acceptance\nRoot-Is-Purelib: false\nTag: py3-none-linux_x86_64\n")
    z.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
print(wheel.name)
PY
}

prepare() {
  PYTHON="${PYTHON:-$(python_here)}"
  rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/raw"
  say "downloading wheels for Python 3.12 / manylinux x86_64 into $CARRY"
  "$PYTHON" -m pip download -q "${PY312[@]}" -d "$CARRY/raw" "${WHEELS[@]}"
  for w in "$CARRY"/raw/*.whl; do
    case "$(basename "$w")" in
      unsloth-2*) slim_wheel "$w" "$CARRY/wheels/$(basename "$w")" '^studio/' ;;
      bitsandbytes-*)
        slim_wheel "$w" "$CARRY/wheels/$(basename "$w")" \
          'libbitsandbytes_(cuda1[12][0-9]|rocm|xpu|mps)[^/]*\.(so|dll|dylib)$' ;;
      *) cp "$w" "$CARRY/wheels/" ;;
    esac
  done
  rm -rf "$CARRY/raw"
  say "this machine's llama-cpp-python (ctypes libraries only)"
  llama_cpp_wheel "$CARRY/wheels"
  say "llama.cpp's converter (from the llama-cpp-python sdist, as finechat export uses it)"
  (cd "$ROOT" && PYTHONPATH="$ROOT" "$PYTHON" -c '
import shutil, sys
from training.gguf_export import locate_converter
conv = locate_converter(progress=False)
shutil.copytree(conv.root, sys.argv[1], ignore=shutil.ignore_patterns("__pycache__"))
print(conv.origin)' "$CARRY/converter")
  local bytes mib
  bytes=$(du -sb "$CARRY" | cut -f1)
  mib=$(( (bytes + 1048575) / 1048576 ))
  say "carry: $mib MiB in $CARRY (budget $BUDGET_MIB MiB)"
  ls -la "$CARRY/wheels" | awk 'NR>1 {printf "  %8.1f KiB  %s\n", $5/1024, $9}'
  if (( mib > BUDGET_MIB )); then
    echo "error: the carry is over budget ($mib > $BUDGET_MIB MiB)" >&2
    exit 1
  fi
  grep -qxF '/.gpu-carry/' "$ROOT/.gitignore" 2>/dev/null || \
    echo "note: add /.gpu-carry/ to .gitignore (the device tool carries only ignored paths named in carry)"
  echo "next: run(command=\"bash training/gpu-acceptance.sh run\", carry=[\".gpu-carry\"])"
}

# The run config: the tiny Llama built on the spot, trained at the 1B config's settings.
write_config() {  # write_config PATH STEPS
  "$PYTHON" - "$1" "$2" "$ROOT" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[3])
from training.config import load_run_config
src = load_run_config("llama-3.2-1b-r8")
data = load_run_config("tiny-cpu").dataset.path
path, steps = sys.argv[1], int(sys.argv[2])
lora, t = src.lora, src.training
targets = ", ".join(json.dumps(m) for m in lora.target_modules)
open(path, "w", encoding="utf-8").write(f"""# generated by training/gpu-acceptance.sh from llama-3.2-1b-r8
name = "gpu-acceptance"
[model]
base = "tiny:llama"
backend = "auto"
load_in_4bit = {str(src.model.load_in_4bit).lower()}
max_seq_length = 512
chat_template = {json.dumps(src.model.chat_template)}
[lora]
r = {lora.r}
alpha = {lora.alpha}
dropout = {lora.dropout}
target_modules = [{targets}]
[dataset]
path = {json.dumps(data)}
validation_fraction = 0.1
seed = {src.dataset.seed}
[training]
train_on_responses_only = {str(t.train_on_responses_only).lower()}
optimizer = {json.dumps(t.optimizer)}
learning_rate = {t.learning_rate}
lr_scheduler = {json.dumps(t.lr_scheduler)}
warmup_steps = {t.warmup_steps}
batch_size = {t.batch_size}
gradient_accumulation_steps = {t.gradient_accumulation_steps}
max_steps = {steps}
weight_decay = {t.weight_decay}
eval_steps = {max(1, steps // 2)}
save_steps = 0
logging_steps = 1
seed = {t.seed}
[export]
merge_dtype = {json.dumps(src.export.merge_dtype)}
outtype = {json.dumps(src.export.outtype)}
quant = ["q4_k_m"]
""")
PY
}

# steps/s, losses and the export's checks of one run folder, as one JSON line + a summary.
summarize() {  # summarize NAME RUN_DIR
  "$PYTHON" - "$1" "$2" <<'PY'
import json, pathlib, sys
name, run = sys.argv[1], pathlib.Path(sys.argv[2])
info = json.loads((run / "run.json").read_text())
hist = info["metrics"]["log_history"]
final = next((e for e in reversed(hist) if "train_runtime" in e), {})
losses = [e["loss"] for e in hist if "loss" in e]
verify = json.loads((run / "verify.json").read_text()) if (run / "verify.json").is_file() else {}
out = {
    "path": name,
    "backend": info.get("backend"),
    "steps": info["metrics"]["steps"],
    "train_runtime_s": final.get("train_runtime"),
    "steps_per_s": final.get("train_steps_per_second"),
    "samples_per_s": final.get("train_samples_per_second"),
    "loss_first": losses[0] if losses else None,
    "loss_last": losses[-1] if losses else None,
    "eval_loss": info["metrics"].get("eval_loss"),
    "versions": info.get("versions"),
    "verify_ok": verify.get("ok"),
    "problems": verify.get("problems"),
    "tokenization_match": verify.get("tokenization_match"),
    "greedy_match": verify.get("greedy_match"),
    "max_abs_logit_diff": verify.get("max_abs_logit_diff"),
    "perplexity": verify.get("perplexity"),
    "tokenizer_parity": {k: v for k, v in (verify.get("tokenizer_parity") or {}).items() if k != "examples"},
    "gate": verify.get("gate"),
}
print(json.dumps(out))
print(f"{name}: {out['steps']} steps at {out['steps_per_s']} steps/s "
      f"(loss {out['loss_first']} -> {out['loss_last']}); export checks ok={out['verify_ok']} "
      f"gate={ {q: (round(g['perplexity_ratio'], 4), round(g['mean_kl'], 4), g['ok']) for q, g in (out['gate'] or {}).items()} }",
      file=sys.stderr)
PY
}

train_and_export() {  # train_and_export NAME BACKEND CONFIG
  local name="$1" backend="$2" cfg="$3" dir="$WORK/$1"
  say "$name: finechat train --backend $backend --export"
  local t0=$SECONDS rc=0
  "$PYTHON" -m core.cli train --config "$cfg" --out "$dir" --backend "$backend" --export \
    --converter "$CARRY/converter" >"$RESULTS/$name.log" 2>&1 || rc=$?
  echo "exit $rc after $((SECONDS - t0)) s (log: $RESULTS/$name.log)"
  grep -E "^(data:|trained|loss curve|verified|export gate|wrote|error)" "$RESULTS/$name.log" || true
  if [[ -f "$dir/run.json" ]]; then
    summarize "$name" "$dir" >>"$RESULTS/summary.jsonl" || rc=1
  fi
  cp "$dir/loss.png" "$RESULTS/$name-loss.png" 2>/dev/null || true
  return "$rc"
}

run_checks() {  # run_checks [--cpu]
  local cpu="${1:-}"
  mkdir -p "$RESULTS"
  : >"$RESULTS/summary.jsonl"
  WORK="$(mktemp -d /tmp/finechat-gpu-XXXXXX)"
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UNSLOTH_STUDIO_DISABLED=1
  export FINECHAT_CACHE_DIR="$WORK/cache" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  cd "$ROOT"
  say "environment"
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi") 2>&1
  "$PYTHON" - <<'PY'
import importlib, importlib.metadata as md
for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
             "unsloth", "unsloth_zoo", "torchao", "llama_cpp_python", "gguf", "sentencepiece"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} -- not installed")
import torch
print("  cuda:", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import llama_cpp  # the carried ctypes libraries load here, or this fails loudly
print("  llama.cpp system info:", llama_cpp.llama_print_system_info().decode()[:120])
PY
  local cfg="$WORK/gpu-acceptance.toml" status=0
  write_config "$cfg" "$STEPS"
  if [[ -n "$cpu" ]]; then
    say "cpu-dry-run: Unsloth needs a GPU and is skipped; the hf back end runs on the CPU"
    "$PYTHON" -c 'import sys; sys.path.insert(0, "'"$ROOT"'")
from training.config import load_run_config
c = load_run_config(sys.argv[1]); print("  config ok:", c.lora, c.training.optimizer)' "$cfg"
    sed -i 's/^optimizer = "adamw_8bit"/optimizer = "adamw_torch"/' "$cfg"  # 8-bit Adam needs CUDA
    train_and_export hf-cpu hf "$cfg" || status=1
  else
    "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible")'
    train_and_export unsloth unsloth "$cfg" || status=1
    train_and_export hf-gpu hf "$cfg" || status=1
  fi
  say "summary ($RESULTS/summary.jsonl)"
  cat "$RESULTS/summary.jsonl" 2>/dev/null || true
  rm -rf "$WORK"
  return "$status"
}

case "$MODE" in
  prepare)
    prepare
    ;;
  run)
    [[ -d "$CARRY/wheels" ]] || { echo "error: no $CARRY/wheels (run 'prepare' where PyPI is reachable)" >&2; exit 2; }
    PYTHON="${PYTHON:-python3}"
    say "installing the carried wheels into /tmp/site (offline)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$CARRY"/wheels/*.whl
    export PYTHONPATH="$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    run_checks
    ;;
  cpu-dry-run)
    PYTHON="${PYTHON:-$(python_here)}"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    if [[ -d "$CARRY/converter" ]]; then :; else
      CARRY="$(mktemp -d /tmp/finechat-carry-XXXXXX)"
      (cd "$ROOT" && "$PYTHON" -c 'import shutil, sys
from training.gguf_export import locate_converter
shutil.copytree(locate_converter(progress=False).root, sys.argv[1])' "$CARRY/converter")
    fi
    STEPS="${GPU_ACCEPTANCE_STEPS:-4}"
    run_checks --cpu
    ;;
  *)
    sed -n '2,30p' "$0"
    exit 2
    ;;
esac
