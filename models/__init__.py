"""Decoder-only transformers (GPT-2 and LLaMA families): config, init and forward.

Public API: `init(model_config, rng)`, `logits(model_config, params, tokens)`,
`logical_axes(model_config)`, `generate(model_config, params, prompts, max_new_tokens, ...)`
(KV-cached sampling). Params are plain pytrees of float32 arrays.

Here (no subpackages): the transformer and its attention kernels, its config (the `config.model`
schema) and parametrization table, the loss, KV-cached sampling, LoRA, the compression math
(pruning, sparsity, quantization) and HF / PEFT / compressed-tensors interop. Imports nothing
from train/ or scaling/ (tests/test_code_health.py).
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from models import parametrization, resident_quant
from models.config import ModelConfig, PyTree
from models.generation import generate
from models.transformer import Transformer, head_dim, kv_heads, packed_context


def init(model_config: ModelConfig, rng: jax.Array) -> PyTree:
  """Random float32 params (plain pytree) for `model_config` (jitted per config)."""
  return _init(ModelConfig.expect(model_config), rng)


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: ModelConfig, rng):
  tokens = jnp.zeros((1, min(cfg.max_len, 8)), jnp.int32)
  return nn.unbox(Transformer(cfg).init(rng, tokens)['params'])


def _shapes_only(cfg: ModelConfig) -> ModelConfig:
  """cfg with array values (a member group's traced μP multipliers) at their defaults: the params'
  shapes and axes do not depend on them, and jit's static config must hash."""
  arrays = {
    f.name: f.default
    for f in dataclasses.fields(cfg)
    if isinstance(getattr(cfg, f.name), jax.Array)
  }
  return cfg.replace(**arrays) if arrays else cfg


def logical_axes(model_config: ModelConfig) -> PyTree:
  """Pytree (matching params) of PartitionSpecs of logical axis names, e.g. ('embed', 'mlp')."""
  cfg = _shapes_only(ModelConfig.expect(model_config))
  tokens = jax.ShapeDtypeStruct((1, min(cfg.max_len, 8)), jnp.int32)
  boxed = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), tokens))['params']
  return nn.get_partition_spec(boxed)


def param_shapes(model_config: ModelConfig) -> PyTree:
  """Pytree of ShapeDtypeStructs of the params, without allocating them."""
  cfg = _shapes_only(ModelConfig.expect(model_config))
  return jax.eval_shape(lambda: init(cfg, jax.random.key(0)))


def param_scales(model_config: ModelConfig, field: str) -> PyTree:
  """Pytree (matching params) of one field of the parametrization table, e.g. 'lr' or 'wd'."""
  cfg = ModelConfig.expect(model_config)
  return jax.tree.map(
    lambda spec, s: getattr(parametrization.scales(cfg, tuple(spec), s.shape), field),
    logical_axes(cfg),
    param_shapes(cfg),
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def trainable(model_config: ModelConfig) -> PyTree:
  """Pytree (matching params) of bools: which params train (with LoRA, only the adapters)."""
  cfg = ModelConfig.expect(model_config)
  return jax.tree.map(
    lambda spec: parametrization.trainable(cfg, tuple(spec)),
    logical_axes(cfg),
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def compressible(model_config: ModelConfig) -> PyTree:
  """Pytree (matching params) of bools: the kernels sparsity and weight quantization act on."""
  cfg = ModelConfig.expect(model_config)
  return jax.tree.map(
    lambda spec: parametrization.compressible(tuple(spec)),
    logical_axes(cfg),
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


@functools.partial(jax.jit, static_argnums=0)
def _logits(cfg: ModelConfig, params, tokens_BxL, ctx):
  return Transformer(cfg).apply(resident_quant.variables(params), tokens_BxL, ctx=ctx)


def logits(
  model_config: ModelConfig,
  params: PyTree,
  tokens_BxL: jax.Array,
  segment_ids_BxL: jax.Array | None = None,
  positions_BxL: jax.Array | None = None,
) -> jax.Array:
  """float32 logits [batch, length, vocab] for int tokens [batch, length] (jitted per config);
  rows packed with several examples pass their segment ids and per-segment positions."""
  ctx = None
  if segment_ids_BxL is not None:
    ctx = packed_context(jnp.asarray(segment_ids_BxL), jnp.asarray(positions_BxL))
  return _logits(ModelConfig.expect(model_config), params, tokens_BxL, ctx)


__all__ = [
  'ModelConfig',
  'Transformer',
  'generate',
  'init',
  'logits',
  'logical_axes',
  'param_shapes',
  'param_scales',
  'head_dim',
  'kv_heads',
]
