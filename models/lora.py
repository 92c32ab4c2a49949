"""LoRA adapters as params: which leaves they are, the base without them, and the merged base.

The adapters themselves are made by the model (models/transformer.py `_lora`) on the kernels
that models/parametrization.py LORA_TARGETS names by logical axes; here, the pytree side:
`<kernel>_lora_a` [layers?, fan_in..., r] and `<kernel>_lora_b` [layers?, r, fan_out...] beside
`<kernel>`, merged as W + (A·B)·scale for export or for serving without the adapter matmuls.
"""

import math

import jax
import jax.numpy as jnp
from flax import traverse_util

from models import parametrization
from models.config import ModelConfig, PyTree

SUFFIXES = ('_lora_a', '_lora_b')


def is_adapter(path: tuple) -> bool:
  """Whether a flattened param path (tuple of names) is a LoRA leaf."""
  return str(path[-1]).endswith(SUFFIXES)


def base_config(cfg: ModelConfig) -> ModelConfig:
  """The model without adapters (what a base checkpoint holds, what a merge gives)."""
  return cfg.replace(lora_rank=0)


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


def merge(cfg: ModelConfig, params: PyTree) -> PyTree:
  """The base params with every adapter folded in (W + A·B·scale), for base_config(cfg)."""
  flat = traverse_util.flatten_dict(params)
  out = {k: v for k, v in flat.items() if not is_adapter(k)}
  for k in flat:
    if str(k[-1]).endswith('_lora_a'):
      kernel = k[:-1] + (str(k[-1])[: -len('_lora_a')],)
      b = flat[k[:-1] + (kernel[-1] + '_lora_b',)]
      out[kernel] = out[kernel] + delta(cfg, out[kernel], flat[k], b)
  return traverse_util.unflatten_dict(out)
