"""Tiny sizes x token-budgets grid (for Chinchilla approach 3 / Kaplan L(N, D)) on the embedded corpus.

  python main.py --config=configs/sweeps/sizes_tokens_tiny.py --workdir=workdirs/sizes_tokens_tiny
  python -m scaling.fit --results=workdirs/sizes_tokens_tiny/results.csv --law=chinchilla --bootstrap=200

3 sizes x 3 token budgets (9 members, ~2.3e12 training FLOPs, ~5,100 steps of 32 x 128 tokens:
roughly 15 minutes on a 2-core CPU).
Same training setup and shape rule as configs/sweeps/isoflop_tiny.py; members that also appear
there (same shape, same steps) are not shared, each sweep has its own workdir.
"""
from configs.sweeps import tiny


def get_config():
  c = tiny.training_config(lr=3e-3)
  c.sweep = tiny.sweep_section(kind='grid', sizes=(8e3, 1.6e4, 3.2e4), tokens=(1e6, 2e6, 4e6))
  return c
