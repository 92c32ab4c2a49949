"""Tiny sizes x token-budgets grid (for Chinchilla approach 3 / Kaplan L(N, D)) on the embedded corpus.

  python main.py --config=configs/sweeps/sizes_tokens_tiny.py --workdir=workdirs/sizes_tokens_tiny
  python -m scaling.fit --results=workdirs/sizes_tokens_tiny/results.csv --law=chinchilla --bootstrap=200

3 sizes x 3 token budgets (9 members, ~2.3e12 training FLOPs, ~5,100 steps of 32 x 128 tokens:
roughly 15 minutes on a 2-core CPU).
Same training setup and shape rule as configs/sweeps/isoflop_tiny.py; members that also appear
there (same shape, same steps) are not shared, each sweep has its own workdir.
"""
from configs import base, default


def get_config():
  c = default.get_config()
  # Pinned (not inherited from configs/default.py), see configs/sweeps/isoflop_tiny.py.
  c.model.update(vocab_size=257, max_len=128, dtype='float32')
  c.data.update(seq_len=128, tokenizer='byte', dataset='stdlib_corpus')
  c.train.update(global_batch_size=32, grad_accum_steps=1, eval_batches=16, async_checkpoint=False)
  c.optimizer.update(lr=3e-3, schedule='cosine', min_lr_ratio=0.1, b1=0.9, b2=0.95,
                     weight_decay=0.1, grad_clip=1.0)
  c.sweep = base.get_sweep_config(
      kind='grid', sizes=(8e3, 1.6e4, 3.2e4), tokens=(1e6, 2e6, 4e6), count='params',
      warmup_fraction=0.05, min_warmup_steps=5, min_steps=20, checkpoints_per_member=2,
      logs_per_member=4)
  c.sweep.family.update(family='gpt2', aspect=8.0, head_dim=4, tolerance=0.1)
  return c
