"""Low precision by parametrization: float32 vs float16 (with and without loss scaling) vs
simulated fp8 matmul inputs, for SP and u-μP, on the embedded corpus (docs/mup.md has the result).

  python main.py --config=configs/low_precision.py:umup,float16_unscaled \
      --workdir=workdirs/low_precision/umup_float16_unscaled

Arguments: <parametrization>,<precision> with parametrization 'sp' | 'mup' | 'umup' and precision
  float32           float32 compute (the reference)
  float16           float16 compute, dynamic loss scaling (jmp)
  float16_unscaled  float16 compute, no loss scaling
  fp8               every dense matmul's inputs rounded to float8_e4m3fn (saturating), float32
                    accumulation; no per-tensor scaling factors, so values far from 1 lose precision
Same model and data as configs/sweeps/mup_transfer.py at d_model 128 (2 layers, 16 x 64 bytes per
step), 300 steps, each parametrization at its best lr of the transfer sweep at that width.
"""

from configs.sweeps import mup_transfer

PRECISIONS = ('float32', 'float16', 'float16_unscaled', 'fp8')
LR = {'sp': 2.0**-10, 'mup': 2.0**-7, 'umup': 2.0**0}  # transfer sweep optima at d_model 128.


def get_config(arg='umup,float32'):
  parametrization, _, precision = arg.partition(',')
  if precision not in PRECISIONS:
    raise ValueError(
      f'low_precision.py:<parametrization>,<precision>: precision must be one of '
      f'{PRECISIONS}, got {precision!r}'
    )
  c = mup_transfer.get_config(parametrization)
  del c['sweep']
  c.model.update(d_model=128, n_heads=8, d_ff=512, dtype='float32', fp8=precision == 'fp8')
  if precision.startswith('float16'):
    c.model.dtype = 'float16'
  c.train.update(
    num_steps=300,
    log_every=25,
    eval_every=100,
    checkpoint_every=300,
    loss_scale='none' if precision == 'float16_unscaled' else 'auto',
  )
  c.optimizer.update(lr=LR[parametrization], warmup_steps=15)
  return c
