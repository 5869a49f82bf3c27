#!/usr/bin/env bash
# The benchmarks on one GPU in one go: the pipeline against in-process GPA on the same clips, GPA's batched vs
# one-at-a-time throughput, then where a model's start goes (docs/jobs.md, "On a GPU": the first two tables were
# measured with BATCH=32, the later ones with the default 64).
#
#   bash benchmarks/gpu.sh                         # a real-size random checkpoint (generated once, ~4 GB)
#   CHECKPOINT=/models/gpa N=1000 BATCH=32 bash benchmarks/gpu.sh
#   BENCHES="pipeline model_start" UNBUCKETED=0 N=1000 bash benchmarks/gpu.sh   # fits ~9 minutes of an H100
#
# On an H100 (2026-11-26): the random checkpoint ~35 s; pipeline at N=1000 ~6.5 min without its unbucketed run (which
# adds ~2 min); model_start ~1.5 min; gpa_throughput not timed there (its one-at-a-time half is the slow one).
# Needs the project's dependencies with a CUDA build of torch (pip install -e . after torch). Tables go to stdout
# and to $RESULTS (default ./gpu-results): pipeline.txt, gpa_throughput.txt, model_start.txt (logs beside them).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-gpu-results}
N=${N:-200}
BATCH=${BATCH:-64}  # the job's default on a GPU
BENCHES=${BENCHES:-pipeline gpa_throughput model_start}
UNBUCKETED=${UNBUCKETED:-1}  # 0: skip the pipeline run without bucketing windows
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
if [ -z "${CHECKPOINT:-}" ]; then
  # reused when it is already there (make-checkpoint checks its marker)
  CHECKPOINT=$($PY -m gpa.cli make-checkpoint "${RANDOM_CHECKPOINT:-/tmp/gpa-real-random}" --size real) || exit 1
fi

bench() {  # name, then the command; one failing benchmark does not stop the others
  local name=$1; shift
  case " $BENCHES " in *" $name "*) ;; *) return 0 ;; esac
  if "$@" > "$RESULTS/$name.txt" 2> "$RESULTS/$name.log"; then
    cat "$RESULTS/$name.txt"
  else
    echo "$name failed; the end of $RESULTS/$name.log:"; tail -n 40 "$RESULTS/$name.log"; return 1
  fi
}
status=0
bench pipeline $PY benchmarks/pipeline.py --model "$CHECKPOINT" --n "$N" --actors 1 --gpus-per-actor 1 \
  --batch-size "$BATCH" $([ "$UNBUCKETED" = 0 ] && echo --no-unbucketed) || status=1
bench gpa_throughput $PY benchmarks/gpa_throughput.py --model "$CHECKPOINT" --device cuda --dtype bfloat16 \
  --items "$BATCH" --batch-size "$BATCH" || status=1
bench model_start $PY benchmarks/model_start.py --model "$CHECKPOINT" --device cuda --runs 3 || status=1
exit $status
