"""Readable output: init_from's one log line (what it loaded), the short summaries of
train.tools.compress / train.tools.export, and a sweep's progress with its ETA."""

import importlib.util
import logging
import os
import re
import types

import jax
import pytest

import models
from models import lora
from train import init_from

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(cfg):
  """The parts of a context.Run that init_from.params_fn reads: the model, its params' shardings."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shardings = jax.tree.map(lambda _: device, models.param_shapes(cfg))
  return types.SimpleNamespace(
    derived=types.SimpleNamespace(model=cfg),
    state_shardings=types.SimpleNamespace(params=shardings),
  )


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_init_from_logs_source_step_and_params(tiny_config, trained_workdir, caplog):
  """One line: the source, its checkpoint step, the params loaded; with LoRA the adapters too,
  as left at init."""
  config = tiny_config({'init_from': trained_workdir})
  cfg = init_from.workdir_model_config(trained_workdir)
  n = _count(models.param_shapes(cfg))
  with caplog.at_level(logging.INFO):
    params = init_from.params_fn(config)(_fake_run(cfg))
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('init_from:')]
  assert _count(params) == n
  assert lines == [
    f'init_from: loaded {n:,} params ({len(jax.tree.leaves(params))} tensors) from '
    f'{trained_workdir} (checkpoint step 4)'
  ]
  caplog.clear()
  lora_config = tiny_config({'init_from': trained_workdir, 'model.lora_rank': 2})
  lora_cfg = cfg.replace(lora_rank=2)
  with caplog.at_level(logging.INFO):
    params = init_from.params_fn(lora_config)(_fake_run(lora_cfg))
  _, adapters = lora.split(params)
  (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith('init_from:')]
  assert f'loaded {n:,} params' in line and '(checkpoint step 4)' in line
  assert line.endswith(
    f'; left at init: {_count(adapters):,} params ({len(jax.tree.leaves(adapters))} tensors) '
    'of the LoRA adapters'
  )
  assert init_from.source_step('hf:/nowhere') == 'HF checkpoint'


def test_compress_summary_is_a_few_lines():
  from train.tools import compress

  record = {
    'source': '/w/src',
    'prune': 'layers:2',
    'sparsity': 0.0,
    'quantize': '',
    'shape': {'layers': 2, 'heads': 4, 'mlp': 32, 'embed': 32},
    'params_before': 1000,
    'params_after': 600,
    'loss_before': 3.0,
    'loss_after': 3.25,
    'wall_s': 2.0,
    'importance': {'mlp': [0.1] * 500},
  }
  text = compress.summary(record, '/w/out')
  assert text.splitlines() == [
    'Compressed /w/src: pruned to layers 2, heads 4, mlp 32, embed 32',
    '  params:    1,000 -> 600 (-40.0%)',
    '  eval loss: 3.0000 -> 3.2500 (+0.2500)',
    '  out:       /w/out in 2.0s (full record: compress.json)',
  ]
  q = {**record, 'prune': '', 'quantize': 'int4', 'group': 64, 'params_after': 1000}
  q.update(bytes_float32=4 * 2**20, bytes_quantized=2**20)
  assert 'quantized to int4 (group 64)' in compress.summary(q, '/w/out')
  assert '  size:      4.00 MiB float32 -> 1.00 MiB (25.0%)' in compress.summary(q, '/w/out')
  s = {**record, 'prune': '', 'sparsity': 0.5, 'pattern': '2:4', 'scope': 'global', 'zeros': 500}
  assert compress.summary(s, '/w/out').startswith(
    'Compressed /w/src: sparsified 50% (2:4, global): 500 weights zero\n'
  )


def _isoflop_tiny():
  spec = importlib.util.spec_from_file_location(
    'isoflop_tiny', os.path.join(REPO, 'configs/sweeps/isoflop_tiny.py')
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  config.sweep.budgets = (5e10,)
  config.sweep.sizes_per_budget = ((4e3, 4.8e3, 6.5e3),)
  return config


def test_sweep_logs_progress_and_an_eta_from_the_flops_left(tmp_path, monkeypatch, caplog):
  """After each member: done / total, elapsed, and the ETA of the FLOPs still to train at the
  seconds per FLOP measured so far (a fake clock: training takes 1 ns per FLOP); a member with a
  checkpoint halfway counts half its FLOPs, a finished one none."""
  from scaling import sweep

  config = _isoflop_tiny()
  config.sweep.member = -1
  a, b, c = sweep.members(config)
  workdir = str(tmp_path)
  ok = {**a.info, 'loss': 2.5, 'bits_per_byte': 3.0, 'wall_s': 1.0, 'status': 'ok'}
  os.makedirs(os.path.join(workdir, a.name))
  sweep.workdir_lib.write_json(
    os.path.join(workdir, a.name, 'result.json'), {**ok, 'config_hash': a.config_hash}
  )
  half = c.info['steps'] // 2
  os.makedirs(os.path.join(workdir, c.name, 'checkpoints', str(half)))
  clock = [1000.0]
  monkeypatch.setattr(sweep, 'time', types.SimpleNamespace(time=lambda: clock[0]))

  def train(m, *args, **kwargs):
    clock[0] += m.info['flops'] * 1e-9
    return {'eval/loss': 2.0, 'eval/bits_per_byte': 3.0}

  monkeypatch.setattr(sweep, '_train', train)
  with caplog.at_level(logging.INFO):
    summary = sweep.run(config, workdir)
  assert summary['ran'] == [b.name, c.name] and summary['skipped'] == [a.name]
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Sweep progress')]
  c_left = c.info['flops'] * (1 - half / c.info['steps'])
  eta = sweep._hms(c_left * 1e-9)
  assert lines[0] == (
    f'Sweep progress: 2/3 members done, {sweep._hms(b.info["flops"] * 1e-9)} elapsed; '
    f'ETA {eta} for 1 more ({c_left:.3g} FLOPs at 1e-09 s/FLOP)'
  )
  assert re.fullmatch(
    r'Sweep progress: 3/3 members done, \S+ elapsed; nothing left to train in this job', lines[1]
  )
  assert len(lines) == 2


@pytest.mark.slow  # (transformers' import and an HF write: ~10 s)
def test_export_prints_a_summary_and_keeps_export_json(trained_workdir, tmp_path, capsys):
  import json

  from train.tools import export

  out = str(tmp_path / 'hf')
  export.main([f'--workdir={trained_workdir}', f'--out={out}'])
  text = capsys.readouterr().out
  record = json.load(open(os.path.join(out, 'export.json')))
  assert (
    record['params_before'] == record['params_after'] > 0 and record['from'] == 'checkpoint step 4'
  )
  assert 'model.safetensors' in record['files'] and 'export.json' not in record['files']
  lines = text.strip().splitlines()
  assert lines[0].startswith(
    f'Exported the model (HF) of {os.path.abspath(trained_workdir)} (checkpoint step 4)'
  )
  assert lines[-1] == f'  out:    {os.path.abspath(out)} (record: export.json)' and len(lines) <= 5


def test_in_loop_lm_eval_scores_are_on_the_step_line():
  from train import metrics

  m = {'train/loss': 2.0, 'eval/loss': 2.5, 'eval/bits_per_byte': 3.6, 'train/lr': 1e-3,
       'train/tokens_per_sec': 1000.0, 'lm_eval/toy_mc/acc': 0.5, 'lm_eval/toy_mc/acc_norm': 0.75}  # fmt: skip
  line = metrics.console_line(10, 20, m, 5.0)
  assert (
    'eval 2.5000 (3.6000 bits/byte) | lm-eval toy_mc/acc 0.5000, toy_mc/acc_norm 0.7500 | lr'
    in line
  )


def test_every_line_of_a_multi_line_log_record_carries_the_time():
  """A table logged as one record (a sweep's plan) keeps the `HH:MM:SS ` prefix on each line."""
  from train import cli

  record = logging.LogRecord('x', logging.INFO, __file__, 1, 'plan:\n a  b\n 1  2', None, None)
  lines = cli.Console().format(record).split('\n')
  assert len(lines) == 3
  assert all(re.match(r'\d\d:\d\d:\d\d ', line) for line in lines)
  assert [line[9:] for line in lines] == ['plan:', ' a  b', ' 1  2']
