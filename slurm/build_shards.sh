#!/usr/bin/env bash
# Build WebDataset shards from a manifest as a SLURM job array: one task per split, then one merged index.
#
#   mkdir -p logs
#   sbatch slurm/build_shards.sh MANIFEST OUT [BUILD_SHARDS FLAGS...]
#   sbatch --array=0-31 --cpus-per-task=16 slurm/build_shards.sh data/coco/train.tsv shards/coco --image-size 256
#
# Array task I of N runs
#   python -m data_tools.build_shards --manifest MANIFEST --num-splits N --split-index I --out OUT/split-III ...
# and the lowest task submits a merge job that runs once every task has succeeded
# (--dependency=afterok, cancelled by SLURM if one fails):
#   python -m data_tools.build_shards merge --out OUT OUT/split-000 ... OUT/split-<N-1>
# so OUT/index.json (and OUT/rejects.jsonl) covers every split; shards stay in the split folders.
# The merge job's id is printed in the lowest task's log (logs/build_shards-<array id>_0.out).
#
# Arguments
#   MANIFEST   .tsv/.csv/.jsonl manifest (--manifest), or a .txt file with one text per line (--text-file)
#   OUT        output folder; the splits go to OUT/split-000, OUT/split-001, ...
#   FLAGS      passed to every split build, after ours (so they win): --kind, --image-size,
#              --samples-per-shard, --root, --workers, --resume or --overwrite ...
# Environment
#   PYTHON        interpreter (default: the repository's .venv/bin/python if present, else python3)
#   KIND          adds --kind KIND (image-text, audio-text, image, audio, text)
#   NUM_SPLITS    number of splits (default: the array's size). Set it to re-run some splits of an earlier
#                 build, e.g. NUM_SPLITS=32 sbatch --array=5,17 slurm/build_shards.sh ... --overwrite
#   ONEPEACE_ROOT the repository (default: found from this script's submitted path or the submit dir)
#   MERGE_TIME    time limit of the merge job (default 01:00:00)
# A requeued task (SLURM_RESTART_COUNT > 0) continues its split with --resume, unless FLAGS say otherwise.
# A split folder that already holds a build is an error unless FLAGS have --resume or --overwrite.
#
# Defaults below; any of them can be overridden on the sbatch command line.
#SBATCH --job-name=build_shards
#SBATCH --array=0-7                  # one task per split: the array's size is the number of splits
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8            # decoding processes per split (passed as --workers)
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%A_%a.out   # the logs/ folder must exist before sbatch (mkdir -p logs)
##SBATCH --mem=32G                   # uncomment and adjust for large images or long audio
##SBATCH --partition=cpu
set -euo pipefail

die() { echo "build_shards.sh: error: $*" >&2; exit 2; }
usage() {
  sed -n '2,/^# Defaults below/{/^# Defaults below/!p}' "${BASH_SOURCE[0]}" 2>/dev/null | sed 's/^# \{0,1\}//' >&2 || true
  die "$*"
}

