"""Config validation: each impossible or malformed config fails before compile, naming the field."""

import ml_collections
import pytest

from configs import base
from train import validation


def _err(config, devices=8, processes=1):
  with pytest.raises(ValueError) as e:
    validation.derive(config, devices, processes)
  return str(e.value)


def test_valid_base_and_derived_quantities():
  c = base.get_config()
  c.train.update(global_batch_size=64, grad_accum_steps=2, total_tokens=64 * 256 * 10)
  c.optimizer.warmup_steps = 5
  c.mesh.update(data=-1, fsdp=2, tensor=2)
  d = validation.derive(c, 8)
  assert d.mesh_shape == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert d.num_steps == 10 and d.per_device_batch == 16 and d.micro_batch == 32


@pytest.mark.parametrize(
  'mutate, field',
  [
    (lambda c: c.model.__setitem__('n_heads', 3), 'config.model.n_heads'),
    (lambda c: c.model.update(n_heads=4, n_kv_heads=3), 'config.model.n_kv_heads'),
    (lambda c: c.train.update(global_batch_size=12), 'config.train.global_batch_size'),
    (
      lambda c: c.train.update(global_batch_size=16, grad_accum_steps=4),
      'config.train.global_batch_size',
    ),
    (lambda c: c.mesh.update(data=2, fsdp=2, tensor=1), 'config.mesh'),
    (lambda c: c.mesh.update(data=3, fsdp=-1), 'config.mesh'),
    (lambda c: c.data.update(seq_len=512), 'config.data.seq_len'),
    (lambda c: c.model.update(norm='batchnorm'), 'config.model.norm'),
    (lambda c: c.optimizer.update(schedule='step'), 'config.optimizer.schedule'),
    (lambda c: c.optimizer.update(warmup_steps=5000), 'config.optimizer.warmup_steps'),
    (
      lambda c: c.model.update(attention_impl='cudnn', dtype='float32'),
      'config.model.attention_impl',
    ),
    (lambda c: c.train.update(keep_checkpoints=0), 'config.train.keep_checkpoints'),
    (lambda c: c.train.update(eval_every=0), 'config.train.eval_every'),
    (lambda c: c.train.update(log_every=0), 'config.train.log_every'),
    (lambda c: c.train.update(checkpoint_every=0), 'config.train.checkpoint_every'),
    (lambda c: c.train.update(eval_batches=0), 'config.train.eval_batches'),
    (lambda c: c.data.update(max_documents=-1), 'config.data.max_documents'),
    (lambda c: c.model.update(parametrization='mu'), 'config.model.parametrization'),
    (lambda c: c.model.update(base_d_model=64), 'config.model.base_'),
    (lambda c: c.train.update(loss_scale='static'), 'config.train.loss_scale'),
  ],
)
def test_impossible_combinations(mutate, field):
  c = base.get_config()
  mutate(c)
  assert field in _err(c)


def test_unknown_key_and_wrong_type():
  c = base.get_config()
  c.model.d_modle = 12
  assert 'config.model.d_modle: unknown key' in _err(c)
  c = base.get_config()
  model = c.model.to_dict()
  model['d_model'] = 'wide'  # a config file that builds its own section bypasses ConfigDict typing.
  c.model = ml_collections.ConfigDict(model)
  assert 'config.model.d_model: expected int' in _err(c)


def test_batch_must_split_over_processes():
  c = base.get_config()
  c.train.global_batch_size = 8
  c.mesh.update(data=1, fsdp=1, tensor=1)
  assert 'number of processes' in _err(c, devices=1, processes=3)


def test_shipped_configs_validate():
  """Every shipped model config is consistent (checked on a mesh the size it expects)."""
  import importlib

  for module, args in [
    ('configs.default', [None]),
    ('configs.ablation_mlp', ['gelu', 'swiglu']),
    ('configs.gpt2', ['124m', '350m', '774m', '1.5b']),
    ('configs.llama', ['100m', '1b', '8b']),
  ]:
    mod = importlib.import_module(module)
    for arg in args:
      c = mod.get_config() if arg is None else mod.get_config(arg)
      c.mesh.update(data=-1, fsdp=1, tensor=1)
      validation.derive(c, 8)
