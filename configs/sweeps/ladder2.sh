#!/usr/bin/env bash
# The prediction ladder v2 (configs/sweeps/ladder2.py) on a 2-core machine: two lanes, one per core,
# both writing one workdir (results.csv and curves.csv merge under its lock). Resumable: rerun it.
#   bash configs/sweeps/ladder2.sh fit W        # the fit set
#   bash configs/sweeps/ladder2.sh heldout W    # the held-out members: only after docs/scaling/prereg.md
set -u
STAGE=${1:?fit or heldout}
W=${2:-workdirs/ladder2}
mkdir -p "$W"
run() { for v in "$@"; do python main.py --config="configs/sweeps/ladder2.py:$v" --workdir="$W" || exit 1; done; }
case "$STAGE" in
  fit)
    run fit,48 fit,64 fit,96 scan,48 > "$W/lane_a.log" 2>&1 &
    run fit,32 fit,80 scan,80 > "$W/lane_b.log" 2>&1 & ;;
  heldout)
    run heldout,112 > "$W/lane_c.log" 2>&1 &
    run heldout,144 > "$W/lane_d.log" 2>&1 & ;;
  *) echo "ladder2.sh: stage must be fit or heldout, got $STAGE" >&2; exit 2 ;;
esac
wait
