"""Member groups (train/group.py): K same-shape members in one vmapped program reach the numbers
each reaches alone, resume bitwise, and a diverging member does not move its neighbours."""

import csv
import glob
import json
import os
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from helpers import REPO, apply_overrides, cpu_env, main_cmd, run

from scaling import sweep
from train import checkpoint, context, group, loop, validation

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


def _derive(configs):
  """validation.derive of each member's config: what group.setup and group.run take."""
  return [validation.derive(c) for c in configs]


def _state(workdir, config):
  """(step, params, opt_state) of the workdir's latest checkpoint, as plain numpy."""
  r = context.setup(validation.derive(config), with_data=False)
  mngr = checkpoint.manager(workdir, config.train)
  state, _ = checkpoint.restore(mngr, mngr.latest_step(), context.abstract_state(r))
  return int(state.step), jax.device_get(state.params), jax.device_get(state.opt_state)


def test_group_matches_a_member_alone_and_isolates_a_diverging_member(
  tiny_config, trained_workdir, tmp_path
):
  """Member 0 is the session's trained run (tiny_config(): lr 1e-3, seed 0), member 1 has
  another lr, weight decay and seed (stacked batches). Member 0 as one program with member 1
  vs alone: train losses within 1e-5 relative, eval loss within 1e-4. With member 1 at lr 1e30
  it diverges, is reported and frozen, and member 0's rows are bitwise those beside a healthy
  member 1. A finished member's directory is an ordinary finished run. (Every member of a
  4-member scan vs alone, a kill and a resume: the slow test below.)"""
  other = {'optimizer.lr': 3e-3, 'seed': 1, 'optimizer.weight_decay': 0.0}
  configs = [tiny_config(), tiny_config(other)]
  straight, sick = ([str(tmp_path / f'{n}{i}') for i in range(2)] for n in ('straight', 'sick'))
  finals = group.run(_derive(configs), straight, str(tmp_path / 'g_straight'))
  a, b = _rows(trained_workdir), _rows(straight[0])
  assert [r['step'] for r in a] == [r['step'] for r in b] == [2, 4]
  np.testing.assert_allclose(
    [r['train/loss'] for r in b], [r['train/loss'] for r in a], rtol=1e-5, atol=0
  )
  assert abs(b[-1]['eval/loss'] - a[-1]['eval/loss']) <= 1e-4
  assert finals[0]['eval/loss'] == b[-1]['eval/loss']
  assert _rows(straight[1])[-1]['train/loss'] != b[-1]['train/loss']

  diverging = [configs[0], tiny_config({**other, 'optimizer.lr': 1e30})]
  out = group.run(_derive(diverging), sick, str(tmp_path / 'g_sick'))
  assert 'not finite' in out[1]['diverged']
  assert [_untimed(r) for r in _rows(sick[0])] == [_untimed(r) for r in b]
  assert not os.path.exists(os.path.join(sick[1], 'checkpoints'))  # no final state for it.
  again = group.run(_derive(diverging), sick, str(tmp_path / 'g_sick'))  # the checkpoint knows.
  assert 'diverged' in again[1] and again[0]['eval/loss'] == out[0]['eval/loss']
  # A member is a plain finished run: the loop resumes it at its end and trains nothing.
  assert loop.run(validation.derive(configs[0]), straight[0])['eval/loss'] == finals[0]['eval/loss']


@pytest.mark.slow  # 2 runs alone and their group (~25 s).
@pytest.mark.parametrize('parametrization', ['mup', 'umup'])
def test_members_with_their_own_mup_multipliers_match_their_runs_alone(
  tiny_config, tmp_path, parametrization
):
  """μP's base hyperparameters as per-member values (α_out, α_in, attention and embedding-lr
  multipliers traced in one program): each member's rows equal its run alone within the group
  tolerances."""
  base = {'model.parametrization': parametrization}
  if parametrization == 'mup':
    base['model.base_d_model'] = 16
  values = [
    {'model.mup_output_mult': 2.0, 'model.mup_lr_embedding': 0.5},
    {'model.mup_input_mult': 3.0, 'model.mup_attn_mult': 0.5, 'seed': 1},
  ]
  configs = [tiny_config({**base, **v}) for v in values]
  alone = [str(tmp_path / f'a{i}') for i in range(2)]
  for c, d in zip(configs, alone):
    loop.run(validation.derive(c), d)
  grouped = [str(tmp_path / f'g{i}') for i in range(2)]
  g = group.setup(_derive(configs), grouped)
  assert sorted(k for k in g.hypers if k.startswith('model.')) == [
    'model.mup_attn_mult', 'model.mup_input_mult', 'model.mup_lr_embedding', 'model.mup_output_mult'
  ]  # fmt: skip
  group.run(_derive(configs), grouped, str(tmp_path / 'g'))
  for a, b in zip(alone, grouped):
    ra, rb = _rows(a), _rows(b)
    np.testing.assert_allclose(
      [r['train/loss'] for r in rb], [r['train/loss'] for r in ra], rtol=1e-5
    )
    assert abs(rb[-1]['eval/loss'] - ra[-1]['eval/loss']) <= 1e-4
  assert _rows(grouped[0])[-1]['train/loss'] != _rows(grouped[1])[-1]['train/loss']


