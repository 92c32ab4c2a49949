"""Tests for scaling/parallel.py: run_jobs (the one launcher of many trainings) on fake commands,
and the sweep's members through it (counting, member groups, disjoint device subsets)."""

import csv
import importlib.util
import json
import os
import re
import signal
import sys
import threading
import time

import pytest
from helpers import REPO, TINY_SWEEP, apply_overrides, cpu_env, run

from scaling import parallel, results, sweep


def _job(tmp_path, name: str, code: str, trunks: tuple = ()) -> parallel.Job:
  """A Job running `python -c code` with W (its workdir, made) and R (its result.json) defined."""
  w = tmp_path / name
  w.mkdir(exist_ok=True)
  prelude = f'import os, signal, sys, time; W = {str(w)!r}; R = os.path.join(W, "result.json")\n'
  return parallel.Job(name, [sys.executable, '-c', prelude + code], str(w), trunks)


FINISH = 'print("training", flush=True); open(R, "w").write("{}")'


def test_run_jobs_runs_the_unfinished_and_tells_failed_from_finished(tmp_path):
  """A job that writes result.json finished (exit 0); one that exits 3 failed; a job already done
  is not started; each logs to log_dir/<name>.log."""
  ok, bad, done = (
    _job(tmp_path, 'ok', FINISH),
    _job(tmp_path, 'bad', 'sys.exit(3)'),
    _job(tmp_path, 'done', 'sys.exit(4)'),
  )
  (tmp_path / 'done' / results.RESULT_FILE).write_text('{}')
  logs = tmp_path / 'logs'
  codes = parallel.run_jobs([ok, bad, done], 2, 'cpu', 2, str(logs))
  assert codes == {'ok': 0, 'bad': 3}
  assert ok.is_done() and not bad.is_done() and parallel.finished(ok.workdir)
  assert 'training' in (logs / 'ok.log').read_text() and not (logs / 'done.log').exists()
  with pytest.raises(RuntimeError, match=r'1 run\(s\) failed, e.g. bad \(exit 3\)'):
    parallel.run_all([ok, bad], 1, platform='cpu', devices=1)


def test_jobs_sharing_a_trunk_never_run_at_once(tmp_path):
  """Two jobs of one trunk wait for each other although a device group is free; a third job
  without it runs beside the first."""
  span = 'open(os.path.join(W, "span"), "w").write(f"{time.time()} "); time.sleep(0.6); '
  span += 'open(os.path.join(W, "span"), "a").write(f"{time.time()}"); open(R, "w").write("{}")'
  jobs = [
    _job(tmp_path, 'a', span, ('T',)),
    _job(tmp_path, 'b', span, ('T',)),
    _job(tmp_path, 'c', span),
  ]
  assert parallel.run_jobs(jobs, 2, 'cpu', 2) == {'a': 0, 'b': 0, 'c': 0}
  a, b, c = (tuple(map(float, (tmp_path / n / 'span').read_text().split())) for n in 'abc')
  assert b[0] >= a[1] or a[0] >= b[1]  # one after the other
  assert c[0] < a[1]  # the free group took c while a ran


def test_a_forwarded_sigterm_stops_jobs_unfinished_not_failed(tmp_path):
  """SIGTERM to the launcher reaches each running job: one killed by it before finishing is
  stopped (None: not failed, rerun to resume); one that wrote its result as it stopped is
  forgiven its exit 143; a job not yet started stays unstarted; run_all ends in exit 130."""
  started = 'open(os.path.join(W, "started"), "w").close(); '
  killed = _job(tmp_path, 'killed', started + 'time.sleep(30)')
  graceful = _job(
    tmp_path,
    'graceful',
    'def stop(*_):\n  open(R, "w").write("{}"); sys.exit(143)\n'
    'signal.signal(signal.SIGTERM, stop); ' + started + 'time.sleep(30)',
  )
  waiting = _job(tmp_path, 'waiting', FINISH)

  def stop_when_started(jobs):
    while not all(os.path.exists(os.path.join(j.workdir, 'started')) for j in jobs):
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

  before = signal.getsignal(signal.SIGTERM)
  threading.Thread(target=stop_when_started, args=([killed, graceful],), daemon=True).start()
  t0 = time.time()
  codes = parallel.run_jobs([killed, graceful, waiting], 2, 'cpu', 2)
  assert time.time() - t0 < 20
  assert codes == {'killed': None, 'graceful': 0}
  assert graceful.is_done() and not killed.is_done() and not waiting.is_done()
  assert signal.getsignal(signal.SIGTERM) == before  # the launcher's handler is given back.
  os.remove(os.path.join(killed.workdir, 'started'))
  threading.Thread(target=stop_when_started, args=([killed],), daemon=True).start()
  with pytest.raises(SystemExit) as e:
    parallel.run_all([killed, waiting], 1, platform='cpu', devices=1)
  assert e.value.code == 130


# --- Sweep members ---------------------------------------------------------------------------------


