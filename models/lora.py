"""LoRA adapters as params: which leaves they are, the base without them, and the merged base.

The adapters themselves are made by the model (models/transformer.py `_lora`) on the kernels
that models/parametrization.py LORA_TARGETS names by logical axes; here, the pytree side:
`<kernel>_lora_a` [layers?, fan_in..., r] and `<kernel>_lora_b` [layers?, r, fan_out...] beside
`<kernel>`, merged as W + (A·B)·scale for export or for serving without the adapter matmuls; with
DoRA also `<kernel>_lora_m` [layers?, 1, fan_out...], merged as m · (W + A·B·scale) / its norms.
"""

import math

import jax
import jax.numpy as jnp
from flax import traverse_util

import models
from models import parametrization, resident_quant, rtn
from models.config import ModelConfig, PyTree
from models.transformer import dora_norm

SUFFIXES = ('_lora_a', '_lora_b', '_lora_m')  # A, B and DoRA's magnitude m: every adapter leaf.


def is_adapter(path: tuple) -> bool:
  """Whether a flattened param path (tuple of names) is a LoRA leaf (DoRA's m included)."""
  return str(path[-1]).endswith(SUFFIXES)


def base_config(cfg: ModelConfig) -> ModelConfig:
  """The model without adapters (what a base checkpoint holds, what a merge gives: float32, a
  QLoRA base's kernels dequantized)."""
  return cfg.replace(lora_rank=0, lora_dropout=0.0, lora_dora=False, lora_base_resident='float')


def split(params: PyTree) -> tuple[PyTree, PyTree]:
  """(base params, adapter params), each a nested dict of the leaves it holds."""
  flat = traverse_util.flatten_dict(params)
  base = {k: v for k, v in flat.items() if not is_adapter(k)}
  adapters = {k: v for k, v in flat.items() if is_adapter(k)}
  return traverse_util.unflatten_dict(base), traverse_util.unflatten_dict(adapters)


def combine(base: PyTree, adapters: PyTree) -> PyTree:
  """The inverse of split: one params tree with both."""
  flat = {**traverse_util.flatten_dict(base), **traverse_util.flatten_dict(adapters)}
  return traverse_util.unflatten_dict(flat)


def delta(cfg: ModelConfig, kernel: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """(A·B)·scale in the kernel's shape: A [lead..., fan_in..., r], B [lead..., r, fan_out...],
  `lead` the stacked-layers axis when the kernel has one."""
  n_lead = a.ndim + b.ndim - 2 - kernel.ndim  # lead axes counted twice (once in each of A, B).
  lead = a.shape[:n_lead]
  fan_in, fan_out = a.shape[n_lead:-1], b.shape[n_lead + 1 :]
  a2 = a.reshape(*lead, math.prod(fan_in), a.shape[-1])
  b2 = b.reshape(*lead, b.shape[n_lead], math.prod(fan_out))
  d = jnp.matmul(a2.astype(jnp.float32), b2.astype(jnp.float32))
  return (d * parametrization.lora_scale(cfg)).reshape(kernel.shape).astype(kernel.dtype)


def _adapted(flat: dict) -> list[tuple]:
  """The flattened paths of the kernels that have adapters (an `_lora_a` beside them)."""
  return [k[:-1] + (str(k[-1])[: -len('_lora_a')],) for k in flat if str(k[-1]).endswith('_lora_a')]


def _leaf(flat: dict, kernel: tuple, suffix: str) -> jax.Array | None:
  return flat.get(kernel[:-1] + (kernel[-1] + suffix,))


def _dora_factor(w: jax.Array, a: jax.Array, b: jax.Array, m: jax.Array, scale: float):
  """m / ||W + A·B·scale|| with a unit axis per fan-in axis, so it multiplies W [lead...,
  fan_in..., fan_out...] column by column (m [lead..., 1, fan_out...])."""
  n_lead = a.ndim + b.ndim - 2 - w.ndim
  n_in = a.ndim - 1 - n_lead
  factor = m / jnp.expand_dims(dora_norm(w, a, b, scale), n_lead)
  return factor.reshape(*w.shape[:n_lead], *([1] * n_in), *w.shape[n_lead + n_in :])


def merge(cfg: ModelConfig, params: PyTree) -> PyTree:
  """The base params with every adapter folded in, for base_config(cfg): W + A·B·scale, with
  DoRA m · (W + A·B·scale) / ||W + A·B·scale|| (column norms over the fan-in axes, as PEFT).
  QLoRA's held kernels are dequantized first (models/resident_quant.py): merged into that base."""
  if resident_quant.holds(params):
    params = resident_quant.dequantized(params, models.param_shapes(base_config(cfg)))
  flat = traverse_util.flatten_dict(params)
  out = {k: v for k, v in flat.items() if not is_adapter(k)}
  for kernel in _adapted(flat):
    w = out[kernel]
    a, b, m = (_leaf(flat, kernel, s) for s in SUFFIXES)
    merged = w + delta(cfg, w, a, b)
    if m is not None:
      merged = merged * _dora_factor(w, a, b, m, parametrization.lora_scale(cfg))
    out[kernel] = merged.astype(w.dtype)
  return traverse_util.unflatten_dict(out)


def init_magnitudes(cfg: ModelConfig, params: PyTree) -> PyTree:
  """`params` with each DoRA magnitude m set to its kernel's column norms ||W + A·B·scale|| (W as
  the model uses it: fake-quantized under model.weight_quant), so the adapted model computes the
  base's function: for adapters made before their base was loaded (train/init_from.py). Each m
  keeps its sharding. Without DoRA, `params` as they are."""
  if not cfg.lora_dora:
    return params
  flat = traverse_util.flatten_dict(params)
  axes = traverse_util.flatten_dict(models.logical_axes(cfg))
  for kernel in _adapted(flat):
    w, a, b = flat[kernel], _leaf(flat, kernel, '_lora_a'), _leaf(flat, kernel, '_lora_b')
    if cfg.weight_quant != 'none' and parametrization.compressible(tuple(axes[kernel])):
      w = rtn.fake_quant(w, tuple(axes[kernel]), cfg.weight_quant, cfg.weight_group)
    path = kernel[:-1] + (kernel[-1] + '_lora_m',)
    n_lead = a.ndim + b.ndim - 2 - w.ndim
    m = jnp.expand_dims(dora_norm(w, a, b, parametrization.lora_scale(cfg)), n_lead)
    old = flat[path]
    flat[path] = jax.device_put(m, old.sharding) if isinstance(old, jax.Array) else m
  return traverse_util.unflatten_dict(flat)
