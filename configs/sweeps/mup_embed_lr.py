"""μP's embedding-lr rule over a 16x width range: does lr ∝ 1/width for the embedding
tables (`mup_lr_embedding_width_exp` 1, the default until this study) keep the optimum in place, or does the constant
lr of microsoft/mup (exponent 0) transfer better as width grows?

  python main.py --config=configs/sweeps/mup_embed_lr.py:1 --config.sweep.vmap=5 --workdir=workdirs/mup_embed_lr/exp1
  python main.py --config=configs/sweeps/mup_embed_lr.py:0 --config.sweep.vmap=5 --workdir=workdirs/mup_embed_lr/exp0
  # seed 1 at the two best lrs of the two widest (the noise floor), per exponent E:
  python main.py --config=configs/sweeps/mup_embed_lr.py:E --config.sweep.vmap=5 --config.sweep.seeds='(1,)' \
      --config.sweep.widths='(256,512)' --config.sweep.lrs='(0.00390625,0.0078125)' \
      --workdir=workdirs/mup_embed_lr/seed1_expE
  python -m scaling.transfer --results=workdirs/mup_embed_lr/exp1/results.csv,\
workdirs/mup_embed_lr/exp0/results.csv --out=docs/mup/embed_lr.png \
      "--labels=exp 1: embedding lr ∝ 1/width (before),exp 0: constant embedding lr (default)"

The rule, written before the runs: μP with the project's defaults (α_out 4) but for the exponent,
GPT-2 family (tied), 2 layers, head dim 16, d_ff 4d, widths 32 to 512 (base 32: both rules are SP
there); 5 peak lrs a factor 2 apart around the horizon optimum (2^-9 .. 2^-5), one seed; 100 steps of
16 x 64 bytes (mup_transfer.py's horizon), cosine with 10 warmup steps, AdamW b2 0.95, wd 0.1,
unclipped. A member group (sweep.vmap) trains one width's 5 lrs as one program.
"""

from configs.sweeps import mup_transfer

WIDTHS = (32, 64, 128, 256, 512)
LRS = tuple(2.0**e for e in range(-9, -4))


def get_config(exponent: str = '1'):
  """mup_transfer.py's μP study with today's μP defaults but for the exponent, over WIDTHS and LRS."""
  if exponent not in ('0', '1'):
    raise ValueError(f'mup_embed_lr.py:<exponent> must be 0 or 1, got {exponent!r}')
  c = mup_transfer.get_config('mup')
  c.model.update(mup_output_mult=0.0, mup_lr_embedding_width_exp=float(exponent))  # 0: tuned α_out.
  c.sweep.update(widths=WIDTHS, lrs=LRS, seeds=(0,))
  return c
