"""Ablation: GELU MLP (the base, configs/default.py) vs parameter-matched SwiGLU.

  python main.py --config=configs/ablation_mlp.py:gelu   --workdir=workdirs/ablation_mlp_gelu
  python main.py --config=configs/ablation_mlp.py:swiglu --workdir=workdirs/ablation_mlp_swiglu

Everything else (data, steps, optimizer, seed) is the default job's, so the two runs see
the same batches; compare `eval/bits_per_byte` in each workdir's metrics.jsonl or in
TensorBoard (`tensorboard --logdir=workdirs`).
"""

from configs import default


def get_config(variant: str = 'swiglu'):
  c = default.get_config()
  if variant == 'gelu':
    return c
  if variant != 'swiglu':
    raise ValueError(f'configs/ablation_mlp.py:<variant>: unknown {variant!r} (gelu | swiglu)')
  # SwiGLU has three D x F matrices instead of two: F = 2/3 of the GELU width keeps params equal.
  c.model.update(mlp='swiglu', d_ff=(2 * c.model.d_ff) // 3)
  return c
