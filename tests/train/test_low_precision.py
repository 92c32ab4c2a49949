"""float16 dynamic loss scaling (jmp) and the simulated-fp8 matmul inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from configs import base
from models import transformer
from train import context, loop, validation
from train.step import ScaledTrainState, TrainState, lm_loss, make_train_step

# A loss weight as small as a mean over ~10M tokens: per-token float16 gradients fall below
# float16's smallest subnormal (6e-8) and flush to zero unless the loss is scaled up first.
WEIGHT = 1e-7


def _cfg(dtype):
  m = base.get_model_config()
  m.update(vocab_size=257, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, dtype=dtype)
  return models.ModelConfig.make(m)


def _sgd_delta(dtype, loss_scale_period, init_scale=2.0**15):
  """Param change of one SGD step with lr 1/WEIGHT: minus the gradient the step used, brought
  back to a size that float32 params resolve."""
  cfg = _cfg(dtype)
  params = models.init(cfg, jax.random.key(0))
  tx = optax.sgd(1.0 / WEIGHT)
  loss = lm_loss(cfg)
  weighted = lambda p, b: (lambda l, s: (l * WEIGHT, s))(*loss(p, b))
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  if loss_scale_period:
    state = ScaledTrainState(
      state.step, params, state.opt_state, jnp.float32(init_scale), jnp.zeros((), jnp.int32)
    )
  step = jax.jit(make_train_step(weighted, tx, lambda s: 1.0, 1, loss_scale_period))
  batch = {'tokens': jax.random.randint(jax.random.key(1), (4, 17), 0, 257)}
  new, metrics = step(state, batch)
  delta = jax.tree.map(lambda a, b: np.asarray(a - b, np.float64), new.params, params)
  return np.concatenate([x.ravel() for x in jax.tree.leaves(delta)]), new, metrics


@pytest.mark.slow  # (11 s; float16 with loss scaling by default: test_float16_run_resumes_exactly_...)
def test_float16_gradients_underflow_without_loss_scaling_and_not_with_it():
  ref, _, _ = _sgd_delta('float32', 0)
  unscaled, _, _ = _sgd_delta('float16', 0)
  scaled, state, metrics = _sgd_delta('float16', 2000, init_scale=2.0**22)
  err = lambda x: np.linalg.norm(x - ref) / np.linalg.norm(ref)
  assert np.mean(unscaled == 0) > 0.5 > np.mean(ref == 0)  # most gradients flushed to zero.
  assert err(unscaled) > 0.5
  assert err(scaled) < 0.02, err(scaled)
  assert float(metrics['train/skipped']) == 0.0 and float(state.loss_scale) == 2.0**22


def test_overflow_skips_the_step_and_halves_the_scale():
  _, state, metrics = _sgd_delta('float16', 2000, init_scale=2.0**100)
  params = models.init(_cfg('float16'), jax.random.key(0))
  assert float(metrics['train/skipped']) == 1.0
  assert float(state.loss_scale) == 2.0**99
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)  # non-finite gradients never reach the params.


def test_float16_run_resumes_exactly_with_its_loss_scale(tiny_config, tmp_path):
  """The loss scale is part of the checkpoint: a run stopped after step 2 and resumed ends where
  an uninterrupted one does (period 1: the scale moves every step, up when finite, down on overflow)."""
  c = tiny_config({'model.dtype': 'float16', 'train.loss_scale_period': 1})
  assert isinstance(context.setup(validation.derive(c)).state_shardings, ScaledTrainState)
  whole = loop.run(validation.derive(c), str(tmp_path / 'whole'))
  loop.run(validation.derive(c), str(tmp_path / 'resumed'), stop_after=2)
  resumed = loop.run(validation.derive(c), str(tmp_path / 'resumed'))
  assert np.isfinite(whole['eval/loss'])
  for key in ('train/loss_scale', 'train/loss', 'eval/loss', 'train/skipped'):
    assert whole[key] == resumed[key], key


def test_fp8_rounds_to_e4m3_with_straight_through_gradient():
  x = jnp.array([0.3, -1000.0, 1e-5, 3.14159, 448.0])
  q = transformer.fp8(x)
  np.testing.assert_array_equal(q, x.astype(jnp.float8_e4m3fn).astype(jnp.float32).at[1].set(-448))
  np.testing.assert_array_equal(jax.grad(lambda v: (transformer.fp8(v) * 2).sum())(x), 2.0)
  cfg = _cfg('float32')
  p = models.init(cfg, jax.random.key(0))
  t = jnp.arange(16).reshape(1, 16)
  exact, low = models.logits(cfg, p, t), models.logits(cfg.replace(fp8=True), p, t)
  assert 0 < float(jnp.abs(exact - low).max()) < 0.5
