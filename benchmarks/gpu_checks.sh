#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a lent H100/H200 (torch 2.11, no deepspeed/webdataset).
# Results go to $OUT (the device tool's output folder) or ./gpu_out. `QUICK=1` runs tiny sizes on any
# device, to test this script on a CPU before spending GPU time.
#   device run:  bash benchmarks/gpu_checks.sh
#   CPU rehearsal:  QUICK=1 bash benchmarks/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
run() {  # run a step, keep going on failure, remember it
  echo "=== $*"
  "$@" || { echo "=== FAILED ($?): $*"; status=1; }
}
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  if [ "${QUICK:-0}" = 1 ]; then
    run $PY -m pytest -q -p no:cacheprovider tests/unit/test_attention_backends.py tests/unit/test_compile.py
    run $PY benchmarks/attention.py --lengths 72,257 --repeats 1 --warmup 0 --json "$OUT/attention.json"
    run $PY benchmarks/model_step.py --preset tiny --kinds image-text --batch 2 --repeats 1 --warmup 0 \
      --json "$OUT/model_step.json"
    run $PY benchmarks/train_step.py --presets tiny --batch 2 --steps 1 --warmup 0 --engine torch \
      --checkpointing both --json "$OUT/train_step.json"
    run $PY benchmarks/train_step.py --presets tiny --batch 2 --steps 2 --warmup 1 --engine torch \
      --checkpointing off --sync-check --json "$OUT/sync_check.json"
  else
    run $PY -m pytest -q -p no:cacheprovider tests/unit/test_attention_backends.py tests/unit/test_compile.py
    run $PY benchmarks/attention.py --dtype bf16 --batch 32 --json "$OUT/attention.json"
    run $PY benchmarks/model_step.py --preset base --kinds image-text,image,text,audio-text --batch 128 \
      --json "$OUT/model_step_base.json"
    run $PY benchmarks/model_step.py --preset large --kinds image-text,audio-text --batch 64 \
      --json "$OUT/model_step_large.json"
    run $PY benchmarks/model_step.py --preset large --kinds image-text --batch 64 --compile \
      --json "$OUT/model_step_large_compiled.json"
    # the GPU image has no DeepSpeed: full stage-1 steps with torch AdamW (same model, losses and masks)
    run $PY benchmarks/train_step.py --presets base,large --batch 64 --engine torch --checkpointing both \
      --json "$OUT/train_step.json"
    # every host wait of a base step, attributed (set_sync_debug_mode("warn") + value reads)
    run $PY benchmarks/train_step.py --presets base --batch 32 --steps 3 --warmup 1 --engine torch \
      --checkpointing off --sync-check --json "$OUT/sync_check.json"
  fi
  # the trainer's own sync-free-step test needs DeepSpeed and WebDataset (carried as wheels, if at all)
  if $PY -c "import deepspeed, webdataset" 2>/dev/null; then
    run $PY -m pytest -q -p no:cacheprovider tests/e2e/test_sync_free_step.py
  else
    echo "=== skipped tests/e2e/test_sync_free_step.py: no deepspeed/webdataset on this machine"
  fi
} 2>&1 | tee "$OUT/log.txt"
exit $status
