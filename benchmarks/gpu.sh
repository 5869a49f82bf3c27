#!/usr/bin/env bash
# The GPU benchmarks in one go (docs/performance.md): the library's throughput by the protocol (real-size random
# checkpoint, 1,000 clips, batch 256, bfloat16 LLM and encoders, static engine), then optionally the bf16
# encoders' token agreement and the job against in-process GPA, in that order.
#
#   bash benchmarks/gpu.sh                              # gpa_throughput on a real-size random checkpoint
#   BENCHES="gpa_throughput encoder_agreement pipeline" N=4000 bash benchmarks/gpu.sh
#   CHECKPOINT=/models/gpa bash benchmarks/gpu.sh
#
# gpa_throughput writes $RESULTS/<date>-<device>.json after each task (commit it under benchmarks/results/);
# each benchmark's output goes to $RESULTS/<name>.txt, their logs to $RESULTS/logs.txt.
# BENCH_TIMEOUT=S stops each benchmark after S seconds, TIMEOUT_<NAME>=S one of them (what it printed so far stays).
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
CLIPS=${CLIPS:-256}  # encoder_agreement: speech-like clips of 2-10 s
ENCODERS=${ENCODERS:-bfloat16}  # the encoders' arithmetic in gpa_throughput and pipeline (encoder_agreement: its
                                # token agreement with float32)
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
  local own="TIMEOUT_${name^^}"
  local limit=${!own:-${BENCH_TIMEOUT:-}}
  local rc=0
  echo "=== $name" >> "$RESULTS/logs.txt"
  ${limit:+timeout -k 5 "$limit"} "$@" > >(tee "$RESULTS/$name.txt") 2>> "$RESULTS/logs.txt" || rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "$name stopped after ${limit}s; the end of $RESULTS/logs.txt:"
  elif [ $rc -ne 0 ]; then
    echo "$name failed; the end of $RESULTS/logs.txt:"
  fi
  [ $rc -eq 0 ] || { tail -n 40 "$RESULTS/logs.txt"; return 1; }
}
status=0
bench gpa_throughput $PY benchmarks/gpa_throughput.py --model "$CHECKPOINT" --device cuda --dtype bfloat16 \
  --items "$ITEMS" --batch-size "$BATCH" --budget-s "$BUDGET_S" --encoder-precision "$ENCODERS" --out "$RESULTS/" \
  ${ENGINE:+--engine "$ENGINE"} \
  || status=1
bench encoder_agreement $PY benchmarks/encoder_agreement.py --model "$CHECKPOINT" --device cuda --precision bfloat16 \
  --clips "$CLIPS" || status=1
bench pipeline $PY benchmarks/pipeline.py --model "$CHECKPOINT" --n "$N" --actors 1 --gpus-per-actor 1 \
  --batch-size "$BATCH" --encoder-precision "$ENCODERS" --no-unbucketed --stages fused,split || status=1
exit $status
