#!/usr/bin/env bash
# The GPU checks in one call (benchmarks/gpu_suite.py says what each section measures):
#
#   bash benchmarks/gpu_suite.sh                        # CUDA, full size, about 8 minutes on an H100/H200
#   bash benchmarks/gpu_suite.sh --device cpu --tiny --out /tmp/suite   # proves the suite on a CPU
#
# Each section runs in its own process (its memory peak is its own, and a crash in one does not
# lose the others) under a time limit; the JSON files land in --out (default benchmarks/results/),
# one per section and card. Exits non-zero if a promised file is missing.
set -uo pipefail
cd "$(dirname "$0")/.."

args=("$@")
# Seconds per section; the full-size limits add up to 7.5 minutes. The stages section saves after
# every run, so one stopped by its limit keeps what it measured.
declare -A limit=([golden]=30 [stages]=210 [attention]=40 [finetune]=120 [distributed]=50)
for arg in "$@"; do
  if [ "$arg" = "--tiny" ]; then limit=([golden]=60 [stages]=60 [attention]=60 [finetune]=60 [distributed]=60); fi
done

status=0
for section in golden stages attention finetune distributed; do
  echo "== $section"
  if ! timeout "${limit[$section]}" python3 benchmarks/gpu_suite.py "${args[@]}" --section "$section"; then
    echo "section $section failed or ran past ${limit[$section]} s" >&2
    status=1
  fi
done

while read -r promised; do
  if [ ! -s "$promised" ]; then
    echo "missing: $promised" >&2
    status=1
  fi
done < <(python3 benchmarks/gpu_suite.py "${args[@]}" --list)
exit "$status"
