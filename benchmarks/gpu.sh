#!/usr/bin/env bash
# Both benchmarks on one GPU in one go: the pipeline against in-process GPA on the same clips, then GPA's
# batched vs one-at-a-time throughput (the two tables of docs/jobs.md, "On a GPU", were measured with BATCH=32).
#
#   bash benchmarks/gpu.sh                         # a real-size random checkpoint (generated once, ~4 GB)
#   CHECKPOINT=/models/gpa N=1000 BATCH=32 bash benchmarks/gpu.sh
#
# Needs the project's dependencies with a CUDA build of torch (pip install -e . after torch). Tables go to stdout
# and to $RESULTS (default ./gpu-results): pipeline.txt, gpa_throughput.txt (logs beside them).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-gpu-results}
N=${N:-200}
BATCH=${BATCH:-64}  # the job's default on a GPU
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
if [ -z "${CHECKPOINT:-}" ]; then
  # reused when it is already there (make-checkpoint checks its marker)
  CHECKPOINT=$($PY -m gpa.cli make-checkpoint "${RANDOM_CHECKPOINT:-/tmp/gpa-real-random}" --size real) || exit 1
fi

bench() {  # name, then the command; one failing benchmark does not stop the other
  local name=$1; shift
  if "$@" > "$RESULTS/$name.txt" 2> "$RESULTS/$name.log"; then
    cat "$RESULTS/$name.txt"
  else
    echo "$name failed; the end of $RESULTS/$name.log:"; tail -n 40 "$RESULTS/$name.log"; return 1
  fi
}
status=0
bench pipeline $PY benchmarks/pipeline.py --model "$CHECKPOINT" --n "$N" --actors 1 --gpus-per-actor 1 \
  --batch-size "$BATCH" || status=1
bench gpa_throughput $PY benchmarks/gpa_throughput.py --model "$CHECKPOINT" --device cuda --dtype bfloat16 \
  --items "$BATCH" --batch-size "$BATCH" || status=1
exit $status
