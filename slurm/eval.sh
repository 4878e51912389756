#!/usr/bin/env bash
# Zero-shot evaluation of a run's checkpoint or an exported model on a shard set, one task per GPU.
#
#   mkdir -p logs
#   sbatch slurm/eval.sh MODEL SHARDS [ONEPEACE-EVAL FLAGS...]
#   sbatch slurm/eval.sh runs/vl-base shards/coco-val --out results/coco-val.json
#   sbatch --ntasks-per-node=8 --gpus-per-node=8 slurm/eval.sh exports/al-base shards/esc50-val \
#          --kind audio --labels esc50.txt --template "a sound of {}"
#
# Every task runs
#   python -m onepeace.eval.cli MODEL --data SHARDS --num-workers W FLAGS...
# The tasks split the set (each sample is embedded by exactly one of them), gather the embeddings, and
# task 0 prints the table (or, with --json, one JSON object) to the job's log; --out FILE also writes
# the JSON to FILE. Ranks come from SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), the master
# address from the node list, the port from the job id. Works on CPU nodes too (gloo instead of NCCL).
#
# Arguments
#   MODEL      a run directory (its newest complete checkpoint), one checkpoint directory
#              (RUN/checkpoints/stepNNNNNNNN) or an exported model directory (onepeace-export)
#   SHARDS     evaluation shards: a folder with index.json, an index.json, or tar paths with braces
#   FLAGS      passed to onepeace-eval after ours (so they win): --kind, --labels, --template,
#              --tokenizer, --batch-size, --num-workers, --dtype bf16, --json, --out ...
# Paths are taken relative to the directory the job runs in (the submit directory unless --chdir); a
# run's tokenizer path is the one its recipe names, so submit from where the run was started.
# Environment
#   PYTHON        interpreter (default: the repository's .venv/bin/python if present, else python3)
#   NUM_WORKERS   DataLoader workers per task (default: SLURM_CPUS_PER_TASK - 1, at least 1)
#   ONEPEACE_ROOT the repository (default: found from this script's submitted path or the submit dir)
#
# Defaults below; any of them can be overridden on the sbatch command line.
#SBATCH --job-name=eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1          # one task per GPU: raise together with --gpus-per-node
#SBATCH --cpus-per-task=8            # decoding workers per task (NUM_WORKERS = this - 1)
#SBATCH --time=02:00:00
#SBATCH --output=logs/%x-%j.out      # the logs/ folder must exist before sbatch (mkdir -p logs)
##SBATCH --gpus-per-node=1           # uncomment on GPU nodes (and match --ntasks-per-node)
##SBATCH --partition=gpu
set -euo pipefail

die() { echo "eval.sh: error: $*" >&2; exit 2; }
usage() {
  sed -n '2,/^# Defaults below/{/^# Defaults below/!p}' "${BASH_SOURCE[0]}" 2>/dev/null | sed 's/^# \{0,1\}//' >&2 || true
  die "$*"
}

[[ $# -ge 2 ]] || usage "expected MODEL SHARDS [ONEPEACE-EVAL FLAGS...], got $# argument(s)"
[[ -n "${SLURM_JOB_ID:-}" ]] || die "not a SLURM job: submit with 'sbatch $0 MODEL SHARDS'.
Without SLURM run: onepeace-eval MODEL --data SHARDS (or torchrun --nproc_per_node N -m onepeace.eval.cli ...)"

model=$1
shards=$2
shift 2
extra=("$@")
[[ -e "$model" ]] || die "model $model does not exist (relative paths are taken from $PWD)"

# The repository: ONEPEACE_ROOT, else the folder above the script as it was submitted (the job runs a copy),
# else the submit directory.
repo="${ONEPEACE_ROOT:-}"
if [[ -z "$repo" ]]; then
  submitted=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.* Command=\([^ ]*\).*/\1/p' | head -n1 || true)
  for candidate in "${submitted:+$(dirname -- "$submitted")/..}" "${SLURM_SUBMIT_DIR:-}"; do
    if [[ -n "$candidate" && -f "$candidate/onepeace/eval/cli.py" ]]; then repo=$(realpath -- "$candidate"); break; fi
  done
fi
[[ -n "$repo" && -f "$repo/onepeace/eval/cli.py" ]] \
  || die "cannot find the repository (onepeace/eval/cli.py); submit from its root or set ONEPEACE_ROOT"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null || die "python interpreter '$PYTHON' not found (set PYTHON)"

cpus=${SLURM_CPUS_PER_TASK:-2}
workers=${NUM_WORKERS:-$(( cpus > 2 ? cpus - 1 : 1 ))}
[[ "$workers" =~ ^[0-9]+$ ]] || die "NUM_WORKERS must be a non-negative integer, got '$workers'"

# The job stays where it was submitted (relative paths in the arguments keep their meaning); the
# repository goes on the import path for an interpreter that does not have the package installed.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$cpus}
tasks=${SLURM_NTASKS:-1}
echo "eval.sh: $model on $shards with $tasks task(s) on ${SLURM_JOB_NODELIST:-$(hostname)}"
exec srun --kill-on-bad-exit=1 "$PYTHON" -m onepeace.eval.cli "$model" --data "$shards" --num-workers "$workers" \
  ${extra[@]+"${extra[@]}"}
