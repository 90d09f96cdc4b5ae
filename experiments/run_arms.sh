#!/usr/bin/env bash
# Run recipe A/B arms two at a time (one thread each) on the 2-core machine.
# Usage: experiments/run_arms.sh ARMS_FILE
#   each line of ARMS_FILE: the arguments of experiments/recipe_ab.py (one arm); '#' lines skipped.
# Uses the code under ${REVQ_SRC:-src} (a snapshot keeps concurrent edits of the tree out of a run).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
src="${REVQ_SRC:-$here/../src}"
logs="$here/results/logs"; mkdir -p "$logs"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
pids=()
while IFS= read -r line; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  name=$(sed -E 's/.*--name ([^ ]+).*/\1/' <<<"$line")
  eval "set -- $line"
  PYTHONPATH="$src" python "$here/recipe_ab.py" "$@" > "$logs/$name.out" 2> "$logs/$name.err" &
  pids+=($!)
  if (( ${#pids[@]} >= ${PARALLEL:-2} )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done < "$1"
wait
