#!/usr/bin/env bash
# Submit one transcription run to the `ray up` cluster of cluster/vm/ray-up.yaml, e.g. nightly from cron on the
# machine that ran `ray up`:
#   30 1 * * *  cd /path/to/gpa-batch && cluster/vm/submit-nightly.sh >> ~/gpa-nightly.log 2>&1
# The same --input prefix and --output every night: each run transcribes only the files that arrived since the
# last one. The submission id carries the date, so a second submission on the same day is refused by Ray.
# Settings come from the environment (defaults below); GPA_DRY_RUN=1 prints the job command and exits.
set -euo pipefail

config=${GPA_RAY_UP_CONFIG:-cluster/vm/ray-up.yaml}
input=${GPA_INPUT:-s3://example-archive/audio/}
glob=${GPA_GLOB:-'**/*.flac'}
output=${GPA_OUTPUT:-s3://example-results/transcripts/}
model=${GPA_MODEL:-AutoArk-AI/GPA}
actors=${GPA_ACTORS:-1:16}
port=${GPA_DASHBOARD_PORT:-8265}

job=(gpa-batch transcribe --input "$input" --output "$output" --model "$model" --actors "$actors"
     --gpus-per-actor 0.5 --batch-size 64 --experiment gpa-batch-nightly --no-progress --glob "$glob")

if [[ -n ${GPA_DRY_RUN:-} ]]; then
    echo "${job[*]@Q}"
    exit 0
fi

# Forward the head's dashboard (job API) to this machine while submitting.
ray dashboard "$config" --port "$port" > /dev/null 2>&1 &
forward=$!
trap 'kill "$forward" 2> /dev/null || true' EXIT
for _ in $(seq 60); do
    curl -fsS "http://127.0.0.1:$port/api/version" > /dev/null 2>&1 && break
    sleep 2
done

ray job submit --address "http://127.0.0.1:$port" --submission-id "gpa-nightly-$(date -u +%Y%m%d)" \
    --no-wait -- "${job[@]}"
