"""Depth transfer (issue 22): depth 2 to 8 at fixed width 64 (head dim 16), one run per
(variant, depth): 7 peak lrs a factor 2 apart, seed 0, 1,000 steps of 16 x 64 bytes = 7 members
each; 3 variants x 3 depths = 63 members.

  for v in sp mup depth_mup; do for L in 2 4 8; do
    python main.py --config=configs/sweeps/mup_depth.py:$v,$L --workdir=workdirs/mup_depth/$v/L$L
  done; done

Variants: 'sp'; 'mup' (μP at base width 64, no depth scaling: base_n_layers = 0); 'depth_mup'
(μP with base_n_layers=2: residual branches × (L/2)^-½, hidden Adam lr × (L/2)^-½). Results: one
results.csv per workdir, the `n_layers` column tells depths apart.

Plan (python -m scaling.sweep --config=configs/sweeps/mup_depth.py:depth_mup,8): 7 members,
1.81e13 FLOPs at depth 8 (5.2e12 at depth 2). Estimated CPU time (smoke rates: ~0.05 / 0.08 / 0.15
CPU-s per step at depth 2 / 4 / 8, d64, plus ~25 s start-up per member): ~1.3 / 1.8 / 2.9 min per
member, ~41 min per variant, ~2.1 CPU-hours for all 63 (~1.1 h wall two at a time).
"""

import ml_collections

from configs.sweeps import mup_width

WIDTH = 64
DEPTHS = (2, 4, 8)
BASE_DEPTH = 2
STEPS = 1000
VARIANTS = ('sp', 'mup', 'depth_mup')


def get_config(arg: str = 'depth_mup,4') -> ml_collections.ConfigDict:
  variant, _, depth = arg.partition(',')
  if variant not in VARIANTS or not depth.isdigit():
    raise ValueError(f'mup_depth.py:<variant>,<n_layers>: variant in {VARIANTS}, got {arg!r}')
  p = 'sp' if variant == 'sp' else 'mup'
  c = mup_width.study_config(
    p,
    widths=(WIDTH,),
    tokens=(STEPS * mup_width.TOKENS_PER_STEP,),
    seeds=(0,),
    n_layers=int(depth),
    base_n_layers=BASE_DEPTH if variant == 'depth_mup' else 0,
  )
  return c
