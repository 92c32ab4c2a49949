"""The μP studies' tools: scaling.transfer over depth and the optimum's curves; the study configs."""

import os

import pytest
from ml_collections import config_flags

from scaling import plan, results, transfer


def _sweep_dir(path, n_layers: int, losses: dict) -> str:
  """A sweep directory as sweeps write it: results.csv and curves.csv (3 evals per member)."""
  os.makedirs(path, exist_ok=True)
  rows, curve = [], []
  for lr, loss in losses.items():
    name = f'L{n_layers}_lr{lr}'
    rows.append({'name': name, 'd_model': 32, 'n_layers': n_layers, 'lr': lr, 'loss': loss})
    for k, tokens in enumerate((100, 200, 300)):
      curve.append({'name': name, 'tokens': tokens, 'loss': loss + 0.1 * (2 - k)})
  results.write_csv(os.path.join(path, 'results.csv'), rows, tuple(rows[0]))
  results.write_csv(os.path.join(path, 'curves.csv'), curve, ('name', 'tokens', 'loss'))
  return os.path.join(path, 'results.csv')


def test_transfer_over_depth_and_the_optimum_curves(tmp_path):
  paths = [
    _sweep_dir(tmp_path / 'L2', 2, {0.01: 2.5, 0.02: 2.3, 0.04: 2.4}),
    _sweep_dir(tmp_path / 'L8', 8, {0.01: 2.2, 0.02: 2.25}),
  ]
  data = transfer.read(paths, ['m', 'm'], axis='n_layers')
  s = transfer.summarize(data['m'])
  assert s['optimal_lr'] == {2: 0.02, 8: 0.01} and s['shift_grid_steps'] == 1
  curves = transfer.optimum_curves(paths, ['m', 'm'], {'m': s}, axis='n_layers')
  assert sorted(curves['m']) == [2, 8]
  (l8,) = curves['m'][8]
  assert l8[:, 0].tolist() == [100, 200, 300] and l8[-1, 1] == pytest.approx(2.2)
  transfer.plot_curves(curves, str(tmp_path / 'c.png'), 'n_layers')
  assert os.path.getsize(tmp_path / 'c.png') > 0
  with pytest.raises(ValueError, match="missing column 'd_ff'"):
    transfer.read([_sweep_dir(tmp_path / 'x', 2, {0.1: 2.0})], axis='d_ff')


def _config(path: str, arg: str):
  return config_flags.config_flags._LoadConfigModule(path, path).get_config(arg)


def test_width_study_cpu_design_keeps_the_base_width():
  ms = plan.members(_config('configs/sweeps/mup_width.py', 'mup,256'))
  assert {m.config.model.d_model for m in ms} == {256}
  assert {m.config.model.base_d_model for m in ms} == {32}
  assert {m.config.train.num_steps for m in ms} == {1000}
  with pytest.raises(ValueError, match='mup,32'):
    _config('configs/sweeps/mup_width.py', 'mup,48')


def test_depth_and_horizon_studies_share_the_width_studys_base_members():
  """The docs reuse mup_width.py:mup,32 as mup_depth.py:mup,4 and mup_horizon.py:1000: the same
  member names and config hashes, so a sweep in one workdir would skip the other's members."""
  hashes = lambda c: {m.name: m.config_hash for m in plan.members(c)}
  base = hashes(_config('configs/sweeps/mup_width.py', 'mup,32'))
  assert hashes(_config('configs/sweeps/mup_horizon.py', '1000')) == base
  depth4 = hashes(_config('configs/sweeps/mup_depth.py', 'mup,4'))
  assert depth4 and all(base[k] == v for k, v in depth4.items())
  deep = plan.members(_config('configs/sweeps/mup_depth.py', 'depth_mup,8'))
  assert {(m.config.model.n_layers, m.config.model.base_n_layers) for m in deep} == {(8, 2)}
  with pytest.raises(ValueError, match='steps'):
    _config('configs/sweeps/mup_horizon.py', '500')
