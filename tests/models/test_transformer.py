"""Model: causality, shapes and dtypes for both families; scan/remat do not change the math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LLAMA_BLOCK

import models
from models import ModelConfig

GPT2 = ModelConfig(vocab_size=67, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)
LLAMA = GPT2.replace(**LLAMA_BLOCK, n_kv_heads=2, d_ff=48, tie_embeddings=False)
FAMILIES = {'gpt2': GPT2, 'llama': LLAMA}


@pytest.fixture(params=list(FAMILIES), scope='module')
def family(request):
  cfg = FAMILIES[request.param]
  return cfg, models.init(cfg, jax.random.key(0))


def _tokens(cfg, b=2, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (b, cfg.max_len)))


def test_shapes_and_dtypes(family):
  cfg, params = family
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  for dtype in ('float32', 'bfloat16'):
    out = models.logits(cfg.replace(dtype=dtype), params, _tokens(cfg))
    assert out.shape == (2, cfg.max_len, cfg.vocab_size) and out.dtype == jnp.float32


def test_causality(family):
  """Changing token t never changes the logits at positions < t."""
  cfg, params = family
  tokens = _tokens(cfg)
  base = models.logits(cfg, params, tokens)
  for t in (1, cfg.max_len // 2, cfg.max_len - 1):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
    out = models.logits(cfg, params, changed)
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert not np.allclose(out[:, t:], base[:, t:])


def test_logical_axes_cover_every_param(family):
  cfg, params = family
  specs = models.logical_axes(cfg)
  assert jax.tree.structure(params) == jax.tree.structure(
    specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )
  for p, spec in zip(
    jax.tree.leaves(params),
    jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
  ):
    assert len(spec) == p.ndim and all(a is not None for a in spec)


def test_scan_and_remat_match_unrolled(family):
  cfg, params = family
  tokens = _tokens(cfg)
  ref = models.logits(cfg, params, tokens)
  unrolled = {k: v for k, v in params.items() if k != 'layers'}
  for i in range(cfg.n_layers):
    unrolled[f'layer_{i}'] = jax.tree.map(lambda x, i=i: x[i], params['layers'])
  out = models.logits(cfg.replace(scan_layers=False), unrolled, tokens)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  for policy in ('full', 'dots'):
    np.testing.assert_allclose(
      models.logits(cfg.replace(remat=policy), params, tokens), ref, atol=1e-5
    )


def test_gqa_equals_mha_with_repeated_kv_heads():
  """Grouped-query attention == MHA whose K/V heads are copies within each group."""
  cfg = LLAMA
  params = models.init(cfg, jax.random.key(1))
  mha = cfg.replace(n_kv_heads=None)
  group = cfg.n_heads // cfg.n_kv_heads
  p2 = jax.tree.map(lambda x: x, params)
  for name in ('key', 'value'):
    p2['layers']['attn'][name] = jnp.repeat(params['layers']['attn'][name], group, axis=2)
  tokens = _tokens(cfg)
  np.testing.assert_allclose(
    models.logits(mha, p2, tokens), models.logits(cfg, params, tokens), atol=1e-5
  )
