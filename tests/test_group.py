"""Member groups (train/group.py): K same-shape members in one vmapped program reach the numbers
each reaches alone, resume bitwise, and a diverging member does not move its neighbours."""

import json
import os

import jax
import numpy as np
import pytest

from train import checkpoint, context, group, loop

SCHEDULE = {
  'train.num_steps': 6,
  'train.log_every': 1,
  'train.eval_every': 3,
  'train.checkpoint_every': 3,
}


def _rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


def _untimed(row):
  """A metrics row without its wall-clock rates."""
  return {k: v for k, v in row.items() if k not in ('train/tokens_per_sec', 'train/mfu')}


def _state(workdir, config):
  """(step, params, opt_state) of the workdir's latest checkpoint, as plain numpy."""
  r = context.setup(config, with_data=False)
  mngr = checkpoint.manager(workdir, config.train)
  state, _ = checkpoint.restore(mngr, mngr.latest_step(), context.abstract_state(r))
  return int(state.step), jax.device_get(state.params), jax.device_get(state.opt_state)


def test_group_matches_members_alone_and_isolates_a_diverging_member(tiny_config, tmp_path):
  """Two members (other lr, weight decay and seed: stacked batches) as one program vs each
  alone: train losses within 1e-5 relative, eval losses within 1e-4. With member 1 at lr 1e30 it diverges,
  is reported and frozen, and member 0's rows are bitwise those beside a healthy member 1. Each
  finished member's directory is an ordinary finished run."""
  values = [  # (the slow tier's group tests reuse them)
    {'optimizer.lr': 1e-3, 'seed': 0, 'optimizer.weight_decay': 0.1},
    {'optimizer.lr': 3e-3, 'seed': 1, 'optimizer.weight_decay': 0.0},
  ]
  configs = [tiny_config({**SCHEDULE, **v}) for v in values]
  dirs = lambda name: [str(tmp_path / f'{name}{i}') for i in range(2)]
  alone, straight, sick = dirs('alone'), dirs('straight'), dirs('sick')
  for c, d in zip(configs, alone):
    loop.run(c, d)
  finals = group.run(configs, straight, str(tmp_path / 'g_straight'))
  for i in range(2):
    a, b = _rows(alone[i]), _rows(straight[i])
    assert [r['step'] for r in a] == [r['step'] for r in b] == list(range(1, 7))
    np.testing.assert_allclose(
      [r['train/loss'] for r in b], [r['train/loss'] for r in a], rtol=1e-5, atol=0
    )
    evals = [(ra['eval/loss'], rb['eval/loss']) for ra, rb in zip(a, b) if 'eval/loss' in ra]
    assert len(evals) == 2 and all(abs(x - y) <= 1e-4 for x, y in evals)
    assert finals[i]['eval/loss'] == b[-1]['eval/loss']
  assert _rows(straight[0])[-1]['train/loss'] != _rows(straight[1])[-1]['train/loss']

  diverging = [configs[0], tiny_config({**SCHEDULE, **values[1], 'optimizer.lr': 1e30})]
  out = group.run(diverging, sick, str(tmp_path / 'g_sick'))
  assert 'not finite' in out[1]['diverged']
  assert [_untimed(r) for r in _rows(sick[0])] == [_untimed(r) for r in _rows(straight[0])]
  assert not os.path.exists(os.path.join(sick[1], 'checkpoints'))  # no final state for it.
  again = group.run(diverging, sick, str(tmp_path / 'g_sick'))  # the checkpoint knows.
  assert 'diverged' in again[1] and again[0]['eval/loss'] == out[0]['eval/loss']
  # A member is a plain finished run: the loop resumes it at its end and trains nothing.
  assert loop.run(configs[0], straight[0])['eval/loss'] == finals[0]['eval/loss']


def test_members_that_differ_in_shape_are_refused(tiny_config, tmp_path):
  with pytest.raises(ValueError, match='differ in more than seed'):
    group.setup([tiny_config(), tiny_config({'model.d_ff': 128})], ['a', 'b'])