[[ $# -ge 2 ]] || usage "expected MANIFEST OUT [BUILD_SHARDS FLAGS...], got $# argument(s)"
[[ -n "${SLURM_ARRAY_TASK_ID:-}" ]] || die "not a SLURM array task: submit with 'sbatch [--array=0-N] $0 MANIFEST OUT'.
For one local build run: python -m data_tools.build_shards --manifest MANIFEST --out OUT"

# Paths are relative to where the job runs (the submit directory unless --chdir).
manifest=$(realpath -m -- "$1")
out=$(realpath -m -- "$2")
shift 2
extra=("$@")
[[ -f "$manifest" ]] || die "manifest $manifest does not exist (relative paths are taken from $PWD)"

# The repository: ONEPEACE_ROOT, else the folder above the script as it was submitted (the job runs a copy),
# else the submit directory.
repo="${ONEPEACE_ROOT:-}"
if [[ -z "$repo" ]]; then
  submitted=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.* Command=\([^ ]*\).*/\1/p' | head -n1 || true)
  for candidate in "${submitted:+$(dirname -- "$submitted")/..}" "${SLURM_SUBMIT_DIR:-}"; do
    if [[ -n "$candidate" && -f "$candidate/data_tools/build_shards.py" ]]; then repo=$(realpath -- "$candidate"); break; fi
  done
fi
[[ -n "$repo" && -f "$repo/data_tools/build_shards.py" ]] \
  || die "cannot find the repository (data_tools/build_shards.py); submit from its root or set ONEPEACE_ROOT"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null || die "python interpreter '$PYTHON' not found (set PYTHON)"

task=$SLURM_ARRAY_TASK_ID
if [[ -n "${NUM_SPLITS:-}" ]]; then
  [[ "$NUM_SPLITS" =~ ^[1-9][0-9]*$ ]] || die "NUM_SPLITS must be a positive integer, got '$NUM_SPLITS'"
  splits=$NUM_SPLITS
else
  splits=$SLURM_ARRAY_TASK_COUNT
  [[ "$SLURM_ARRAY_TASK_MIN" -eq 0 && "$SLURM_ARRAY_TASK_MAX" -eq $((splits - 1)) ]] \
    || die "the array must be 0-$((splits - 1)) (got ${SLURM_ARRAY_TASK_MIN}-${SLURM_ARRAY_TASK_MAX} with $splits tasks);" \
           "to build only some splits of an N-way build set NUM_SPLITS=N"
fi
(( task < splits )) || die "array task $task is not a split of $splits (NUM_SPLITS=$splits)"
part() { printf '%s/split-%03d' "$out" "$1"; }

input_flag=--manifest
[[ "$manifest" == *.txt ]] && input_flag=--text-file
args=("$input_flag" "$manifest" --out "$(part "$task")" --num-splits "$splits" --split-index "$task"
      --workers "${SLURM_CPUS_PER_TASK:-1}" --quiet)
[[ -n "${KIND:-}" ]] && args+=(--kind "$KIND")
if [[ "${SLURM_RESTART_COUNT:-0}" -gt 0 && ! " ${extra[*]-} " =~ \ --(resume|overwrite)\  ]]; then
  args+=(--resume)
fi

# The lowest task submits the merge (once: not again when requeued), before building, so that it exists
# even if this task is the one that fails (SLURM then cancels it: --kill-on-invalid-dep).
if [[ "$task" -eq "$SLURM_ARRAY_TASK_MIN" && "${SLURM_RESTART_COUNT:-0}" -eq 0 ]]; then
  parts=()
  for ((i = 0; i < splits; i++)); do parts+=("$(part "$i")"); done
  log_dir=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.* StdOut=\([^ ]*\).*/\1/p' | head -n1 || true)
  log_dir=$(dirname -- "${log_dir:-$PWD/x}")
  merge_cmd=$(printf '%q ' cd "$repo")"&& exec "$(printf '%q ' "$PYTHON" -m data_tools.build_shards merge --out "$out" "${parts[@]}")
  merge_opts=(--parsable --job-name="${SLURM_JOB_NAME:-build_shards}-merge" --ntasks=1 --cpus-per-task=1
              --time="${MERGE_TIME:-01:00:00}" --output="$log_dir/%x-%j.out"
              --dependency="afterok:$SLURM_ARRAY_JOB_ID" --kill-on-invalid-dep=yes)
  [[ -n "${SLURM_JOB_PARTITION:-}" ]] && merge_opts+=(--partition="$SLURM_JOB_PARTITION")
  [[ -n "${SLURM_JOB_ACCOUNT:-}" ]] && merge_opts+=(--account="$SLURM_JOB_ACCOUNT")
  merge_job=$(sbatch "${merge_opts[@]}" --wrap "$merge_cmd")
  echo "build_shards.sh: merge job ${merge_job%%;*} will write $out/index.json once array job $SLURM_ARRAY_JOB_ID succeeds"
fi

echo "build_shards.sh: split $task of $splits on $(hostname) -> $(part "$task")"
cd "$repo"
exec "$PYTHON" -m data_tools.build_shards "${args[@]}" ${extra[@]+"${extra[@]}"}
