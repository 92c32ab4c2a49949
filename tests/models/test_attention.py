"""The attention switch (models/attention.py): every kernel equals the XLA reference, forward and
gradients; 'auto' picks per backend and falls back where the preferred kernel cannot run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import attention, backend
from models.config import ModelConfig
from train import sharding


def _qkv(B, L, H, K, Dh, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return [jax.random.normal(k, (B, L, n, Dh), dtype) for k, n in zip(keys, (H, K, K))]


def _reference(q, k, v, scale):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=scale, implementation='xla')


def _value_and_grads(f, q, k, v):
  loss = lambda *a: jnp.sum(jnp.sin(f(*a).astype(jnp.float32)))  # noqa: E731
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize(
  'B,L,H,K,Dh,block',
  [(2, 80, 4, 2, 16, 32), (2, 128, 3, 3, 32, 64), (1, 40, 4, 1, 8, 128)],
  ids=['gqa-ragged-last-block', 'mha', 'mqa-one-block'],
)
def test_blockwise_equals_xla(B, L, H, K, Dh, block):
  q, k, v = _qkv(B, L, H, K, Dh)
  want = _reference(q, k, v, 0.3)
  got = jax.jit(attention.blockwise, static_argnums=(3, 4))(q, k, v, 0.3, block)
  np.testing.assert_allclose(got, want, atol=2e-6)
  (lw, gw), (lg, gg) = (
    _value_and_grads(f, q, k, v)
    for f in (lambda *a: _reference(*a, 0.3), lambda *a: attention.blockwise(*a, 0.3, block))
  )
  np.testing.assert_allclose(lg, lw, rtol=1e-5)
  for a, b in zip(gg, gw):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_blockwise_bfloat16_close_to_float32_reference():
  q, k, v = _qkv(2, 128, 4, 2, 32, jnp.bfloat16)
  got = jax.jit(attention.blockwise, static_argnums=(3, 4))(q, k, v, 32**-0.5, 32)
  assert got.dtype == jnp.bfloat16
  want = _reference(*(x.astype(jnp.float32) for x in (q, k, v)), 32**-0.5)
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2)


def test_splash_interpret_equals_xla_on_a_mesh():
  """Pallas splash attention in interpret mode (CPU), under shard_map over a data x tensor mesh
  with the trainer's logical rules: forward and gradients equal the XLA path (GQA)."""
  q, k, v = _qkv(4, 128, 4, 2, 32)
  scale = 32**-0.5
  (lw, gw) = _value_and_grads(lambda *a: _reference(*a, scale), q, k, v)
  mesh = sharding.make_mesh({'data': 4, 'fsdp': 1, 'tensor': 2})
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    got = jax.jit(lambda *a: attention.splash_attention(*a, scale))(q, k, v)
    lg, gg = jax.jit(
      lambda *a: _value_and_grads(lambda *b: attention.splash_attention(*b, scale), *a)
    )(q, k, v)
  np.testing.assert_allclose(got, _reference(q, k, v, scale), atol=2e-5)
  np.testing.assert_allclose(lg, lw, rtol=1e-5)
  for a, b in zip(gg, gw):
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize(
  'platform,overrides,length,want',
  [
    ('cpu', {}, 256, 'blockwise'),
    ('gpu', {'dtype': 'bfloat16'}, 256, 'cudnn'),
    ('gpu', {'dtype': 'float32'}, 256, 'xla'),  # cuDNN flash has no float32 path.
    ('gpu', {'dtype': 'bfloat16', 'd_model': 1024, 'n_heads': 4}, 256, 'xla'),  # head dim 256.
    ('tpu', {}, 1024, 'splash'),
    ('tpu', {}, 200, 'xla'),  # splash blocks are multiples of 128.
    ('gpu', {'attention_impl': 'blockwise'}, 256, 'blockwise'),  # an explicit choice is kept.
  ],
)
def test_auto_picks_per_backend_with_fallbacks(platform, overrides, length, want):
  cfg = ModelConfig(**overrides)
  assert attention.resolve(cfg, length, backend.BACKENDS[platform]) == want


def test_model_logits_same_for_every_kernel_and_unroll():
  """The whole model: 'auto' (blockwise, layer scan unrolled on CPU), 'splash' (interpret) and the
  per-layer loop give the XLA path's logits from the same params."""
  cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_len=128)
  cfg = cfg.replace(positions='rope', attention_block=32)
  params = models.init(cfg, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 128), 0, cfg.vocab_size)
  want = models.logits(cfg.replace(attention_impl='xla', scan_unroll=1), params, tokens)
  for variant in (
    {},
    {'attention_impl': 'splash'},
    {'scan_unroll': 2},
    {'attention_impl': 'xla', 'scan_unroll': 1},
  ):
    got = models.logits(cfg.replace(**variant), params, tokens)
    np.testing.assert_allclose(got, want, atol=5e-5, err_msg=str(variant))


def test_xla_env_adds_backend_flags_and_keeps_the_users():
  env = backend.xla_env(
    {'XLA_FLAGS': '--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/d'}
  )
  assert env['XLA_FLAGS'].split() == [
    '--xla_gpu_enable_latency_hiding_scheduler=false',
    '--xla_dump_to=/tmp/d',
  ]
  assert '--xla_tpu_enable_async_collective_fusion=true' in env['LIBTPU_INIT_ARGS'].split()
  assert backend.xla_env({})['XLA_FLAGS'] == '--xla_gpu_enable_latency_hiding_scheduler=true'
