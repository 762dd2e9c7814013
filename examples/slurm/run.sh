#!/usr/bin/env bash
# The body of every sbatch script in this folder: start torchrun once per node with srun, stop every
# process cleanly on SLURM's warning signal, and requeue the job so that it resumes where it stopped.
#
#   run.sh PROCESSES_PER_NODE TRAIN_PY_ARGUMENTS...
#
# The sbatch scripts exec it, so it runs as the job's batch shell and receives the signal that
# `#SBATCH --signal=B:USR1@120` sends 120 s before the time limit (or `scancel --signal=USR1 --batch`).
# On that signal it forwards it to srun, which delivers it to torchrun and to the training processes
# of every node; torchrun (told to handle it) waits for them instead of restarting them; they stop at
# the same step, write the step checkpoint and exit. Then this script runs `scontrol requeue`: the job
# goes back to the queue and its next start continues with --resume auto (a run that had already
# finished says "nothing to train" there and ends). Without the warning, a job that fails or finishes
# is not requeued. Node failures are requeued by SLURM itself (`#SBATCH --requeue`).
#
# Environment (all optional):
#   IDML_REPO           the idml checkout (default: the folder sbatch was run from)
#   IDML_PYTHON         the Python that has idml and torch (default: python)
#   IDML_ENTRY          the script torchrun runs (default: $IDML_REPO/train.py)
#   IDML_STOP_SIGNAL    the warning signal, as in --signal=B:<NAME>@... (default: USR1)
#   IDML_RDZV_PORT      the rendezvous port on the first node (default: 20000 + job id % 20000)
#   IDML_MAX_RESTARTS   torchrun --max-restarts after a crashed process (default: 2)
set -euo pipefail

# first of all, so that a warning that comes at once is not lost: note it and pass it on to srun
stop_signal=${IDML_STOP_SIGNAL:-USR1}
stop_requested=0
srun_pid=""
# shellcheck disable=SC2317  # called by the trap below (shellcheck cannot see a trap on "$stop_signal")
forward_stop() {
  stop_requested=1
  echo "idml: SIG$stop_signal received: every process checkpoints and stops, then the job is requeued"
  if [[ -n "$srun_pid" ]]; then
    kill -s "$stop_signal" "$srun_pid" 2>/dev/null || true
  fi
}
trap forward_stop "$stop_signal"

(( $# >= 1 )) || { echo "usage: run.sh PROCESSES_PER_NODE TRAIN_PY_ARGUMENTS..." >&2; exit 2; }
procs_per_node=$1
shift
: "${SLURM_JOB_ID:?run.sh runs inside a SLURM batch job: submit an sbatch script of examples/slurm/}"
repo=${IDML_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
python=${IDML_PYTHON:-python}
entry=${IDML_ENTRY:-$repo/train.py}
nodes=${SLURM_JOB_NUM_NODES:-1}
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=${IDML_RDZV_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
# torchrun gives stopped processes this long to write their checkpoint before SIGKILL (its default
# is 30 s); the warning comes 120 s before the end
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-110}

echo "idml: job $SLURM_JOB_ID start $((${SLURM_RESTART_COUNT:-0} + 1)) on $nodes node(s) x $procs_per_node" \
  "process(es), rendezvous $head_node:$port, stop signal SIG$stop_signal"

status=0
if (( ! stop_requested )); then
  # srun does not pass sbatch's --cpus-per-task on to its tasks since SLURM 22.05: give it explicitly
  srun --nodes="$nodes" --ntasks-per-node=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} \
    "$python" -m torch.distributed.run --nnodes="$nodes" --nproc_per_node="$procs_per_node" \
    --rdzv_backend=c10d --rdzv_endpoint="$head_node:$port" --rdzv_id="$SLURM_JOB_ID" \
    --max-restarts="${IDML_MAX_RESTARTS:-2}" --signals-to-handle="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIG$stop_signal" \
    "$entry" "$@" --stop_signal "$stop_signal" &
  srun_pid=$!
  # `wait` returns early when the trap runs: wait again until srun has really ended
  while true; do
    status=0
    wait "$srun_pid" || status=$?
    kill -0 "$srun_pid" 2>/dev/null || break
  done
fi

if (( stop_requested )); then
  echo "idml: requeueing job $SLURM_JOB_ID; its next start resumes from the last checkpoint"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
