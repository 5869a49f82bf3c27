#!/usr/bin/env bash
# The GPU benchmarks in one go (docs/performance.md): the library's throughput by the protocol (real-size random
# checkpoint, 1,000 clips, batch 256, bfloat16, static engine), then optionally the job against in-process GPA.
#
#   bash benchmarks/gpu.sh                              # gpa_throughput on a real-size random checkpoint
#   BENCHES="gpa_throughput pipeline" N=4000 bash benchmarks/gpu.sh
#   CHECKPOINT=/models/gpa bash benchmarks/gpu.sh
#
# gpa_throughput writes $RESULTS/<date>-<device>.json after each task (commit it under benchmarks/results/);
# every table and log also goes to $RESULTS.
# BENCH_TIMEOUT=S stops each benchmark after S seconds (what it printed so far stays in $RESULTS).
# Needs the project's dependencies with a CUDA build of torch; on a lent GPU machine benchmarks/device_run.sh
# installs what its image lacks and calls this (docs/performance.md, "Running it on a lent GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-gpu-results}
ITEMS=${ITEMS:-1000}
N=${N:-4000}
BATCH=${BATCH:-256}
BUDGET_S=${BUDGET_S:-60}  # per task: gpa_throughput starts no batch after it, so every task fits one device slot
BENCHES=${BENCHES:-gpa_throughput}
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
if [ -z "${CHECKPOINT:-}" ]; then
  # reused when it is already there (make-checkpoint checks its marker)
  CHECKPOINT=$($PY -m gpa.cli make-checkpoint "${RANDOM_CHECKPOINT:-/tmp/gpa-real-random}" --size real) || exit 1
fi

bench() {  # name, then the command; one failing benchmark does not stop the others
  local name=$1; shift
  case " $BENCHES " in *" $name "*) ;; *) return 0 ;; esac
  local rc=0
  ${BENCH_TIMEOUT:+timeout -k 10 "$BENCH_TIMEOUT"} "$@" > >(tee "$RESULTS/$name.txt") 2> "$RESULTS/$name.log" || rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "$name stopped after BENCH_TIMEOUT=${BENCH_TIMEOUT}s; the end of $RESULTS/$name.log:"
  elif [ $rc -ne 0 ]; then
    echo "$name failed; the end of $RESULTS/$name.log:"
  fi
  [ $rc -eq 0 ] || { tail -n 40 "$RESULTS/$name.log"; return 1; }
}
status=0
bench gpa_throughput $PY benchmarks/gpa_throughput.py --model "$CHECKPOINT" --device cuda --dtype bfloat16 \
  --items "$ITEMS" --batch-size "$BATCH" --budget-s "$BUDGET_S" --out "$RESULTS/" ${ENGINE:+--engine "$ENGINE"} \
  || status=1
bench pipeline $PY benchmarks/pipeline.py --model "$CHECKPOINT" --n "$N" --actors 1 --gpus-per-actor 1 \
  --batch-size "$BATCH" --no-unbucketed --stages fused,split || status=1
exit $status
