"""Training setup and shape rule shared by the tiny CPU sweeps (not a runnable config).

Pinned here rather than inherited from configs/default.py, so that editing the main job does
not change the members of an existing sweep (their config hashes would no longer match).
"""

from configs import base, default


def training_config(lr: float):
  """Byte-level, seq 128, 32 x 128 = 4096 tokens per step, AdamW with cosine decay to 0.1x."""
  c = default.get_config()
  c.model.update(vocab_size=257, max_len=128, dtype='float32')
  c.data.update(seq_len=128, tokenizer='byte', dataset='stdlib_corpus')
  c.train.update(global_batch_size=32, grad_accum_steps=1, eval_batches=16, async_checkpoint=False)
  c.optimizer.update(
    lr=lr, schedule='cosine', min_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0
  )
  return c


def sweep_section(**overrides):
  """A `sweep` section with the tiny sweeps' defaults and their GPT-2 shape rule (head dim 4,
  d_model / n_layers near 8; see scaling/family.py)."""
  s = base.get_sweep_config(
    count='params',
    warmup_fraction=0.05,
    min_warmup_steps=5,
    min_steps=20,
    checkpoints_per_member=2,
    logs_per_member=4,
  )
  s.update(overrides)
  s.family.update(family='gpt2', aspect=8.0, head_dim=4, tolerance=0.1)
  return s
