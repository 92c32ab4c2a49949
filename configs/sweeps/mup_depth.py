"""Depth transfer (issue 22): depth 2 to 8 at μP's base width 32 (4 layers in the width study),
head dim 16, 1,000 steps of 16 x 64 bytes, seed 0, one sweep per (variant, depth).

  for a in mup,2 mup,8 depth_mup,4 depth_mup,8; do
    python -m scaling.parallel --groups=2 --config=configs/sweeps/mup_depth.py:$a \
        --workdir=workdirs/mup_depth/${a/,/_L}
  done
  # mup,4 is the width study's base (mup_width.py:mup,32, same members: copy or rerun them);
  # depth_mup,2 is mup,2 (base_n_layers = n_layers: multipliers 1).
  python -m scaling.transfer --axis=n_layers --labels=mup,mup,mup,depth_mup,depth_mup,depth_mup \
      --results=workdirs/mup_depth/mup_L2/results.csv,workdirs/mup_width/mup_d32/results.csv,\
workdirs/mup_depth/mup_L8/results.csv,workdirs/mup_depth/mup_L2/results.csv,\
workdirs/mup_depth/depth_mup_L4/results.csv,workdirs/mup_depth/depth_mup_L8/results.csv \
      --out=docs/mup/depth.png

Variants: 'mup' (μP at base width 32, no depth scaling: base_n_layers = 0); 'depth_mup' (μP with
base_n_layers=2: residual branches × (L/2)^-½, hidden Adam lr × (L/2)^-½); 'sp'. Peak lrs by rule:
at the base depth 2, five a factor 2 apart around the width study's d32 optimum (2^-6); deeper,
that optimum and its two neighbours, a grid extended by one where its optimum lies on its edge
(depth-μP at 8 layers: best at 2^-5, so 2^-4 at depth 8 for both variants).
CPU time per member (2-core machine, two at a time): ~30 s at depth 2, ~45 s at 4, ~80 s at 8.
"""

import ml_collections

from configs.sweeps import mup_width

WIDTH = mup_width.WIDTHS[0]
BASE_DEPTH = 2
STEPS = mup_width.CPU_STEPS
VARIANTS = ('sp', 'mup', 'depth_mup')
LRS = {2: (-8, -7, -6, -5, -4), 4: (-7, -6, -5), 8: (-7, -6, -5, -4)}  # exponents of 2, by depth.


def get_config(arg: str = 'depth_mup,4') -> ml_collections.ConfigDict:
  variant, _, depth = arg.partition(',')
  if variant not in VARIANTS or not depth.isdigit() or int(depth) not in LRS:
    raise ValueError(f'mup_depth.py:<variant>,<n_layers>: {VARIANTS} x {tuple(LRS)}, got {arg!r}')
  return mup_width.study_config(
    'sp' if variant == 'sp' else 'mup',
    widths=(WIDTH,),
    tokens=(STEPS * mup_width.TOKENS_PER_STEP,),
    lrs=tuple(2.0**e for e in LRS[int(depth)]),
    seeds=(0,),
    n_layers=int(depth),
    base_n_layers=BASE_DEPTH if variant == 'depth_mup' else 0,
  )
