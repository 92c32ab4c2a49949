"""The prediction ladder, v2: one shape family (4 layers, head dim 16, batch 16 x 128),
five widths fitted on WSD trunks that all end at one compute cap, two held-out widths at 10x it.

  bash configs/sweeps/ladder2.sh fit workdirs/ladder2       # the fit set (two lanes, resumable)
  python -m scaling.validate --results=docs/scaling/ladder2_results.csv --laws=... --rollout
  bash configs/sweeps/ladder2.sh heldout workdirs/ladder2   # only after docs/scaling/prereg.md

Variants (one workdir holds them all):
  :fit,<width>      a width of FIT_WIDTHS at the rule's lr, seeds 0 and 1
  :scan,<width>     a width of SCAN_WIDTHS at the lr a factor 2 below and above, seed 0
  :heldout,<width>  a width of HELDOUT_WIDTHS at 10x the cap, seed 0

The rule, written before any member ran (docs/scaling/prereg.md has the reasons and the numbers):
  shapes   byte-level GPT-2 (tied, learned positions, seq 128), n_layers 4, head dim 16, d_ff 4d;
           only the width varies, so depth, head count ratio and batch cannot confound N.
  compute  every fit width trains one trunk to C_CAP = 6 N D_max (N: total params); its five
           cooldown branches end at D_max / 2^k, k = 0..4 (16x in D at every width; the smallest
           width's D_max, 10.5M tokens, passes the held-out members' D).
  held-out d 112 (651,280 params, the first ladder's largest rung) and d 144 (1,058,544) at
           10 x C_CAP, trained the same way (a WSD trunk and its 20 % cooldown, one branch).
  batch    16 x 128 bytes for every member; eval: 16 x 16 rows spread over the whole validation
           split (train.eval_set 'spread'), the same rows for every member.
  warmup   1/80 of the trunk's tokens (0.2 of its smallest branch), at least 10 steps.
  lr       μP from the base shape d 32 (μP's tuned defaults: docs/mup.md), base lr 2^-7 (the first
           ladder's scan); checked by a 3-point scan at two fit widths, chosen on the fit set only.
           AdamW b1 0.9, b2 0.95, wd 0.1, unclipped, WSD: 20 % linear cooldown to 0.1x.
"""

import ml_collections

from configs.sweeps import ladder

N_LAYERS = 4
# d_model -> total parameters (python -c "from models import count; ..."; asserted by the planner
# within the family rule's tolerance).
PARAMS = {32: 63200, 48: 131664, 64: 224704, 80: 342320, 96: 484512, 112: 651280, 144: 1058544}
FIT_WIDTHS = (32, 48, 64, 80, 96)
SCAN_WIDTHS = (48, 80)
HELDOUT_WIDTHS = (112, 144)
C_CAP = 4e12  # FLOPs (6 N D) of every fit trunk.
HELDOUT_FACTOR = 10
BRANCHES = 5  # D_max / 2^k for k < BRANCHES.
SEEDS = (0, 1)
BATCH = 16
BASE_LR = ladder.BASE_LR


def d_max(width: int, compute: float = C_CAP) -> int:
  """The trunk's tokens: compute / 6N."""
  return int(round(compute / (6 * PARAMS[width])))


def width_config(width: int, tokens: tuple, lrs: tuple, seeds: tuple, warmup_fraction: float):
  """One width's WSD sweep by the rule (module doc): the first ladder's shape_config, one batch."""
  c = ladder.shape_config((N_LAYERS, width), PARAMS[width], lrs, seeds, (1,))
  c.train.update(global_batch_size=BATCH, eval_batch_size=0, eval_batches=16, eval_set='spread')
  c.sweep.tokens = tokens
  c.sweep.update(warmup_fraction=warmup_fraction, evals_per_member=8)
  return c


def get_config(arg: str = 'fit,32') -> ml_collections.ConfigDict:
  """`:fit,<width>`, `:scan,<width>` or `:heldout,<width>` (module doc)."""
  variant, _, w = arg.partition(',')
  allowed = {'fit': FIT_WIDTHS, 'scan': SCAN_WIDTHS, 'heldout': HELDOUT_WIDTHS}
  if variant not in allowed or not w.isdigit() or int(w) not in allowed[variant]:
    raise ValueError(
      f'ladder2.py:<variant>,<width>: fit,{FIT_WIDTHS} | scan,{SCAN_WIDTHS} | '
      f'heldout,{HELDOUT_WIDTHS}; got {arg!r}'
    )
  width = int(w)
  if variant == 'heldout':
    return width_config(
      width, (d_max(width, HELDOUT_FACTOR * C_CAP),), (BASE_LR,), (0,), 0.2 / 2 ** (BRANCHES - 1)
    )
  tokens = tuple(sorted(d_max(width) // 2**k for k in range(BRANCHES)))
  if variant == 'scan':
    return width_config(width, tokens, (BASE_LR / 2, BASE_LR * 2), (0,), 0.2)
  return width_config(width, tokens, (BASE_LR,), SEEDS, 0.2)
