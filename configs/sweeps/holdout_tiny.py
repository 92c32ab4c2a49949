"""The hold-out study: 5 sizes x 5 token budgets (245x in compute), μP, WSD branches; fit the laws
on the small members and check them on members with >= 10x the largest fitted compute.

  python main.py --config=configs/sweeps/holdout_tiny.py --workdir=workdirs/holdout_tiny
  python -m scaling.validate --results=workdirs/holdout_tiny/results.csv --fit_below=2.2e11 \
      --bootstrap=200 --out=docs/scaling/holdout_tiny.png

GPT-2 family of the tiny sweeps (head dim 4, d_model / n_layers near 8), 8K to 128K parameters,
0.5M to 8M byte tokens (32 x 128 per step). Learning rates by μP: the smallest size (the base
shape) trains at the tiny sweeps' lr 3e-3 and μP rescales the others' per-parameter lrs and inits
from it. Each size trains one constant-lr trunk; every token budget is a 20 % linear cooldown
branched from it (sweep kind 'wsd'), so the 25 members cost about 5 runs. docs/scaling.md has the
result and wall time.
"""

from configs.sweeps import tiny

SIZES = (8e3, 1.6e4, 3.2e4, 6.4e4, 1.28e5)
TOKENS = (5e5, 1e6, 2e6, 4e6, 8e6)


def get_config():
  c = tiny.training_config(lr=3e-3)
  c.sweep = tiny.sweep_section(kind='wsd', sizes=SIZES, tokens=TOKENS)
  c.optimizer.decay_fraction = 0.2
  # μP's base shape: the smallest size's (as scaling.family designs it: L 2, d 12, d_ff 48).
  c.model.update(parametrization='mup', base_d_model=12, base_d_ff=48, base_head_dim=4)
  # μP as this study ran it (an earlier μP default; today's: α_out 4, embedding lr ∝ 1/width).
  c.model.update(mup_output_mult=1.0, mup_lr_embedding_width_exp=0.0)
  return c
