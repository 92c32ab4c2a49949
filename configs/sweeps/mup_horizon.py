"""Horizon (issue 22): where the optimal peak lr sits at 3 token budgets 4x apart, at μP's base
shape (d_model 32, 4 layers, head dim 16): 256k, 1M and 4M bytes (250, 1,000 and 4,000 steps of
16 x 64), 7 peak lrs a factor 2 apart, seed 0 = 21 members per parametrization.

  python main.py --config=configs/sweeps/mup_horizon.py:mup --workdir=workdirs/mup_horizon/mup

Plan (python -m scaling.sweep --config=configs/sweeps/mup_horizon.py:mup): 21 members, 1.38e13
training FLOPs. Estimated CPU time (d32 smoke rate ~0.05 CPU-s per step plus ~25 s start-up per
member): 5,250 steps per lr, ~5.6 min per lr, ~40 min for the 21 members (~20 min two at a time).
"""

import ml_collections

from configs.sweeps import mup_width

TOKENS = tuple(s * mup_width.TOKENS_PER_STEP for s in (250, 1000, 4000))


def get_config(parametrization: str = 'mup') -> ml_collections.ConfigDict:
  return mup_width.study_config(
    parametrization, widths=mup_width.WIDTHS[:1], tokens=TOKENS, seeds=(0,)
  )