def _load_config_file(path, *args):
  """get_config(*args) of a config file, as config_flags loads it (by path, not as a package)."""
  spec = importlib.util.spec_from_file_location(
    os.path.basename(path)[:-3], os.path.join(REPO, path)
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(*args)


def test_parallel_counts_a_member_that_finished_before_its_stop_as_finished(tmp_path, monkeypatch):
  """Ctrl-C reaching a member after it wrote its result (exit 130) is not a failure; a member
  stopped before finishing (no signal passed on by the launcher) still is."""
  config = _load_config_file('configs/sweeps/isoflop_tiny.py')
  ms = sweep.members(config)[:2]
  monkeypatch.setattr(sweep, 'members', lambda c: ms)
  workdir = str(tmp_path)

  class Proc:  # member 0 finished (result written), member 1 did not; both exit 130.
    returncode = 130

    def __init__(self, cmd, **kwargs):
      i = int(next(a for a in cmd if a.startswith('--config.sweep.member=')).split('=')[1])
      if i == 0:
        sweep.workdir_lib.write_json(
          os.path.join(workdir, ms[0].name, results.RESULT_FILE),
          {**ms[0].info, 'loss': 2.0, 'config_hash': ms[0].config_hash},
        )
      self.pid = 1000 + i

    def poll(self):
      return self.returncode

  for m in ms:
    os.makedirs(os.path.join(workdir, m.name))
  monkeypatch.setattr(parallel.subprocess, 'Popen', Proc)
  codes = parallel.run(config, 'configs/sweeps/isoflop_tiny.py', workdir, 2, 'cpu', 2)
  assert codes == {ms[0].name: 0, ms[1].name: 130}


def test_parallel_with_vmap_starts_one_process_per_member_group(tmp_path, monkeypatch):
  """--config.sweep.vmap=2 over an lr axis: scaling.parallel starts one job per member group (its
  first member's index), and that job (sweep.member=i) trains the whole group."""
  config = _load_config_file('configs/sweeps/isoflop_tiny.py')
  config.sweep.update(lrs=(1e-3, 2e-3), vmap=2)
  ms = sweep.members(config)
  started = []

  class Proc:
    returncode = 0

    def __init__(self, cmd, **kwargs):
      started.append(
        int(next(a for a in cmd if a.startswith('--config.sweep.member=')).split('=')[1])
      )
      self.pid = 1000 + started[-1]

    def poll(self):
      return self.returncode

  monkeypatch.setattr(parallel.subprocess, 'Popen', Proc)
  parallel.run(config, 'configs/sweeps/isoflop_tiny.py', str(tmp_path), 2, 'cpu', 2)
  assert len(started) == len(ms) // 2
  config.sweep.member = started[1]
  _, todo = sweep._prepare(config, str(tmp_path), ())
  assert len(todo) == 1 and [i for i, _ in todo[0]] == [started[1], started[1] + 1]
  assert len({m.config.optimizer.lr for _, m in todo[0]}) == 2


def _flag(v) -> str:
  """A --config.* value: tuples as (a,b) or (a,)."""
  if not isinstance(v, tuple):
    return str(v)
  return '(' + ','.join(repr(x) for x in v) + (',)' if len(v) == 1 else ')')


@pytest.mark.slow
def test_parallel_members_on_disjoint_device_subsets(data_dir, tmp_path):
  """scaling.parallel runs 2 members at once, each process on its own 1-device subset; both
  land in results.csv exactly once, and they trained at the same time."""
  workdir = str(tmp_path / 'par')
  overrides = {**TINY_SWEEP, 'sweep.sizes': (5e3, 1e4), 'data.data_dir': data_dir}
  cmd = [
    sys.executable,
    '-m',
    'scaling.parallel',
    '--config=configs/sweeps/isoflop_tiny.py',
    f'--workdir={workdir}',
    '--groups=2',
    '--platform=cpu',
    '--devices=2',
  ]
  cmd += [f'--config.{k}={_flag(v)}' for k, v in overrides.items()]
  out = run(cmd, cpu_env(), timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  config = apply_overrides(_load_config_file('configs/sweeps/isoflop_tiny.py'), overrides)
  names = [m.name for m in sweep.members(config)]
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['name'] for r in rows) == sorted(names)
  spans = []
  for name in names:
    log = open(os.path.join(workdir, 'parallel_logs', f'{name}.log')).read()
    assert 'on 1 cpu device(s)' in log, log[-2000:]
    started = re.search(re.escape(name) + r' started on devices (\[\d\])', out.stderr)
    assert started, out.stderr[-2000:]
    meta = json.load(open(os.path.join(workdir, name, 'sweep_member.json')))
    end = os.path.getmtime(os.path.join(workdir, name, 'result.json'))
    spans.append((end - meta['wall_s'], end, started.group(1)))
  spans.sort()
  assert spans[1][0] < spans[0][1]  # the second member started before the first finished.
  assert spans[0][2] != spans[1][2]  # ... on the other device.
