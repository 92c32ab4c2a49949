"""Round-to-nearest absmax quantization of one kernel with google's qwix: the math behind
models/quantize.py, kept apart so the transformer (model.weight_quant) can use it.

A kernel [lead..., fan_in..., fan_out...] is viewed as [N, I, O] (N: 'layers', I/O: its fan-in and
fan-out from parametrization.split_axes) and quantized with one scale per output channel (group
0) or per `group` consecutive fan-in entries of each channel.

The scale is qwix's: absmax / (qmax + 0.5) for integers (qmax = 2^(bits-1) - 1: 7.5 at int4), so
the largest |w| sits at the edge of the top bucket; `rule='textbook'` gives absmax / qmax through
qwix's own calibration factor ('absmax,<f>'), for measuring the difference (docs/compression.md).
int3 is qwix's synthetic 'int3' (values -4..3, held as int4, packed as int4 on disk); nf4 its
NormalFloat4 (Dettmers et al. 2023: scale absmax, values the indices 0..15 of 16 levels in [-1, 1],
held as uint4, packed as int4 on disk).
"""

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from models import parametrization

if (
  TYPE_CHECKING
):  # qwix imports flax.nnx (~0.7 s): loaded at first use, not at every main.py start.
  import qwix

QTYPES = {
  'int8': jnp.int8,
  'int4': jnp.int4,
  'int3': 'int3',
  'fp8': jnp.float8_e4m3fn,
  'nf4': 'nf4',  # qwix's NormalFloat4 (QLoRA): 16 levels of a unit normal's quantiles, x absmax.
}
NIBBLES = ('int4', 'int3', 'nf4')  # held and written two values per byte.
SCHEMES = tuple(QTYPES)
INT_BITS = {'int8': 8, 'int4': 4, 'int3': 3}  # the integer schemes (GPTQ / AWQ work on these).
SCALE_RULES = ('qwix', 'textbook')


def dims(axes: Sequence[str], shape: Sequence[int]) -> tuple[int, int, int]:
  """(N, I, O): the lead ('layers'), fan-in and fan-out sizes of a kernel."""
  fan_in, fan_out = parametrization.split_axes(axes)
  n_lead = len(axes) - len(fan_in) - len(fan_out)
  i = math.prod(shape[n_lead : n_lead + len(fan_in)])
  return math.prod(shape[:n_lead]), i, math.prod(shape[n_lead + len(fan_in) :])


def check_group(scheme: str, group: int, fan_in: int, axes: Sequence[str]) -> None:
  """One-line ValueError naming the field: an unknown scheme, a group not dividing the fan-in."""
  if scheme not in QTYPES:
    raise ValueError(f'weight_quant={scheme!r} is not one of {SCHEMES}')
  if group < 0 or (group and fan_in % group):
    raise ValueError(
      f'weight_group={group} must be 0 (per channel) or divide the fan-in {fan_in} of {tuple(axes)}'
    )


def calibration_method(scheme: str, rule: str = 'qwix') -> str:
  """qwix's calibration_method for `scheme`: 'absmax' (scale absmax / (qmax + 0.5) for integers,
  absmax / 448 for fp8); rule 'textbook' scales absmax up by (qmax + 0.5) / qmax: absmax / qmax."""
  if rule not in SCALE_RULES:
    raise ValueError(f'scale rule {rule!r} is not one of {SCALE_RULES}')
  if rule == 'qwix' or scheme not in INT_BITS:
    return 'absmax'
  qmax = 2 ** (INT_BITS[scheme] - 1) - 1
  return f'absmax,{(qmax + 0.5) / qmax!r}'


def quantize(w_NxIxO: jax.Array, scheme: str, group: int, rule: str = 'qwix') -> 'qwix.QArray':
  """qwix's absmax RTN of w [N, I, O]: scales [N, I/group (1 at group 0), O]."""
  import qwix

  check_group(scheme, group, w_NxIxO.shape[1], ('lead', 'fan_in', 'fan_out'))
  tiled = {1: group} if group else None
  return qwix.quantize(
    w_NxIxO,
    QTYPES[scheme],
    channelwise_axes=(0, 2),
    tiled_axes=tiled,
    calibration_method=calibration_method(scheme, rule),
  )


def fake_quant(kernel: jax.Array, axes: Sequence[str], scheme: str, group: int) -> jax.Array:
  """dequantize(quantize(kernel)) with a straight-through gradient (x + stop_gradient(q - x),
  written q + (x - stop_gradient(x)) so the forward is q bit for bit)."""
  n, i, o = dims(axes, kernel.shape)
  check_group(scheme, group, i, axes)
  x = jax.lax.stop_gradient(kernel)
  import qwix

  q = qwix.dequantize(quantize(x.reshape(n, i, o), scheme, group)).reshape(kernel.shape)
  return q.astype(kernel.dtype) + (kernel - x)


def _pack_int4(v: np.ndarray) -> np.ndarray:
  """int4 values (as int8, -8..7) flattened, two per uint8: even index low nibble."""
  flat = v.reshape(-1).astype(np.uint8) & 0xF
  flat = np.pad(flat, (0, flat.size % 2))
  return flat[0::2] | (flat[1::2] << 4)


def _unpack_int4(packed: np.ndarray, size: int) -> np.ndarray:
  """The first `size` int4 values (as int8) of `_pack_int4`'s bytes."""
  nib = np.stack([packed & 0xF, packed >> 4], -1).reshape(-1)[:size].astype(np.int8)
  return np.where(nib > 7, nib - 16, nib).astype(np.int8)


def encode(q: 'qwix.QArray', scheme: str) -> np.ndarray:
  """q's values for disk: int8 as is, int4, int3 and nf4 packed two per uint8, fp8 as its bits."""
  nibbles = scheme in NIBBLES
  v = np.asarray(q.qvalue.astype(jnp.int8) if nibbles else q.qvalue)
  if nibbles:
    return _pack_int4(v)
  return v.view(np.uint8) if scheme == 'fp8' else v


def decode(packed: np.ndarray, scheme: str, shape: tuple) -> jax.Array:
  """`encode`'s inverse: the quantized values [N, I, O] in the scheme's dtype."""
  if scheme in ('int4', 'int3'):
    return jnp.asarray(_unpack_int4(packed, math.prod(shape)).reshape(shape), jnp.int4)
  if scheme == 'nf4':  # level indices 0..15: the nibbles unsigned.
    return jnp.asarray((_unpack_int4(packed, math.prod(shape)) & 0xF).reshape(shape), jnp.uint4)
  if scheme == 'fp8':
    return jnp.asarray(packed.view(ml_dtypes.float8_e4m3fn).reshape(shape))
  return jnp.asarray(packed.reshape(shape))
