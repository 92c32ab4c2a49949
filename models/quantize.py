"""Weight quantization of a model's compressible kernels: round-to-nearest absmax with google's
qwix (models/rtn.py), or GPTQ / AWQ from calibration statistics (models/calibrated_quant.py), per
output channel or per group of fan-in entries.

Embeddings, readout, norms and biases stay float32. `fake_quant` is the model's QAT/PTQ forward
(model.weight_quant); `quantize_tree` packs params for disk (int8; int4, int3 and nf4 two per byte;
fp8 as its uint8 bits) with float32 scales (and AWQ's per-fan-in scales), `dequantize_tree` inverts it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

import models
from models import parametrization, rtn
from models.config import ModelConfig, PyTree
from models.rtn import QTYPES, SCHEMES, fake_quant, quantize  # noqa: F401 (the public API)


@functools.cache
def _shapes_and_axes(cfg: ModelConfig) -> tuple[PyTree, list]:
  """(param shapes, [logical axes] in tree order) of `cfg` with weight quantization off."""
  cfg = cfg.replace(weight_quant='none', weight_group=0)
  specs = models.logical_axes(cfg)
  return models.param_shapes(cfg), [
    tuple(s) for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  ]


def shapes(cfg: ModelConfig) -> PyTree:
  """The param shapes of `cfg` (weight quantization off), cached."""
  return _shapes_and_axes(cfg)[0]


def leaves(cfg: ModelConfig, params: PyTree) -> list:
  """[(name 'a/b/c', param, logical axes)] in tree order."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  name = lambda path: '/'.join(str(getattr(k, 'key', k)) for k in path)
  return [(name(p), x, s) for (p, x), s in zip(flat, _shapes_and_axes(cfg)[1], strict=True)]


def quantize_tree(
  cfg: ModelConfig,
  params: PyTree,
  scheme: str,
  group: int,
  rule: str = 'qwix',
  kernels: dict | None = None,
) -> dict:
  """Flat {name: numpy array}: each compressible kernel as '<name>:q' (packed values) and
  '<name>:scale' (float32 [N, I/group, O]), with AWQ also '<name>:awq_scale' (float32 [N, I]);
  every other param as '<name>' (float32). Kernels are RTN's (rule: rtn.calibration_method) unless
  `kernels` gives them: {name: (QArray, AWQ scale or None)} (calibrated_quant.quantize_kernels)."""
  out = {}
  for name, x, axes in leaves(cfg, params):
    if not parametrization.compressible(axes):
      out[name] = np.asarray(x, np.float32)
      continue
    rtn.check_group(scheme, group, rtn.dims(axes, x.shape)[1], axes)
    if kernels is None:
      w = jnp.asarray(x, jnp.float32).reshape(rtn.dims(axes, x.shape))
      q, s = _quantize_jit(w, scheme, group, rule), None
    else:
      q, s = kernels[name]
    out[name + ':q'], out[name + ':scale'] = rtn.encode(q, scheme), np.asarray(q.scale)
    if s is not None:
      out[name + ':awq_scale'] = np.asarray(s, np.float32)
  return out


_quantize_jit = jax.jit(quantize, static_argnums=(1, 2, 3))


def dequantize_tree(cfg: ModelConfig, packed: dict, scheme: str) -> PyTree:
  """The float32 params (as numpy arrays) of `quantize_tree`'s output for model config `cfg`."""
  import qwix  # lazy, as in models/rtn.py: every main.py start imports this module.

  shapes, out = _shapes_and_axes(cfg)[0], []
  for name, s, axes in leaves(cfg, shapes):
    if not parametrization.compressible(axes):
      out.append(np.asarray(packed[name], np.float32).reshape(s.shape))
      continue
    scale = jnp.asarray(packed[name + ':scale'])
    v = rtn.decode(packed[name + ':q'], scheme, rtn.dims(axes, s.shape))
    w = qwix.dequantize(qwix.QArray(qvalue=v, scale=scale, zero_point=None, qtype=QTYPES[scheme]))
    if name + ':awq_scale' in packed:  # AWQ: the kernel was quantized as w * s (per fan-in entry).
      w = w / jnp.asarray(packed[name + ':awq_scale'])[:, :, None]
    out.append(np.asarray(w).reshape(s.shape))
  return jax.tree.unflatten(jax.tree.structure(shapes), out)


def fan_ins(cfg: ModelConfig) -> dict:
  """{logical axes: fan-in} of every compressible kernel of `cfg`."""
  return {
    axes: rtn.dims(axes, x.shape)[1]
    for _, x, axes in leaves(cfg, _shapes_and_axes(cfg)[0])
    if parametrization.compressible(axes)
  }


def check(cfg: ModelConfig, scheme: str | None = None, group: int | None = None) -> None:
  """One-line ValueError naming the field: an unknown scheme, a group that does not divide some
  quantized kernel's fan-in (scheme and group default to model.weight_quant / weight_group)."""
  field = 'config.model.' if scheme is None else ''
  scheme = cfg.weight_quant if scheme is None else scheme
  group = cfg.weight_group if group is None else group
  if scheme == 'none' and not field:
    raise ValueError(f"weight_quant='none' is not one of {SCHEMES}")
  if scheme == 'none':
    return
  if scheme not in QTYPES:
    raise ValueError(f'{field}weight_quant={scheme!r} is not one of {SCHEMES}')
  if group < 0:
    raise ValueError(f'{field}weight_group={group} must be >= 0 (0: per channel)')
  for axes, n in fan_ins(cfg).items() if group else ():
    if n % group:
      raise ValueError(
        f'{field}weight_group={group} does not divide the fan-in {n} of the kernel {axes} '
        '(use a divisor, or 0: per channel)'
      )
