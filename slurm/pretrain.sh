#!/usr/bin/env bash
# Pretraining on one or more nodes, one task per GPU, that survives preemption and time limits.
#
#   mkdir -p logs
#   sbatch slurm/pretrain.sh RECIPE RUN_DIR [ONEPEACE.TRAIN FLAGS...]
#   sbatch slurm/pretrain.sh stage1_vl_base runs/vl-base
#   DS_CONFIG=zero2_bf16 sbatch -N4 slurm/pretrain.sh my_recipe.yaml runs/x --set train.steps=20000
#   RECIPE=my_recipe.yaml RUN_DIR=runs/x OVERRIDES="train.lr=1e-4 train.steps=500" sbatch slurm/pretrain.sh
#
# Every task runs
#   python -m onepeace.train --config RECIPE --run-dir RUN_DIR [--deepspeed_config DS_CONFIG]
#          [--set K=V for each of OVERRIDES] --resume auto FLAGS...
# Ranks come from SLURM (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID), the master address is the first
# node of the allocation (127.0.0.1 when that name does not resolve), the port 20000 + job id % 20000
# (the trainer derives all three; export MASTER_ADDR / MASTER_PORT to choose them). CPU nodes work too (gloo).
#
# Preemption: USR1 or TERM to this script (SLURM sends USR1 300 s before the time limit, see --signal below;
# by hand: scancel --signal=USR1 --batch JOBID) is forwarded to the ranks, which agree at the next step,
# save a checkpoint and exit. After USR1 the script then requeues the job (scontrol requeue): it runs again
# with the same id, arguments and run directory, and --resume auto continues from the newest complete
# checkpoint, exactly where it stopped. After TERM to this script alone (scancel --signal=TERM --batch) the
# ranks checkpoint but the job is not requeued. A plain scancel or the time limit itself signals the ranks
# directly and kills them soon after, without a checkpoint: hence the USR1 300 s ahead.
# Once the recipe's train.steps are done the job ends with the trainer's exit status.
#
# Arguments (each may come from the environment instead; an argument wins)
#   RECIPE     a YAML recipe, or the name of a shipped recipe (stage1_vl_base, ...)      env: RECIPE
#   RUN_DIR    where config.yaml, log.txt, tensorboard/ and checkpoints/ go; a run directory that
#              already has checkpoints is continued, not restarted                       env: RUN_DIR
#   FLAGS      passed to the trainer after ours: --set train.steps=1000 --set model.preset=base ...
# Paths are taken relative to the directory the job runs in (the submit directory unless --chdir).
# Environment
#   DS_CONFIG     DeepSpeed JSON file, or the name of a shipped one (zero2_bf16, ...: onepeace/ds_configs);
#                 default: ZeRO stage 1 with everything from the recipe
#   OVERRIDES     recipe overrides separated by spaces, each passed as --set K=V ("train.steps=500 train.lr=1e-4")
#   PYTHON        interpreter (default: the repository's .venv/bin/python if present, else python3)
#   MAX_RESTARTS  do not requeue a job that has already been restarted this many times (default: no limit)
#   ONEPEACE_ROOT the repository (default: found from this script's submitted path or the submit dir)
#   OMP_NUM_THREADS  threads per task (default: --cpus-per-task)
# Usage errors (missing arguments, no such recipe or DeepSpeed config) exit with status 2.
#
# Defaults below; any of them can be overridden on the sbatch command line.
#SBATCH --job-name=pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8          # one task per GPU: keep equal to --gpus-per-node
##SBATCH --gpus-per-node=8           # uncomment on GPU nodes (and match --ntasks-per-node)
#SBATCH --cpus-per-task=8            # data-loading workers and OpenMP threads of one rank
#SBATCH --time=24:00:00
#SBATCH --requeue                    # this job may be requeued (by itself after USR1, or by SLURM)
#SBATCH --signal=B:USR1@300          # USR1 to this script 300 s before the time limit: checkpoint and requeue
#SBATCH --open-mode=append           # a requeued job appends to its log instead of truncating it
#SBATCH --output=logs/%x-%j.out      # the logs/ folder must exist before sbatch (mkdir -p logs)
##SBATCH --partition=gpu
##SBATCH --mem=0                     # all of each node's memory
set -euo pipefail

