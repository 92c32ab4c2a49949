"""μP's embedding-lr rule over a 16x width range (issue 37): does lr ∝ 1/width for the embedding
tables (`mup_lr_embedding_width_exp` 1, the default) keep the optimum in place, or does the constant
lr of microsoft/mup (exponent 0) transfer better as width grows?

  python main.py --config=configs/sweeps/mup_embed_lr.py:1 --config.sweep.vmap=5 --workdir=workdirs/mup_embed_lr/exp1
  python main.py --config=configs/sweeps/mup_embed_lr.py:0 --config.sweep.vmap=5 --workdir=workdirs/mup_embed_lr/exp0
  python -m scaling.transfer --results=workdirs/mup_embed_lr/exp1/results.csv,\
workdirs/mup_embed_lr/exp0/results.csv --labels=exp1,exp0 --out=docs/mup/embed_lr.png

The rule, written before the runs: μP with the project's defaults (α_out 4) but for the exponent,
GPT-2 family (tied), 2 layers, head dim 16, d_ff 4d, widths 32 to 512 (base 32: both rules are SP
there); 5 peak lrs a factor 2 apart around the horizon optimum (2^-9 .. 2^-5), one seed; 100 steps of
16 x 64 bytes (mup_transfer.py's horizon), cosine with 10 warmup steps, AdamW b2 0.95, wd 0.1,
unclipped. A member group (sweep.vmap) trains one width's 5 lrs as one program.
"""

import ml_collections

from configs import base, default

WIDTHS = (32, 64, 128, 256, 512)
LRS = tuple(2.0**e for e in range(-9, -4))
STEPS = 100
TOKENS = STEPS * 16 * 64


def get_config(exponent: str = '1') -> ml_collections.ConfigDict:
  if exponent not in ('0', '1'):
    raise ValueError(f'mup_embed_lr.py:<exponent> must be 0 or 1, got {exponent!r}')
  c = default.get_config()
  c.model.update(vocab_size=257, max_len=64, n_layers=2, dtype='float32', parametrization='mup')
  c.model.update(base_d_model=WIDTHS[0], mup_lr_embedding_width_exp=float(exponent))
  c.data.update(seq_len=64, tokenizer='byte', dataset='stdlib_corpus')
  c.train.update(global_batch_size=16, grad_accum_steps=1, eval_batches=16, async_checkpoint=False)
  c.optimizer.update(
    schedule='cosine', min_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=0.0
  )
  c.sweep = base.get_sweep_config(
    kind='width',
    widths=WIDTHS,
    tokens=(TOKENS,),
    lrs=LRS,
    seeds=(0,),
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
