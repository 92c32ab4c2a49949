#!/usr/bin/env bash
# The prediction ladder (configs/sweeps/ladder.py) on a 2-core machine: two lanes, one per core,
# both writing one workdir (results.csv and curves.csv merge under its lock). Resumable: rerun it.
#   bash configs/sweeps/ladder.sh workdirs/ladder
set -u
W=${1:-workdirs/ladder}
mkdir -p "$W"
run() { for v in "$@"; do python main.py --config="configs/sweeps/ladder.py:$v" --workdir="$W" || exit 1; done; }
run 6 5 0,scan 1,scan > "$W/lane_a.log" 2>&1 &   # the two largest (held-out) rungs first
run 0 1 2 2,scan 3 3,scan 4 1,seed 3,seed > "$W/lane_b.log" 2>&1 &
wait