def test_members_that_differ_in_shape_are_refused(tiny_config, tmp_path):
  with pytest.raises(ValueError, match='differ in more than seed'):
    group.setup(_derive([tiny_config(), tiny_config({'model.d_ff': 128})]), ['a', 'b'])


def _scan(data_dir, vmap):
  """A 4-member lr x seed scan at one size of the tiny IsoFLOP sweep (40 steps each)."""
  from configs.sweeps import isoflop_tiny

  overrides = {
    'train.global_batch_size': 8,
    'data.seq_len': 32,
    'model.max_len': 32,
    'train.eval_batches': 1,
    'data.data_dir': data_dir,
    'sweep.budgets': (6e8,),
    'sweep.sizes_per_budget': (),
    'sweep.sizes': (1e4,),
    'sweep.lrs': (1e-2, 2e-2),
    'sweep.seeds': (0, 1),
    'sweep.min_warmup_steps': 1,
    'sweep.checkpoints_per_member': 8,
    'sweep.logs_per_member': 42,  # every step: the first 10 are compared.
    'sweep.family.head_dim': 8,
    'sweep.vmap': vmap,
  }
  return apply_overrides(isoflop_tiny.get_config(), overrides), overrides


def _csv(path):
  with open(path) as f:
    return {r['name']: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_grouped_sweep_killed_and_resumed_equals_one_at_a_time(data_dir, tmp_path):
  """An lr x seed scan (4 members, one shape) with sweep.vmap=4 through main.py, stopped by
  SIGTERM, resumed, killed with SIGKILL after its next checkpoint and run again, ends bitwise where the uninterrupted
  grouped sweep does (member checkpoints, results.csv), and its results.csv equals the
  one-at-a-time sweep's: the same columns, final eval losses within 1e-4, the train losses of
  steps 1-10 within 1e-5 relative."""
  alone_config, _ = _scan(data_dir, 0)
  grouped_config, overrides = _scan(data_dir, 4)
  alone, straight, killed = (str(tmp_path / n) for n in ('alone', 'straight', 'killed'))
  summary = sweep.run(alone_config, alone)
  assert len(summary['ran']) == 4
  assert sorted(sweep.run(grouped_config, straight)['ran']) == sorted(summary['ran'])

  flags = [
    f'--config.{k}={v!r}' if isinstance(v, tuple) else f'--config.{k}={v}'
    for k, v in overrides.items()
  ]
  cmd = main_cmd(killed, *flags, config='configs/sweeps/isoflop_tiny.py')
  committed = lambda: sorted(  # a step's directory is renamed from its tmp name once written whole.
    int(os.path.basename(p))
    for p in glob.glob(os.path.join(killed, 'groups', '*', 'checkpoints', '*'))
    if os.path.basename(p).isdigit()
  )

  def start_and(sig, after):
    """Start the sweep, send `sig` once the group has committed a checkpoint past `after`."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=cpu_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 600
    while not [s for s in committed() if s > after]:
      assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
      time.sleep(0.02)
    proc.send_signal(sig)
    return proc.wait(), proc.stderr.read()

  rc, err = start_and(signal.SIGTERM, 0)  # stops at a step boundary with a checkpoint, exit 0.
  assert rc == 0 and re.search(r'the group stopped at step (\d+)', err), err[-3000:]
  stopped = int(re.search(r'the group stopped at step (\d+)', err).group(1))
  assert committed()[-1] == stopped < 42
  rc, _ = start_and(signal.SIGKILL, stopped)  # then killed after its next checkpoint.
  assert rc == -signal.SIGKILL
  assert not glob.glob(os.path.join(killed, '*', 'result.json'))  # killed mid-group.
  # A member still training, pulled out of the group's checkpoint as a params-only workdir.
  member_dir = next(
    d
    for d in glob.glob(os.path.join(killed, 'C*'))
    if json.load(open(os.path.join(d, sweep.MEMBER_FILE)))['group_member'] == 1
  )
  meta = json.load(open(os.path.join(member_dir, sweep.MEMBER_FILE)))
  step = group.extract(meta['group'], member_dir, 1, str(tmp_path / 'extracted'))
  from train import init_from

  cfg, params = init_from.load_params(str(tmp_path / 'extracted'))
  wanted = json.load(open(os.path.join(member_dir, 'config.json')))['model']
  assert step >= 1 and (cfg.d_model, cfg.n_layers) == (wanted['d_model'], wanted['n_layers'])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  out = run(cmd, cpu_env(), timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert re.search(r'Member group of 4 in .*: steps [1-9]\d*\.\.42', out.stderr)  # resumed.

  a, s, k = (_csv(os.path.join(d, 'results.csv')) for d in (alone, straight, killed))
  assert sorted(a) == sorted(s) == sorted(k)
  for name in a:
    assert {c: v for c, v in k[name].items() if c != 'wall_s'} == {
      c: v for c, v in s[name].items() if c != 'wall_s'
    }
    for col in ('params', 'tokens', 'flops', 'steps', 'config_hash', 'lr', 'seed'):
      assert k[name][col] == a[name][col], col
    assert abs(float(k[name]['loss']) - float(a[name]['loss'])) <= 1e-4
    first = [[r['train/loss'] for r in _rows(os.path.join(d, name)) if r['step'] <= 10]
             for d in (alone, killed)]  # fmt: skip
    assert len(first[0]) == 10
    np.testing.assert_allclose(first[1], first[0], rtol=1e-5, atol=0)
    member = next(m for m in sweep.members(grouped_config) if m.name == name)
    s1, p1, o1 = _state(os.path.join(straight, name), member.config)
    s2, p2, o2 = _state(os.path.join(killed, name), member.config)
    assert s1 == s2 == int(a[name]['steps'])
    jax.tree.map(np.testing.assert_array_equal, (p1, o1), (p2, o2))


@pytest.mark.slow  # two WSD sweeps of 2 trunks and 4 branches (~60 s).
def test_wsd_branches_in_groups_equal_the_branches_alone(data_dir, tmp_path, monkeypatch):
  """kind='wsd' with two seeds and sweep.vmap=2: the two seeds' trunks grow as one group to each
  branch point, the branches of one budget train as one group from their trunks' states there
  (here killed once right after getting them, and rerun), and results.csv equals the one-at-a-time
  sweep's within the group tolerances; a rerun trains nothing."""
  rows, real = {}, group.run

  def killed_once(configs, dirs, group_dir, **kwargs):
    if not rows.get('killed') and '_trunk' not in os.path.basename(dirs[0]):
      rows['killed'] = True  # the first branch group: its members hold their starts, it has none.
      raise KeyboardInterrupt
    return real(configs, dirs, group_dir, **kwargs)

  for vmap in (0, 2):
    config, _ = _scan(data_dir, vmap)
    config.sweep.update(
      kind='wsd', budgets=(), tokens=(256 * 20, 256 * 40), lrs=(), evals_per_member=1
    )
    config.optimizer.decay_fraction = 0.2
    workdir = str(tmp_path / f'v{vmap}')
    ms = sweep.members(config)
    assert len(ms) == 4 and len({m.trunk for m in ms}) == 2
    assert sorted({m.branch_step for m in ms}) == [16, 32]
    if vmap:
      monkeypatch.setattr(group, 'run', killed_once)
      with pytest.raises(KeyboardInterrupt):
        sweep.run(config, workdir)
      starts = glob.glob(os.path.join(workdir, 'N*', 'checkpoints', '16'))
      assert len(starts) == 2 and not glob.glob(os.path.join(workdir, 'N*', 'result.json'))
    assert sorted(sweep.run(config, workdir)['ran']) == sorted(m.name for m in ms)
    rows[vmap] = _csv(os.path.join(workdir, 'results.csv'))
  trunk_group = glob.glob(os.path.join(tmp_path, 'v2', 'groups', '*', 'checkpoints', '32'))
  assert len(trunk_group) == 1  # the trunks' group kept the last branch point (16 -> 32).
  assert (
    len(os.listdir(os.path.join(tmp_path, 'v2', 'groups'))) == 3
  )  # trunks; 2 budgets' branches.
  assert sweep.run(config, workdir)['ran'] == []
  for name, alone in rows[0].items():
    grouped = rows[2][name]
    assert (
      grouped['branch_tokens'] == alone['branch_tokens']
      and grouped['config_hash'] == alone['config_hash']
    )
    assert abs(float(grouped['loss']) - float(alone['loss'])) <= 1e-4
    first = [
      [r['train/loss'] for r in _rows(os.path.join(tmp_path, v, name))] for v in ('v0', 'v2')
    ]
    np.testing.assert_allclose(first[1], first[0], rtol=1e-5, atol=0)


@pytest.mark.slow
def test_member_axis_sharded_over_data_matches_replicated(tiny_config, tmp_path):
  """config.mesh.members='data' (2 members over data=2, each member's batch over fsdp=4):
  the same rows as with the member axis replicated, within the group tolerances."""
  values = [{'optimizer.lr': 1e-3, 'seed': 0}, {'optimizer.lr': 3e-3, 'seed': 1}]
  configs = [tiny_config({**SCHEDULE, **v, 'mesh.data': 2, 'mesh.fsdp': 4}) for v in values]
  replicated = [str(tmp_path / f'r{i}') for i in range(2)]
  group.run(_derive(configs), replicated, str(tmp_path / 'gr'))
  for c in configs:
    c.mesh.members = 'data'
  g = group.setup(_derive(configs), ['', ''])
  assert {s.spec[0] for s in jax.tree.leaves(g.shardings.state.params)} == {'data'}
  assert g.batch_sharding.spec[:2] == ('data', 'fsdp')
  assert (
    group.setup(_derive(configs[:1] * 3), ['', '', '']).shardings.alive.spec[0] is None
  )  # 3 over 2.
  split = [str(tmp_path / f's{i}') for i in range(2)]
  group.run(_derive(configs), split, str(tmp_path / 'gs'))
  for a, b in zip(replicated, split):
    ra, rb = _rows(a), _rows(b)
    np.testing.assert_allclose(
      [r['train/loss'] for r in rb], [r['train/loss'] for r in ra], rtol=1e-5, atol=0
    )
    assert abs(rb[-1]['eval/loss'] - ra[-1]['eval/loss']) <= 1e-4


def test_a_group_that_cannot_fit_is_refused_before_anything(tiny_config, tmp_path):
  """The memory estimate counts K stacked members on every device: too many is one line."""
  configs = [tiny_config({'seed': i}) for i in range(2)]
  from train import memory

  est = memory.for_run(validation.derive(configs[0], 8), members=2)
  assert est.total == 2 * memory.for_run(validation.derive(configs[0], 8)).total
  with pytest.raises(ValueError, match=r'x 1000000000 members.*fewer members per group'):
    memory.for_run(validation.derive(configs[0], 8), members=10**9)
  with pytest.raises(ValueError, match='does not fit'):
    group.run(_derive(configs[:1]) * 10**6, [str(tmp_path / 'm')] * 10**6, str(tmp_path / 'g'))
  assert not os.path.exists(tmp_path / 'g')


@pytest.mark.slow  # a group's compile and 4 steps (~15 s); the wording is the loop's, tested there.
def test_a_full_disk_stops_a_group_in_one_line_keeping_its_checkpoint(
  tiny_config, tmp_path, monkeypatch
):
  """The group's checkpoint at step 4 hits a full disk: one ENOSPC error naming the group
  directory and the step-2 checkpoint it keeps (the loop's wording, train/loop.py committed)."""
  import errno

  import orbax.checkpoint as ocp

  real = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step > 2:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  configs = [tiny_config(), tiny_config({'seed': 1})]
  dirs, g = [str(tmp_path / f'm{i}') for i in range(2)], str(tmp_path / 'g')
  with pytest.raises(OSError, match=rf'disk full writing {g}; its last committed checkpoint '
                     r'\(step 2\) is kept: free space'):  # fmt: skip
    group.run(_derive(configs), dirs, g)
  assert sorted(os.listdir(os.path.join(g, 'checkpoints'))) == ['2']
