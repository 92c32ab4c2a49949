"""Horizon: where μP's optimal peak lr sits at 3 token budgets 4x apart, at its base
shape (d_model 32, 4 layers, head dim 16): 256K, 1M and 4M bytes (250, 1,000 and 4,000 steps of
16 x 64), seed 0, one sweep per budget.

  python -m scaling.parallel --groups=2 --config=configs/sweeps/mup_horizon.py:250 \
      --workdir=workdirs/mup_horizon/s250        # likewise :4000
  # :1000 is the width study's base (mup_width.py:mup,32: the same members).
  python -m scaling.transfer --labels=250,1000,4000 --results=workdirs/mup_horizon/s250/\
results.csv,workdirs/mup_width/mup_d32/results.csv,workdirs/mup_horizon/s4000/results.csv \
      --out=docs/mup/horizon.png

Peak lrs by rule: around the 1,000-step optimum (2^-6), five a factor 2 apart at 250 steps (one
step higher: shorter runs take larger lrs), four at 4,000 steps (one step lower); a grid extended by
one where its optimum lies on its edge (250 steps: best at 2^-7, then 2^-8, so 2^-8 and 2^-9). CPU time per member
(two at a time): ~20 s at 250 steps, ~45 s at 1,000, ~3 min at 4,000.
"""

import ml_collections

from configs.sweeps import mup_width

LRS = {250: (-9, -8, -7, -6, -5, -4, -3), 1000: tuple(range(-10, -3)), 4000: (-8, -7, -6, -5)}


def get_config(steps: str = '1000') -> ml_collections.ConfigDict:
  if not steps.isdigit() or int(steps) not in LRS:
    raise ValueError(f'mup_horizon.py:<steps>: one of {tuple(LRS)}, got {steps!r}')
  return mup_width.study_config(
    'mup',
    widths=mup_width.WIDTHS[:1],
    tokens=(int(steps) * mup_width.TOKENS_PER_STEP,),
    lrs=tuple(2.0**e for e in LRS[int(steps)]),
    seeds=(0,),
  )
