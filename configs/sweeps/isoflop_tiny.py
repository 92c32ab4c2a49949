"""Tiny IsoFLOP sweep (Chinchilla approach 2) on the embedded corpus: 3 budgets x 5 sizes, byte-level.

  python main.py --config=configs/sweeps/isoflop_tiny.py --workdir=workdirs/isoflop_tiny
  python -m scaling.sweep --config=configs/sweeps/isoflop_tiny.py      # the member table only

Sized for a 2-core CPU shared with other work: 35m43s measured with the machine busy
(docs/scaling.md has the result).
Training setup: configs/default.py's (byte tokenizer, seq_len 128, AdamW, cosine to 0.1x), pinned
here with lr 2e-2 and 32 x 128 = 4096 tokens per step; each member trains D = C / (6N) tokens
(N the total parameter count), i.e. round(D / 4096) steps, warmup 5% (at least 5 steps).
Shapes come from scaling.family: GPT-2 family, head_dim 4, preferred d_model / n_layers = 8, which
gives a regular ladder at these tiny sizes (layers x d_model: 1x8, 2x8, 1x12, 2x12, 2x16, 3x16, 3x20).
At this scale small models win (optima of 6K-11K parameters, ~210-360 training bytes per parameter), so
the sizes are consecutive shapes of that ladder around each budget's optimum, and every budget's
loss-vs-N parabola has its minimum inside the sizes tried.
"""

from configs.sweeps import tiny

BUDGETS = (5e10, 1.2e11, 2.5e11)
# Target total params per budget: 5 consecutive shapes of the family's ladder around the optimum.
# Measured here first: at 1e11 FLOPs the smallest of 6.5K / 12.7K / 23K params had the lowest loss
# (at lr 3e-3, 1e-2 and 2.5e-2 alike), so the optima are a few thousand to ~1e4 parameters.
SIZES_PER_BUDGET = (
  (4e3, 4.8e3, 6.5e3, 8.4e3, 1.28e4),
  (4.8e3, 6.5e3, 8.4e3, 1.28e4, 1.6e4),
  (6.5e3, 8.4e3, 1.28e4, 1.6e4, 2.3e4),
)


def get_config():
  c = tiny.training_config(lr=2e-2)
  c.sweep = tiny.sweep_section(kind='isoflop', budgets=BUDGETS, sizes_per_budget=SIZES_PER_BUDGET)
  return c
