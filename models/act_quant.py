"""Activation quantization of the compressible dense layers' inputs (W8A8) and SmoothQuant.

With model.act_quant 'int8' or 'fp8' (float8_e4m3fn) the input x of every compressible kernel is
quantized and dequantized before its matmul (models/transformer.py `_dense`), with qwix's numerics
and a straight-through gradient (QAT). The symmetric scale is qwix's: absmax / 127.5 for int8,
absmax / 448 for fp8, with absmax by model.act_scale:

  'static'  one per kernel and layer, calibrated (the max |x| over calibration batches) and held
            as the frozen param '<kernel>_act_amax' [1] (NaN until train.tools.compress sets it: a model
            initialized with static scales computes NaN); inputs beyond it clip.
  'tensor'  the whole input's (dynamic: the rows of a batch share it; for QAT towards 'static').
  'token'   each token's, over the kernel's fan-in (dynamic).

SmoothQuant (Xiao et al. 2022; model.act_smooth): per fan-in entry j, s_j = max|x_j|^α /
max|W_j|^(1-α) (qwix.contrib.smooth_quant.compute_scales_ratio, both clipped at 1e-5 as in the
authors' code), held as the frozen param '<kernel>_act_smooth' [1, fan_in...]; the layer computes
(x / s)·(s W): in float the same function, with the input's outlier channels moved into the
weights. A quantized workdir stores the kernel quantized as s·W with s as its per-fan-in scale (dequantized deq / s,
AWQ's storage, so the float params stay W-like) and the forward multiplies it by s again.

Both lead with the logical axis 'act_calib' (size 1), whose role in the parameter table
(models/parametrization.py) makes them frozen (no update, no optimizer state, no weight decay),
replicated along it, never compressed nor LoRA targets; stop_gradient keeps their gradient zero.

qwix's own SmoothQuant and static-range providers intercept one-contracting-axis einsums on params
found by identity, which misses our attention output (two fan-in axes) and the scanned layers (as
models/calibrated_quant.py explains), and average per-example absmax where calibration here takes
the max; so the numerics are qwix's (qarray, compute_scales_ratio) and the plumbing is ours.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import parametrization
from models.config import CHOICES, ModelConfig

QTYPES = {'int8': jnp.int8, 'fp8': jnp.float8_e4m3fn}
SCHEMES = tuple(QTYPES)
SCALES = CHOICES['act_scale']
AMAX, SMOOTH = '_act_amax', '_act_smooth'  # the frozen params' suffixes on the kernel's name.
CALIB_AXIS = 'act_calib'  # their leading size-1 logical axis (the parameter table's frozen role).
CALIBRATED_SCALES = ('static',)  # act_scale values that need calibration batches.


def fake_quant(
  x: jax.Array, scheme: str, n_in: int, scale: str, amax: jax.Array | None = None
) -> jax.Array:
  """x quantized to `scheme` and back (module doc), absmax per token over the trailing `n_in`
  (fan-in) dims, over all of x, or `amax` (scale 'token', 'tensor', 'static'); the gradient is
  straight-through, written q + (x - stop_gradient(x)) so the forward is q bit for bit."""
  from qwix._src.core import qarray  # lazy, as in models/rtn.py.

  xs, qtype = jax.lax.stop_gradient(x), QTYPES[scheme]
  if scale == 'static':
    absmax = jnp.reshape(amax, (1,) * x.ndim).astype(x.dtype)
    s, _ = qarray.compute_scale_zero_point({'absmax': absmax}, qtype)
    q = qarray.quantize_with_scale_zero_point(xs, qtype, s, None)
  elif scale in ('tensor', 'token'):
    axes = tuple(range(x.ndim - n_in)) if scale == 'token' else ()
    q = qarray.quantize(xs, qarray.HowToQuantize(qtype=qtype, channelwise_axes=axes))
  else:
    raise ValueError(f'act_scale={scale!r} is not one of {SCALES}')
  return qarray.dequantize(q).astype(x.dtype) + (x - xs)


def _frozen(module: nn.Module, name: str, shape: tuple, axes: tuple, fill: float) -> jax.Array:
  """The float32 param [1, *shape] with logical axes ('act_calib', *axes) (frozen by the parameter
  table; set by train.tools.compress, `fill` until then), as [*shape] with no gradient."""
  init = nn.with_logical_partitioning(nn.initializers.constant(fill), (CALIB_AXIS, *axes))
  return jax.lax.stop_gradient(module.param(name, init, (1, *shape), jnp.float32)[0])


def dense_inputs(
  module: nn.Module, name: str, x: jax.Array, kernel: jax.Array, axes: tuple
) -> tuple[jax.Array, jax.Array]:
  """(x, kernel) as kernel `name`'s matmul takes them: for a compressible kernel x / s and
  s·kernel under model.act_smooth, then x fake-quantized under model.act_quant (module doc)."""
  cfg = module.cfg
  if not parametrization.compressible(axes):
    return x, kernel
  fan_in, _ = parametrization.split_axes(axes)
  n_in = len(fan_in)
  if cfg.act_smooth:
    s = _frozen(module, name + SMOOTH, kernel.shape[:n_in], fan_in, 1.0)  # 1: no smoothing.
    x = (x / s).astype(x.dtype)
    kernel = kernel * s.reshape(s.shape + (1,) * (kernel.ndim - n_in))
  if cfg.act_quant != 'none':
    amax = None  # uncalibrated static scales are NaN: a model never calibrated cannot run quietly.
    if cfg.act_scale == 'static':
      amax = _frozen(module, name + AMAX, (), (), float('nan'))
    x = fake_quant(x, cfg.act_quant, n_in, cfg.act_scale, amax)
  return x, kernel


# --- W8A8 settings (train.tools.compress --activations; models/calibrated_quant.py builds the
# model) --


def config(cfg: ModelConfig, act: dict) -> ModelConfig:
  """cfg with activation quantization `act` ({'quant', 'scale', 'smooth': α or 0}) switched on."""
  return cfg.replace(act_quant=act['quant'], act_scale=act['scale'], act_smooth=act['smooth'] > 0)


def needs_calibration(act: dict) -> bool:
  """Whether `act` takes its static scales or smoothing factors from calibration batches."""
  return act['scale'] in CALIBRATED_SCALES or act['smooth'] > 0


def check(cfg: ModelConfig, act: dict, method: str, calib_batches: int) -> None:
  """One-line ValueError naming the flag (train.tools.compress --activations, --act_scale,
  --smooth)."""
  if act['quant'] not in SCHEMES:
    raise ValueError(f'--activations={act["quant"]!r} is not one of {SCHEMES}')
  if act['scale'] not in SCALES:
    raise ValueError(f'--act_scale={act["scale"]!r} is not one of {SCALES}')
  if not 0 <= act['smooth'] <= 1:
    raise ValueError(f'--smooth={act["smooth"]}: SmoothQuant α must be in (0, 1] (0: off)')
  if act['smooth'] and method != 'rtn':
    raise ValueError(f'--smooth: SmoothQuant scales the weights before RTN, not --method={method}')
  if needs_calibration(act) and calib_batches < 1:
    need = '--smooth' if act['scale'] not in CALIBRATED_SCALES else f'--act_scale={act["scale"]}'
    raise ValueError(f'{need} needs calibration data: --calib_batches >= 1')
  if cfg.lora_rank:
    raise ValueError('--activations: the source has LoRA adapters (merge them first)')


def smooth_factors(w_NxIxO: jax.Array, absmax_NxI: jax.Array, alpha: float) -> jax.Array:
  """SmoothQuant's s [N, I] of kernels w [N, I, O] whose inputs reach absmax [N, I]."""
  from qwix.contrib import smooth_quant

  w_max = jnp.clip(jnp.max(jnp.abs(w_NxIxO), axis=2), min=1e-5)
  return smooth_quant.compute_scales_ratio(jnp.clip(absmax_NxI, min=1e-5), w_max, alpha)


def fields(cfg: ModelConfig) -> dict:
  """The model section's activation-quantization fields of `cfg` (for a workdir's config.json)."""
  return {'act_quant': cfg.act_quant, 'act_scale': cfg.act_scale, 'act_smooth': cfg.act_smooth}
