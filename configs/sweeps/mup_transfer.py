"""Learning-rate transfer across width: SP vs μP vs u-μP on the embedded corpus (one config per
parametrization; 4 widths x 7 peak lrs a factor 2 apart (9 for SP) x 2 seeds = 56 (72) members).

  python main.py --config=configs/sweeps/mup_transfer.py:sp   --workdir=workdirs/mup_transfer/sp
  python main.py --config=configs/sweeps/mup_transfer.py:mup  --workdir=workdirs/mup_transfer/mup
  python main.py --config=configs/sweeps/mup_transfer.py:umup --workdir=workdirs/mup_transfer/umup
  python -m scaling.transfer --results=workdirs/mup_transfer/sp/results.csv,\
workdirs/mup_transfer/mup/results.csv,workdirs/mup_transfer/umup/results.csv \
      --out=docs/mup/transfer.png

GPT-2 family (tied embeddings), 2 layers, head dim 16, d_ff = 4 d; widths 32 to 256 (8x); byte
level, 16 x 64 tokens per step, 102,400 tokens (100 steps), cosine schedule with 10 warmup steps,
AdamW (b2 0.95, weight decay 0.1), no gradient clipping (u-μP's backward scales make global-norm
clipping thresholds width-dependent; left off for all three so they compare alike). μP's base
shape is the smallest width, so μP equals SP there. docs/mup.md has the result and wall times.
"""

import ml_collections

from configs import base, default

WIDTHS = (32, 64, 128, 256)
SEEDS = (0, 1)
# 7 peak lrs a factor 2 apart per parametrization, centred where its width-64 model trains best.
LRS = {
  # SP's optimum left the grid at the wide end: two more lrs below (9 points).
  'sp': tuple(2.0**e for e in range(-12, -3)),  # 2.4e-4 .. 6.3e-2
  'mup': tuple(2.0**e for e in range(-10, -3)),
  'umup': tuple(2.0**e for e in range(-2, 5)),  # 0.25 .. 16
}
STEPS = 100
TOKENS_PER_STEP = 16 * 64
TOKENS = STEPS * TOKENS_PER_STEP


def get_config(parametrization='mup'):
  if parametrization not in LRS:
    raise ValueError(f'mup_transfer.py:<arg> must be one of {tuple(LRS)}, got {parametrization!r}')
  c = default.get_config()
  c.model.update(
    vocab_size=257,
    max_len=64,
    n_layers=2,
    dtype='float32',
    parametrization=parametrization,
    base_d_model=WIDTHS[0] if parametrization == 'mup' else 0,
  )
  if parametrization == 'mup':  # μP as this study ran it (before issue 22's tuned defaults).
    c.model.update(mup_output_mult=1.0, mup_lr_embedding_width_exp=0.0)
  c.data.update(seq_len=64, tokenizer='byte', dataset='stdlib_corpus')
  c.train.update(global_batch_size=16, grad_accum_steps=1, eval_batches=16, async_checkpoint=False)
  c.optimizer.update(
    schedule='cosine', min_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=0.0
  )
  c.sweep = base.get_sweep_config(
    kind='width',
    widths=WIDTHS,
    tokens=(TOKENS,),
    lrs=LRS[parametrization],
    seeds=SEEDS,
    warmup_fraction=0.0,
    min_warmup_steps=10,
    min_steps=10,
    checkpoints_per_member=1,
    logs_per_member=3,
  )
  c.sweep.family = ml_collections.ConfigDict(
    {'family': 'gpt2', 'aspect': 32.0, 'head_dim': 16, 'tolerance': 0.1}
  )
  return c
