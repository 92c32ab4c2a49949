"""LoRA through the parameter table: adapters on the kernels LORA_TARGETS names by logical axes,
stacked over layers like their kernels; at init the base's logits; merged = unmerged; a LoRA run
from a pretrained workdir changes only the adapters and keeps no optimizer state for the frozen
base; sharded like their kernels; bad settings named in one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import models
from models import lora, parametrization
from models.config import ModelConfig
from train import init_from, loop, validation
from train import optimizer as optim

CFG = ModelConfig(
  vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, dtype='float32'
)
TOKENS = jnp.arange(32).reshape(2, 16) % 64


def _flat(tree):
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize('mlp', ['gelu', 'swiglu'])
def test_adapters_by_logical_axes_and_zero_update_at_init(mlp):
  """rank 4 on every target: A [layers, fan_in..., 4], B [layers, 4, fan_out...] beside each
  target kernel, axes ending / starting with 'lora'; B = 0, so the logits are the base's."""
  cfg = CFG.replace(lora_rank=4, mlp=mlp, positions='rope' if mlp == 'swiglu' else 'learned')
  params = models.init(cfg, jax.random.key(0))
  flat, axes = _flat(params), _flat(models.logical_axes(cfg))
  kernels = {k[: -len('_lora_a')] for k in flat if k.endswith('_lora_a')}
  names = {'query', 'key', 'value', 'out', 'wi', 'wo'} | ({'wg'} if mlp == 'swiglu' else set())
  assert {k.split('/')[-1] for k in kernels} == names
  for k in kernels:
    a, b, w = flat[k + '_lora_a'], flat[k + '_lora_b'], flat[k]
    assert a.shape[0] == b.shape[0] == w.shape[0] == 2 and a.shape[-1] == b.shape[1] == 4
    assert tuple(axes[k + '_lora_a'])[-1] == 'lora' and tuple(axes[k + '_lora_b'])[1] == 'lora'
    assert np.all(b == 0) and float(jnp.std(a)) > 0
  base, adapters = lora.split(params)
  assert (
    _flat(base).keys()
    == _flat(
      models.init(CFG.replace(mlp=cfg.mlp, positions=cfg.positions), jax.random.key(0))
    ).keys()
  )
  np.testing.assert_allclose(
    models.logits(cfg, params, TOKENS),
    models.logits(lora.base_config(cfg), base, TOKENS),
    atol=1e-6,
  )
  trainable = _flat(models.trainable(cfg))
  assert all(trainable[k] == lora.is_adapter((k,)) for k in trainable)


def test_targets_rank_scale_and_merge():
  """Only the chosen targets get adapters; after training-like changes the merged base gives the
  same logits as the adapters (alpha / r, and rsLoRA's alpha / √r)."""
  cfg = CFG.replace(lora_rank=2, lora_targets=('query', 'mlp_out'), lora_alpha=8.0)
  params = models.init(cfg, jax.random.key(1))
  adapters = {k for k in _flat(params) if lora.is_adapter((k,))}
  assert {k.split('/')[-1] for k in adapters} == {
    'query_lora_a',
    'query_lora_b',
    'wo_lora_a',
    'wo_lora_b',
  }
  assert parametrization.lora_scale(cfg) == 4.0
  assert parametrization.lora_scale(cfg.replace(lora_rslora=True)) == pytest.approx(8 / 2**0.5)
  for c in (cfg, cfg.replace(lora_rslora=True)):
    noisy = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), params)
    merged = lora.merge(c, noisy)
    assert _flat(merged).keys() == _flat(lora.split(noisy)[0]).keys()
    got, want = models.logits(c, noisy, TOKENS), models.logits(lora.base_config(c), merged, TOKENS)
    assert (
      float(jnp.abs(got - models.logits(lora.base_config(c), lora.split(noisy)[0], TOKENS)).max())
      > 1e-2
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_frozen_params_have_no_optimizer_state():
  """The optimizer keeps Adam moments for the adapters only; frozen params get a zero update
  whatever their gradient; the adapters' lr follows the table (LoRA+: B × lora_lr_ratio)."""
  cfg = CFG.replace(lora_rank=2, lora_lr_ratio=4.0)
  params = models.init(cfg, jax.random.key(0))
  opt = validation.derive(_config(cfg, **{'optimizer.warmup_steps': 0}), 8).config.optimizer
  tx = optim.make_optimizer(opt, 10, cfg)
  state = tx.init(params)
  adapter_size = sum(v.size for k, v in _flat(params).items() if lora.is_adapter((k,)))
  moments = sum(x.size for x in jax.tree.leaves(state) if x.ndim)
  assert moments == 2 * adapter_size
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  for k, u in _flat(updates).items():
    assert bool(jnp.any(u != 0)) == lora.is_adapter((k,)), k
  lr = _flat(models.param_scales(cfg, 'lr'))
  assert {v for k, v in lr.items() if k.endswith('_lora_b')} == {4.0}
  assert {v for k, v in lr.items() if k.endswith('_lora_a')} == {1.0}


def _config(model: ModelConfig, **overrides):
  from configs import base

  c = base.get_config()
  c.model.update({k: v for k, v in model.__dict__.items()})
  c.data.seq_len = model.max_len
  for key, value in overrides.items():
    section, name = key.split('.')
    c[section][name] = value
  return c


def test_lora_run_from_a_pretrained_workdir_trains_only_adapters(tiny_config, tmp_path):
  """A 1-step pre-training run, then LoRA (init_from it) for 4 steps on the 8-device test mesh:
  the base params of the LoRA checkpoint equal the pretrained ones bit for bit, every adapter B
  moved off zero."""
  shape = {'model.n_layers': 1}
  pre = str(tmp_path / 'pre')
  loop.run(tiny_config(shape), pre, stop_after=1)
  config = tiny_config({**shape, 'init_from': pre, 'model.lora_rank': 4, 'optimizer.lr': 1e-2})
  out = loop.run(config, str(tmp_path / 'lora'), init_params_fn=init_from.params_fn(config))
  assert np.isfinite(out['train/loss']) and np.isfinite(out['eval/loss'])
  _, pre_params = _load(pre)
  _, lora_params = _load(str(tmp_path / 'lora'))
  base, adapters = lora.split(lora_params)
  for k, v in _flat(pre_params).items():
    np.testing.assert_array_equal(_flat(base)[k], v, err_msg=k)
  assert all(float(jnp.abs(v).max()) > 0 for k, v in _flat(adapters).items() if k.endswith('_b'))


def _load(workdir):
  cfg = init_from.workdir_model_config(workdir)
  return init_from.load_params(workdir, cfg)


@pytest.mark.parametrize(
  'overrides,needle',
  [
    ({'lora_rank': -1}, 'config.model.lora_rank must be >= 0'),
    ({'lora_rank': 2, 'lora_targets': ('query', 'ffn')}, 'config.model.lora_targets'),
    ({'lora_rank': 2, 'lora_lr_ratio': 0.0}, 'config.model.lora_lr_ratio must be > 0'),
  ],
)
def test_bad_lora_settings_are_one_line(overrides, needle):
  c = _config(CFG.replace(**overrides))
  with pytest.raises(ValueError, match=needle.replace('.', r'\.')) as e:
    validation.derive(c, jax.device_count())
  assert '\n' not in str(e.value)