die() { echo "pretrain.sh: error: $*" >&2; exit 2; }
usage() {
  sed -n '2,/^# Defaults below/{/^# Defaults below/!p}' "${BASH_SOURCE[0]}" 2>/dev/null | sed 's/^# \{0,1\}//' >&2 || true
  die "$*"
}

# A stop request that arrives while we are still setting up is remembered (and acted on below).
stop_signal=""
signals=0
srun_pid=""
on_signal() {
  stop_signal=$1
  signals=$((signals + 1))
  echo "pretrain.sh: $(date +%T) received SIG$1: asking the ranks to save a checkpoint and stop"
  forward
}
# To every rank, always as USR1: srun passes USR1 on to its tasks but answers TERM by killing them, and the
# trainer treats both alike (checkpoint at the next step, exit 0). Whether to requeue is decided here.
forward() {
  if [[ -n "$srun_pid" ]]; then kill -s USR1 "$srun_pid" 2>/dev/null || true; fi
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# RECIPE and RUN_DIR: the first two arguments unless they look like flags, else the environment.
recipe=${RECIPE:-}
run_dir=${RUN_DIR:-}
if [[ $# -ge 1 && "$1" != -* ]]; then recipe=$1; shift; fi
if [[ $# -ge 1 && "$1" != -* ]]; then run_dir=$1; shift; fi
extra=("$@")
[[ -n "$recipe" && -n "$run_dir" ]] \
  || usage "expected RECIPE RUN_DIR [FLAGS...] as arguments (or RECIPE and RUN_DIR in the environment);" \
           "got recipe '${recipe}' and run directory '${run_dir}'"
[[ -n "${SLURM_JOB_ID:-}" ]] || die "not a SLURM job: submit with 'sbatch $0 RECIPE RUN_DIR'.
Without SLURM run: deepspeed --num_gpus N --module onepeace.train --config RECIPE --run-dir RUN_DIR --resume auto"

# The repository: ONEPEACE_ROOT, else the folder above the script as it was submitted (the job runs a copy),
# else the submit directory.
repo="${ONEPEACE_ROOT:-}"
if [[ -z "$repo" ]]; then
  submitted=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.* Command=\([^ ]*\).*/\1/p' | head -n1 || true)
  for candidate in "${submitted:+$(dirname -- "$submitted")/..}" "${SLURM_SUBMIT_DIR:-}"; do
    if [[ -n "$candidate" && -f "$candidate/onepeace/train/cli.py" ]]; then repo=$(realpath -- "$candidate"); break; fi
  done
fi
[[ -n "$repo" && -f "$repo/onepeace/train/cli.py" ]] \
  || die "cannot find the repository (onepeace/train/cli.py); submit from its root or set ONEPEACE_ROOT"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null || die "python interpreter '$PYTHON' not found (set PYTHON)"

# The job stays where it was submitted (relative paths in FLAGS keep their meaning); the repository goes on
# the import path for an interpreter that does not have the package installed.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# A recipe is a file (made absolute) or the name of a shipped one (kept as it is; onepeace.recipe knows them).
if [[ -f "$recipe" ]]; then
  recipe=$(realpath -- "$recipe")
elif [[ "$recipe" == */* || "$recipe" == *.yaml || "$recipe" == *.yml ]] \
     || ! "$PYTHON" -c 'import sys; from onepeace.recipe import shipped_recipes; sys.exit(sys.argv[1] not in shipped_recipes())' "$recipe"; then
  shipped=$("$PYTHON" -c 'from onepeace.recipe import shipped_recipes; print(" ".join(shipped_recipes()))' 2>/dev/null || true)
  die "recipe $recipe does not exist (relative paths are taken from $PWD); shipped recipes: ${shipped:-none}"
fi
run_dir=$(realpath -m -- "$run_dir")
args=(--config "$recipe" --run-dir "$run_dir")
if [[ -n "${DS_CONFIG:-}" ]]; then
  if [[ -f "$DS_CONFIG" ]]; then ds=$(realpath -- "$DS_CONFIG")
  elif ! ds=$("$PYTHON" -c 'import sys; from onepeace.train.engine import ds_config_path; print(ds_config_path(sys.argv[1]))' "$DS_CONFIG" 2>/dev/null); then
    die "DeepSpeed config DS_CONFIG=$DS_CONFIG does not exist (not a file in $PWD, nor a shipped config name)"
  fi
  args+=(--deepspeed_config "$ds")
fi
read -r -a overrides <<< "${OVERRIDES:-}"
for kv in ${overrides[@]+"${overrides[@]}"}; do
  [[ "$kv" == *=* ]] || die "OVERRIDES must be KEY=VALUE items separated by spaces, got '$kv'"
  args+=(--set "$kv")
done
args+=(--resume auto)
restarts=${SLURM_RESTART_COUNT:-0}
if [[ -n "${MAX_RESTARTS:-}" && ! "$MAX_RESTARTS" =~ ^[0-9]+$ ]]; then
  die "MAX_RESTARTS must be a non-negative integer, got '$MAX_RESTARTS'"
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1
tasks=${SLURM_NTASKS:-1}
if (( restarts > 0 )); then
  echo "pretrain.sh: $(date +%T) restart $restarts of job $SLURM_JOB_ID: resuming from the newest checkpoint in $run_dir"
fi
echo "pretrain.sh: $(date +%T) $recipe -> $run_dir with $tasks task(s) on ${SLURM_JOB_NODELIST:-$(hostname)}"

# The trainer's log (rank 0) says how each run ended: remember where this run's lines start.
log_file="$run_dir/log.txt"
log_lines=0
if [[ -f "$log_file" ]]; then log_lines=$(wc -l < "$log_file"); fi

rc=0
if [[ -z "$stop_signal" ]]; then
  # In the background, so the traps run while it trains: bash runs a trap only between commands, and `wait`
  # returns early (status > 128) when one has run; wait again until srun itself has ended.
  srun --kill-on-bad-exit=1 "$PYTHON" -m onepeace.train "${args[@]}" ${extra[@]+"${extra[@]}"} </dev/null &
  srun_pid=$!
  if [[ -n "$stop_signal" ]]; then forward; fi
  while :; do
    seen=$signals
    rc=0
    wait "$srun_pid" || rc=$?
    (( signals != seen && rc > 128 )) || break  # else a trap ended the wait, not srun: wait again
  done
  srun_pid=""
fi

# How this run ended, from its own lines of the trainer's log: "finished at step N" / "stopped at step N".
# Ranks signalled directly (scancel --signal=USR1 JOBID without --batch) count as a USR1 to this script.
this_run=""
if [[ -f "$log_file" ]]; then this_run=$(tail -n +"$((log_lines + 1))" "$log_file"); fi
outcome=$(grep -oE '(finished|stopped) at step [0-9]+' <<< "$this_run" | tail -n1 || true)
if [[ -z "$stop_signal" && "$outcome" == stopped* ]] && grep -q 'received SIGUSR1' <<< "$this_run"; then
  stop_signal=USR1
fi
if [[ "$stop_signal" == USR1 && "$outcome" != finished* ]]; then
  if [[ -n "${MAX_RESTARTS:-}" ]] && (( restarts >= MAX_RESTARTS )); then
    echo "pretrain.sh: ${outcome:-stopped (exit status $rc)}; not requeued: already restarted $restarts time(s)" \
         "(MAX_RESTARTS=$MAX_RESTARTS). Submit the same command again to continue from the newest checkpoint." >&2
    exit 1
  fi
  if (( rc != 0 )); then
    echo "pretrain.sh: the ranks exited with status $rc after SIGUSR1 (before they could checkpoint?);" \
         "requeueing anyway: the next run continues from the newest complete checkpoint" >&2
  fi
  echo "pretrain.sh: $(date +%T) ${outcome:-stopped}: requeueing job $SLURM_JOB_ID (restart $((restarts + 1)))"
  if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi
  echo "pretrain.sh: scontrol requeue $SLURM_JOB_ID failed (is the job requeueable? --requeue, JobRequeue);" \
       "submit the same command again to continue from the newest checkpoint in $run_dir" >&2
  exit 1
fi
if (( rc == 0 )) && [[ "$outcome" == finished* || -z "$stop_signal" ]]; then
  echo "pretrain.sh: $(date +%T) ${outcome:-done}"
elif [[ -n "$stop_signal" ]]; then
  echo "pretrain.sh: $(date +%T) ${outcome:-stopped (exit status $rc)} after SIG$stop_signal; not requeued" \
       "(submit the same command again to continue from the newest checkpoint)"
else
  echo "pretrain.sh: $(date +%T) training failed with exit status $rc (see above and $log_file)" >&2
fi
exit "$rc"
