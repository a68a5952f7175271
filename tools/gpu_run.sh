#!/usr/bin/env bash
# The one prepared GPU run behind chapter 11's stored results.
#
#   bash tools/gpu_run.sh [OUT]        # OUT defaults to runs/gpu
#
# Trains the `gpu` preset from scratch with the command-line program, exactly as a reader
# would, and writes beside its metrics what it ran on:
#   OUT/environment.json   GPU model, driver, torch and CUDA versions, CPU count, date, commit
#   OUT/bench.json         python -m mmgpt.bench --preset gpu (samples/s, tokens/s, MFU)
#   OUT/metrics.jsonl      the training run's loss and evaluation records (python -m mmgpt.train)
#   OUT/final.json         python -m mmgpt.evaluate on 2,000 held-out scenes per split
#   OUT/train.log          the training program's output
# The checkpoint (OUT/checkpoint.pt) is left out of the repository. To publish the run in the
# book, copy environment.json, bench.json, metrics.jsonl and final.json into
# mmgpt/results/gpu/ (shipped with the package, so Colab readers have them too) and
# re-execute chapter 11.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
if [ -e "$OUT/checkpoint.pt" ]; then
    echo "gpu_run: $OUT already holds a run; choose another folder" >&2
    exit 2
fi
"$PY" - "$OUT" <<'EOF'
import json, os, platform, subprocess, sys, time
import torch
out = sys.argv[1]
if not torch.cuda.is_available():
    sys.exit("gpu_run: no CUDA device is visible; this script records a GPU run")
def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None
env = {
    "gpu": torch.cuda.get_device_name(0),
    "gpu_count": torch.cuda.device_count(),
    "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
    "driver": run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "bf16": torch.cuda.get_device_capability()[0] >= 8,
    "python": platform.python_version(),
    "cpus": os.cpu_count(),
    "date": time.strftime("%Y-%m-%d", time.gmtime()),
    "commit": run(["git", "rev-parse", "--short", "HEAD"]),
}
json.dump(env, open(os.path.join(out, "environment.json"), "w"), indent=1)
print(json.dumps(env, indent=1))
EOF
"$PY" -m mmgpt.bench --preset gpu --steps 30 | tee "$OUT/bench.json"
start=$(date +%s)
"$PY" -m mmgpt.train --preset gpu --out "$OUT" --no-progress 2>&1 | tee "$OUT/train.log"
echo "{\"train_wall_seconds\": $(( $(date +%s) - start ))}" > "$OUT/wall.json"
"$PY" -m mmgpt.evaluate "$OUT" --size 2000 --json > "$OUT/final.json"
"$PY" -m mmgpt.evaluate "$OUT" --size 2000
