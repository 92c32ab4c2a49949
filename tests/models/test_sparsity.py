"""Weight sparsity: magnitude masks (global / layer, unstructured / N:M), the cubic schedule, masks
kept by the optimizer (AdamW, μP scales), a gradual run through the loop with exact resume."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from configs import base, schema
from models import parametrization
from models import sparsity as S
from train import checkpoint, context, loop, validation
from train import optimizer as optim

TINY = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32)
# One compile per call rather than one per eager op.
masks_of = jax.jit(S.magnitude_masks, static_argnames=('cfg', 'scope', 'pattern'))


def _cfg(**kw):
  c = base.get_config().model
  c.update(**TINY, **kw)
  return models.ModelConfig.make(c)


def _leaves(cfg, tree):
  """(logical axes, leaf) of every compressible leaf."""
  return [
    (a, x)
    for a, x in zip(S.leaf_axes(cfg), jax.tree.leaves(tree))
    if parametrization.compressible(a)
  ]


def _fan_in_groups(axes, x, m):
  """x with the fan-in axes last, flattened, in groups of m: [rest..., fan_in / m, m]."""
  fan_in, _ = parametrization.split_axes(axes)
  idx = [i for i, a in enumerate(axes) if a != 'layers'][: len(fan_in)]
  rest = [i for i in range(len(axes)) if i not in idx]
  f = math.prod(x.shape[i] for i in idx)
  return np.transpose(np.asarray(x), rest + idx).reshape(-1, f // m, m)


@pytest.mark.parametrize('sparsity', [0.3, 0.75])
def test_mask_fractions_global_and_layer(sparsity):
  cfg = _cfg()
  params = models.init(cfg, jax.random.key(0))
  total = sum(x.size for _, x in _leaves(cfg, params))
  masks = masks_of(cfg, params, sparsity, scope='global')
  kept = sum(int(m.sum()) for _, m in _leaves(cfg, masks))
  assert abs(kept - (1 - sparsity) * total) <= 1
  # Global: everything kept is at least as large as anything pruned.
  w = np.concatenate([np.abs(np.asarray(x)).ravel() for _, x in _leaves(cfg, params)])
  m = np.concatenate([np.asarray(x).ravel() for _, x in _leaves(cfg, masks)])
  assert w[m].min() >= w[~m].max()
  dense = [np.asarray(m).all() for a, m in zip(S.leaf_axes(cfg), jax.tree.leaves(masks))]
  assert sum(not d for d in dense) == len(_leaves(cfg, masks)) == 6  # q, k, v, out, wi, wo.
  layer = masks_of(cfg, params, sparsity, scope='layer')
  for axes, m in _leaves(cfg, layer):
    assert axes[0] == 'layers'
    for per_layer in np.asarray(m):
      assert abs(per_layer.sum() - (1 - sparsity) * per_layer.size) <= 1
  pruned = S.apply(params, layer)
  for p, q, mk in zip(*(jax.tree.leaves(t) for t in (params, pruned, layer))):
    np.testing.assert_array_equal(np.asarray(q), np.where(np.asarray(mk), p, 0.0))
  assert abs(float(S.density(cfg, pruned)) - (1 - sparsity)) < 1e-3  # one weight per layer
  assert S.report(cfg, pruned)['total'] == pytest.approx(1 - sparsity, abs=1e-3)


def test_nm_pattern_holds_along_the_fan_in():
  cfg = _cfg()
  params = models.init(cfg, jax.random.key(1))
  masks = masks_of(cfg, params, 0.9, pattern='2:4')  # 0.9 is ignored: 1 - 2/4.
  pruned = S.apply(params, masks)
  trees = [_leaves(cfg, t) for t in (params, masks, pruned)]
  for (axes, w), (_, m), (_, q) in zip(*trees):
    g_w, g_m = np.abs(_fan_in_groups(axes, w, 4)), _fan_in_groups(axes, m, 4)
    assert (g_m.sum(-1) == 2).all(), axes
    assert (np.where(g_m, g_w, np.inf).min(-1) >= np.where(g_m, -np.inf, g_w).max(-1)).all()
    np.testing.assert_array_equal(np.asarray(q), np.where(np.asarray(m), w, 0.0))
  query = params['layers']['attn']['query']  # [layers, embed, heads, head_dim]: fan-in embed.
  qm = np.asarray(masks['layers']['attn']['query'])
  assert (qm.reshape(2, 8, 4, 4, 8).sum(2) == 2).all()
  assert query.shape == qm.shape
  assert float(S.density(cfg, masks)) == 0.5
  with pytest.raises(ValueError, match='5:4'):
    S.parse_pattern('5:4')


def test_cubic_schedule():
  s = lambda t: float(S.cubic(t, 10, 20, 0.8))
  assert s(0) == s(10) == 0.0
  assert s(15) == pytest.approx(0.8 * (1 - 0.5**3))
  assert s(20) == s(30) == pytest.approx(0.8)
  assert float(S.cubic(15, 10, 20, 0.8, initial=0.2)) == pytest.approx(0.8 - 0.6 * 0.125)
  assert [float(S.cubic(t, 5, 5, 0.5)) for t in (4, 5, 6)] == [0.0, 0.5, 0.5]


def _adamw_steps(cfg, sp, n=7):
  """(params, optimizer state) after each of n AdamW steps on random gradients with sparsity `sp`."""
  opt = schema.OptimizerConfig(lr=1e-2, warmup_steps=0, weight_decay=0.1, schedule='constant')
  tx = optim.make_optimizer(opt, 10, cfg, sp)
  params = models.init(cfg, jax.random.key(0))
  state = tx.init(params)

  @jax.jit
  def step(params, state, key):
    grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
    updates, state = tx.update(grads, state, params)
    return jax.tree.map(jnp.add, params, updates), state

  out = []
  for i in range(n):
    params, state = step(params, state, jax.random.key(i))
    out.append((params, state))
  return out


@pytest.mark.parametrize('parametrization_,scope', [('sp', 'global'), ('mup', 'layer')])
def test_pruned_weights_stay_zero_under_adamw(parametrization_, scope):
  extra = {'base_d_model': 16} if parametrization_ == 'mup' else {}
  cfg = _cfg(parametrization=parametrization_, **extra)
  sp = schema.SparsityConfig(target=0.6, scope=scope, begin_step=2, end_step=4, every=1)
  steps = _adamw_steps(cfg, sp)
  for i, (_, state) in enumerate(steps):
    level = float(optim.sparsity_metrics(state)['train/sparsity'])
    assert level == pytest.approx(float(S.cubic(i + 1, 2, 4, 0.6)), abs=1e-3)
  zeros = [np.asarray(x) == 0 for _, x in _leaves(cfg, steps[3][0])]
  params, state = steps[-1]
  masks = next(s for s in state if isinstance(s, optim.SparsityState)).masks
  for z, (_, p), (_, m) in zip(zeros, _leaves(cfg, params), _leaves(cfg, masks)):
    np.testing.assert_array_equal(np.asarray(p) == 0, z)  # the same zeros 3 AdamW steps later.
    np.testing.assert_array_equal(np.asarray(m) == 0, z)
  assert 1 - float(S.density(cfg, params)) == pytest.approx(0.6, abs=1e-3)
  dense = [x for a, x in zip(S.leaf_axes(cfg), jax.tree.leaves(params)) if a[-1] == 'norm']
  assert all((np.asarray(x) != 0).all() for x in dense)


def test_nm_pattern_is_kept_by_the_optimizer():
  """Trained 2:4: the mask is chosen at begin_step from the trained weights, 2 of every 4 along the
  fan-in; AdamW then keeps exactly those zeros (pruned weights stay zero, so the re-masks up to
  end_step keep the same choice)."""
  cfg = _cfg()
  sp = schema.SparsityConfig(target=0.5, pattern='2:4', begin_step=2, end_step=4, every=1)
  seen = [[np.asarray(x) == 0 for _, x in _leaves(cfg, p)] for p, _ in _adamw_steps(cfg, sp)]
  assert not any(z.any() for z in seen[0])  # step 1: dense.
  for z2, z7, (axes, _) in zip(seen[1], seen[6], _leaves(cfg, models.param_shapes(cfg))):
    np.testing.assert_array_equal(z2, z7)
    assert (_fan_in_groups(axes, ~z7, 4).sum(-1) == 2).all(), axes


def _restore(workdir, config):
  r = context.setup(validation.derive(config), with_data=False)
  mngr = checkpoint.manager(workdir, r.config.train)
  state, _ = checkpoint.restore(mngr, mngr.latest_step(), context.abstract_state(r))
  return int(state.step), jax.device_get(state.params), jax.device_get(state.opt_state)


def test_gradual_run_reaches_target_and_resumes_bitwise(tiny_config, tmp_path):
  """6 steps on a (data 2, fsdp 2, tensor 2) mesh, masks at steps 2, 4, 6 (cubic to 0.5); stopped
  at 4 (mid-ramp) and resumed: the final params and optimizer state equal the straight run's."""
  over = {'mesh.fsdp': 2, 'mesh.tensor': 2, 'train.num_steps': 6, 'train.eval_every': 6}
  sp = {'target': 0.5, 'begin_step': 2, 'end_step': 6, 'every': 2}
  config = tiny_config({**over, **{f'sparsity.{k}': v for k, v in sp.items()}})
  r = context.setup(validation.derive(config), with_data=False)
  sp_shardings = next(s for s in r.state_shardings.opt_state if isinstance(s, optim.SparsityState))
  assert jax.tree.leaves(sp_shardings.masks) == jax.tree.leaves(r.state_shardings.params)
  cfg = r.derived.model
  straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
  loop.run(validation.derive(config), straight)
  loop.run(validation.derive(config), split, stop_after=4)
  step, params, opt_state = _restore(split, config)
  assert step == 4
  assert 1 - float(S.density(cfg, params)) == pytest.approx(0.5 * (1 - 0.5**3), abs=1e-3)
  masks = next(s for s in opt_state if isinstance(s, optim.SparsityState)).masks
  for (_, p), (_, m) in zip(_leaves(cfg, params), _leaves(cfg, masks)):
    np.testing.assert_array_equal(np.asarray(p) == 0, np.asarray(m) == 0)
  loop.run(validation.derive(config), split)
  (s1, p1, o1), (s2, p2, o2) = _restore(straight, config), _restore(split, config)
  assert s1 == s2 == 6
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  jax.tree.map(np.testing.assert_array_equal, o1, o2)
  assert 1 - float(S.density(cfg, p1)) == pytest.approx(0.5, abs=1e-3)
  rows = [json.loads(line) for line in open(os.path.join(straight, 'metrics.jsonl'))]
  assert rows[-1]['step'] == 6 and rows[-1]['train/sparsity'] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(
  'key,value,match',
  [
    ('target', 1.0, 'config.sparsity.target'),
    ('pattern', '5:4', 'config.sparsity.pattern'),
    ('pattern', '2:3', 'config.sparsity.pattern.*d_model'),
    ('end_step', 1, 'config.sparsity.end_step'),
    ('begin_step', 0, 'config.sparsity.begin_step'),
    ('end_step', 99, 'config.sparsity.end_step'),
  ],
)
def test_bad_config_is_one_line_naming_the_field(tiny_config, key, value, match):
  config = tiny_config({'sparsity.target': 0.5, 'sparsity.begin_step': 2, 'sparsity.end_step': 3})
  config.sparsity[key] = value
  with pytest.raises(ValueError, match=match) as e:
    validation.derive(config, 8)
  assert '\n' not in str(e.value)


def test_sparsity_with_lora_is_refused(tiny_config):
  config = tiny_config({'sparsity.target': 0.5, 'sparsity.begin_step': 1, 'sparsity.end_step': 1})
  config.model.lora_rank = 2
  with pytest.raises(ValueError, match='config.sparsity.target.*LoRA'):
    validation.derive(config, 8)


def test_memory_estimate_counts_the_masks():
  """train/memory.py: the sparsity masks (uint8, one per float32 param) are optimizer-state bytes."""
  from train import memory

  m = models.ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32)
  mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}
  dense, sparse = (memory.estimate(m, mesh, 8, 32, sparse=s) for s in (False, True))
  assert sparse.optimizer - dense.optimizer == memory.param_bytes(m, mesh) // 4
