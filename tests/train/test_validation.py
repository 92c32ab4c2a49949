"""Config validation: each impossible or malformed config fails before compile, naming the field."""

import ml_collections
import pytest
from helpers import main_cmd, run

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
      d = validation.derive(c, 8)  # a ValueError naming the field if anything is inconsistent.
      name = f'{module}:{arg}'
      assert d.mesh_shape == {'data': 8, 'fsdp': 1, 'tensor': 1}, name
      shape = ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'd_ff', 'max_len')
      assert all(getattr(d.model, k) == c.model[k] for k in shape), name
      assert d.num_steps > 0 and d.per_device_batch * 8 == c.train.global_batch_size, name


@pytest.mark.parametrize(
  'section, key, value, message',
  [
    ('optimizer', 'lr', float('nan'), 'config.optimizer.lr must be finite, got nan'),
    ('optimizer', 'lr', 0.0, 'config.optimizer.lr must be positive, got 0.0'),
    ('optimizer', 'eps', float('inf'), 'config.optimizer.eps must be finite, got inf'),
    ('optimizer', 'b2', 2.0, 'config.optimizer.b2 must be in [0, 1), got 2.0'),
    ('optimizer', 'b1', -0.1, 'config.optimizer.b1 must be in [0, 1), got -0.1'),
    ('optimizer', 'min_lr_ratio', -1.0, 'config.optimizer.min_lr_ratio must be in [0, 1], got'),
    ('optimizer', 'decay_fraction', 1.5, 'config.optimizer.decay_fraction must be in [0, 1]'),
    ('optimizer', 'weight_decay', -0.1, 'config.optimizer.weight_decay must be >= 0, got -0.1'),
    ('optimizer', 'grad_clip', float('nan'), 'config.optimizer.grad_clip must be finite'),
    ('train', 'spike_factor', float('nan'), 'config.train.spike_factor must be finite, got nan'),
    ('train', 'loss_scale_init', float('inf'), 'config.train.loss_scale_init (inf)'),
    ('train', 'loss_scale_init', 0.0, 'config.train.loss_scale_init (0.0)'),
    ('data', 'read_threads', 10**6, 'config.data.read_threads must be <= 256'),
    ('data', 'read_threads', -1, 'config.data.read_threads must be >= 0'),
    ('model', 'rope_theta', float('nan'), 'config.model.rope_theta must be finite, got nan'),
    ('model', 'norm_eps', 0.0, 'config.model.norm_eps must be positive'),
    ('lm_eval', 'batch_size', 0, 'config.lm_eval.batch_size must be positive'),
    ('distributed', 'num_processes', -2, 'config.distributed.num_processes must be >= 0'),
    ('mesh', 'fsdp', 0, 'config.mesh: axis sizes must be positive or -1'),
  ],
)
def test_numeric_fields_finite_and_in_range(section, key, value, message):
  """Every numeric field is checked for finiteness and range, in one line naming it."""
  c = base.get_config()
  c[section][key] = value
  err = _err(c)
  assert message in err and '\n' not in err


def test_numeric_faults_stop_main_before_anything_is_written(tmp_path):
  """Through main.py as a user would: one `error:` line, exit 2, the workdir left untouched."""
  workdir = tmp_path / 'w'
  cases = [
    ('--config.optimizer.lr=nan', 'config.optimizer.lr must be finite'),
    ('--config.data.read_threads=1000000', 'config.data.read_threads must be <= 256'),
  ]
  for flag, message in cases:
    proc = run(main_cmd(workdir, flag), timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not workdir.exists() or not any(workdir.iterdir())


def test_typed_config_parses_once_and_reads_like_the_configdict():
  """derive returns the parsed typed config; it reads like the ConfigDict it came from."""
  c = base.get_config()
  d = validation.derive(c, 8)
  typed = d.config
  assert d.model is typed.model and d.distill is None and 'distill' not in typed
  assert typed.train.global_batch_size == c.train.global_batch_size
  assert typed['mesh']['data'] == c.mesh.data and typed.data.data_dir is None
  assert typed.to_dict() == c.to_dict()
  assert validation.derive(typed, 8) == d  # a parsed Config derives the same, unparsed again.


def test_trainers_and_the_model_api_refuse_an_unparsed_config(tmp_path):
  """The config is typed once at the door: a trainer handed a ConfigDict, or a model function a
  dict, is one TypeError saying what to pass; derive defaults to this process's devices."""
  import models
  from train import context, group, loop

  c = base.get_config()
  for call in (
    lambda: loop.run(c, str(tmp_path / 'w')),
    lambda: context.setup(c),
    lambda: group.setup([c], ['']),
  ):
    with pytest.raises(TypeError, match=r'pass validation\.derive\(config\)$'):
      call()
  assert not (tmp_path / 'w').exists()
  d = validation.derive(c)
  with pytest.raises(TypeError, match=r'got ConfigDict: parse it once with ModelConfig\.make'):
    models.param_shapes(c.model)
  with pytest.raises(TypeError, match='got dict'):
    models.init({'d_model': 32}, None)
  assert models.param_shapes(d.model) is not None
