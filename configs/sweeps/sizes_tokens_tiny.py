"""Tiny sizes x token-budgets grid (for Chinchilla approach 3 / Kaplan L(N, D)) on the embedded corpus.

  python main.py --config=configs/sweeps/sizes_tokens_tiny.py --workdir=workdirs/sizes_tokens_tiny
  python -m scaling.fit --results=workdirs/sizes_tokens_tiny/results.csv --law=chinchilla --bootstrap=200
  python main.py --config=configs/sweeps/sizes_tokens_tiny.py:wsd --workdir=workdirs/sizes_tokens_wsd

3 sizes x 3 token budgets (9 members, ~2.3e12 training FLOPs, ~5,100 steps of 32 x 128 tokens:
roughly 15 minutes on a 2-core CPU), each member its own cosine run. `:wsd` trains the same 9
(size, tokens) points as cooldown branches of one constant-lr trunk per size (sweep kind 'wsd',
20 % linear decay): about 2/3 of the compute. docs/scaling.md compares the two.
Same training setup and shape rule as configs/sweeps/isoflop_tiny.py; members that also appear
there (same shape, same steps) are not shared, each sweep has its own workdir.
"""

from configs.sweeps import tiny


def get_config(arg='grid'):
  if arg not in ('grid', 'wsd'):
    raise ValueError(f"configs/sweeps/sizes_tokens_tiny.py:{arg}: use ':grid' or ':wsd'")
  c = tiny.training_config(lr=3e-3)
  c.sweep = tiny.sweep_section(kind=arg, sizes=(8e3, 1.6e4, 3.2e4), tokens=(1e6, 2e6, 4e6))
  if arg == 'wsd':
    c.optimizer.decay_fraction = 0.2
  return c
