"""Train step: sharded == single device, gradient accumulation == big batch, bf16 trains."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LLAMA_BLOCK
from jax.sharding import PartitionSpec as P

import models
from configs import base
from models import ModelConfig
from train import optimizer as optim
from train import sharding
from train.step import TrainState, accumulate_grads, lm_loss, make_train_step

_GPT2 = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)
CFGS = {'gpt2': _GPT2, 'llama': _GPT2.replace(**LLAMA_BLOCK, n_kv_heads=2, tie_embeddings=False)}


def _batch(cfg, b=8, seed=0):
  rng = np.random.default_rng(seed)
  return {'tokens': jnp.asarray(rng.integers(0, cfg.vocab_size, (b, cfg.max_len + 1)), jnp.int32)}


def _loss_and_grads(cfg, params, batch, k=1):
  grads, sums = accumulate_grads(lm_loss(cfg), params, batch, k)
  return sums['loss'] / sums['tokens'], grads


@pytest.mark.parametrize('family', list(CFGS))
def test_sharded_matches_single_device(family):
  """A (data=2, fsdp=2, tensor=2) mesh gives the single-device loss and gradients."""
  cfg = CFGS[family]
  params = models.init(cfg, jax.random.key(0))
  batch = _batch(cfg)
  single = jax.jit(_loss_and_grads, static_argnums=0)(cfg, params, batch)

  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  shardings = sharding.tree_shardings(models.logical_axes(cfg), params, mesh)
  # Every matrix is really split (nothing silently replicated by the divisibility fallback).
  assert shardings['layers']['mlp']['wi'].spec == P(None, 'fsdp', 'tensor')
  assert shardings['layers']['attn']['key'].spec == P(None, 'fsdp', 'tensor', None)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    fn = jax.jit(
      lambda p, b: _loss_and_grads(cfg, p, b),
      in_shardings=(shardings, sharding.batch_sharding(mesh)),
      out_shardings=(sharding.replicated(mesh), shardings),
    )
    sharded = fn(
      jax.device_put(params, shardings), jax.device_put(batch, sharding.batch_sharding(mesh))
    )
  assert sharded[1]['layers']['mlp']['wi'].sharding == shardings['layers']['mlp']['wi']
  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), sharded[1], single[1]
  )


@pytest.mark.parametrize('k', [2, pytest.param(4, marks=pytest.mark.slow)])
def test_grad_accumulation_equals_big_batch(k):
  """k microbatches (scan, token-weighted) == one k-times-larger batch, and so does the update."""
  cfg = CFGS['llama']
  params = models.init(cfg, jax.random.key(0))
  batch = _batch(cfg, b=8)
  # Mask some targets so microbatches carry different token counts (token weighting matters).
  batch['tokens'] = batch['tokens'].at[:3, 5:].set(-1).at[:3, 0].set(1)
  loss1, g1 = jax.jit(_loss_and_grads, static_argnums=(0, 3))(cfg, params, batch, 1)
  lossk, gk = jax.jit(_loss_and_grads, static_argnums=(0, 3))(cfg, params, batch, k)
  np.testing.assert_allclose(lossk, loss1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), gk, g1)

  opt = base.get_config().optimizer
  tx = optim.make_optimizer(opt, 10, cfg)
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  steps = [
    jax.jit(make_train_step(lm_loss(cfg), tx, optim.lr_schedule(opt, 10), n)) for n in (1, k)
  ]
  (s1, m1), (sk, mk) = [step(state, batch) for step in steps]
  np.testing.assert_allclose(mk['train/loss'], m1['train/loss'], rtol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sk.params, s1.params
  )


def test_bfloat16_compute_trains_with_float32_master_weights():
  cfg = CFGS['gpt2'].replace(dtype='bfloat16')
  params = models.init(cfg, jax.random.key(0))
  opt = base.get_config().optimizer
  opt.update(lr=3e-3, warmup_steps=2)
  tx = optim.make_optimizer(opt, 30, cfg)
  step = jax.jit(make_train_step(lm_loss(cfg), tx, optim.lr_schedule(opt, 30), 1))
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  # A learnable stream: token t+1 = (token t + 1) mod V.
  start = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 1))
  batch = {'tokens': jnp.asarray((start + np.arange(cfg.max_len + 1)) % cfg.vocab_size)}
  losses = []
  for _ in range(30):
    state, m = step(state, batch)
    losses.append(float(m['train/loss']))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.75 * losses[0] and losses[-1] < min(losses[:5])
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert all(
    x.dtype == jnp.float32
    for x in jax.tree.leaves(state.opt_state)
    if jnp.issubdtype(x.dtype, jnp.floating)
  )


def test_weight_decay_mask_and_schedules():
  params = models.init(CFGS['llama'], jax.random.key(0))
  mask = optim.decay_mask(params, ('norm', 'bias', 'embed'))
  assert not mask['embed'] and mask['unembed']
  assert mask['layers']['attn']['query'] and mask['layers']['mlp']['wo']
  assert not mask['layers']['attn_norm']['scale'] and not mask['final_norm']['scale']
  opt = base.get_config().optimizer
  opt.update(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2)
  for name in ('cosine', 'linear', 'constant', 'wsd'):
    opt.schedule = name
    lr = optim.lr_schedule(opt, 100)
    assert float(lr(0)) == 0.0 and abs(float(lr(10)) - 1.0) < 1e-6
    end = 1.0 if name == 'constant' else 0.1
    assert abs(float(lr(100)) - end) < 1e-6, name
  opt.schedule = 'wsd'
  lr = optim.lr_schedule(opt, 100)
  assert float(lr(79)) == 1.0 and 0.1 < float(lr(90)) < 1.0
