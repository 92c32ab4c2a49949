"""Several sweep members at once on one host, each in its own process on a disjoint device subset.

  python -m scaling.parallel --config=configs/sweeps/isoflop_tiny.py --workdir=W --groups=4 \
      [--platform=auto|gpu|tpu|cpu] [--devices=N] [--config.a.b=v ...]

Small members do not fill a host's accelerators; this runs `main.py --config.sweep.member=i` for
up to `groups` members (with --config.sweep.vmap=K, member groups of up to K) at a time, each
process seeing only its devices (GPU: CUDA_VISIBLE_DEVICES; TPU: TPU_VISIBLE_CHIPS and the
per-process bounds of one host's chips; CPU: --xla_force_host_platform_device_count). A freed
device group takes the next unfinished member. Every member writes its own W/<member>/ and merges
W/results.csv under the sweep's file lock, so the table is the same as a sequential run's.
SIGTERM/SIGINT are passed on: each running member checkpoints and stops; rerunning the command
resumes. `--config.*` overrides go to every member. WSD branches of one trunk never run at once
(they share the trunk); they wait for each other.
"""

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from scaling import sweep  # importing starts no JAX backend here (detect() reads no devices).
from train import cli


def _define_flags() -> None:
  """The command line's flags, on absl's global FLAGS only when run as a program (importing this
  module, as tests and other tools do, defines none: they would collide with theirs)."""
  config_flags.DEFINE_config_file('config', None, 'Sweep config file (path[:arg]).')
  flags.DEFINE_string('workdir', None, 'The sweep directory (as for main.py).')
  flags.DEFINE_integer('groups', 2, 'Members run at once (device groups).')
  flags.DEFINE_enum(
    'platform',
    'auto',
    ['auto', 'gpu', 'tpu', 'cpu'],
    'Which devices to split (auto: GPUs, else TPU chips, else CPU).',
  )
  flags.DEFINE_integer('devices', 0, 'Devices to split (0: all found; CPU: groups).')
  flags.mark_flags_as_required(['config', 'workdir'])


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One host's TPU chips as a process grid, by chips per process (the libtpu multi-process recipe).
_TPU_BOUNDS = {1: '1,1,1', 2: '1,2,1', 4: '2,2,1', 8: '2,4,1'}


def detect(platform: str) -> tuple:
  """(platform, device count) without initialising a JAX backend in this process."""
  if platform in ('auto', 'gpu'):
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible:
      return 'gpu', len([d for d in visible.split(',') if d.strip()])
    try:
      out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30)
      n = len([l for l in out.stdout.splitlines() if l.startswith('GPU ')])
    except (OSError, subprocess.TimeoutExpired):
      n = 0
    if n or platform == 'gpu':
      return 'gpu', n
  if platform in ('auto', 'tpu'):
    n = len(glob.glob('/dev/accel*')) or len(glob.glob('/dev/vfio/[0-9]*'))
    if n or platform == 'tpu':
      return 'tpu', n
  return 'cpu', 0


def group_env(platform: str, devices: list, index: int) -> dict:
  """Environment that shows one process only `devices` (ids on this host)."""
  ids = ','.join(str(d) for d in devices)
  if platform == 'gpu':
    return {'CUDA_VISIBLE_DEVICES': ids}
  if platform == 'tpu':
    if len(devices) not in _TPU_BOUNDS:
      raise ValueError(f'--groups: {len(devices)} TPU chips per member; use 1, 2, 4 or 8')
    port = 8476 + index
    return {
      'TPU_VISIBLE_CHIPS': ids,
      'TPU_CHIPS_PER_PROCESS_BOUNDS': _TPU_BOUNDS[len(devices)],
      'TPU_PROCESS_BOUNDS': '1,1,1',
      'TPU_PROCESS_ADDRESSES': f'localhost:{port}',
      'TPU_PROCESS_PORT': str(port),
      'CLOUD_TPU_TASK_ID': '0',
    }
  flags_ = os.environ.get('XLA_FLAGS', '').split()
  flags_ = [f for f in flags_ if not f.startswith('--xla_force_host_platform_device_count')]
  return {
    'XLA_FLAGS': ' '.join(flags_ + [f'--xla_force_host_platform_device_count={len(devices)}']),
    'JAX_PLATFORMS': 'cpu',
  }


def split(num_devices: int, groups: int) -> list:
  """Disjoint, equal device subsets (a remainder stays idle)."""
  if groups < 1 or num_devices < groups:
    raise ValueError(f'--groups={groups} needs at least that many devices (found {num_devices})')
  per = num_devices // groups
  return [list(range(g * per, (g + 1) * per)) for g in range(groups)]


def member_command(config_arg: str, workdir: str, member: int, overrides: Sequence[str]) -> list:
  return [
    sys.executable,
    os.path.join(REPO, 'main.py'),
    f'--config={config_arg}',
    f'--workdir={workdir}',
    f'--config.sweep.member={member}',
    '--config.distributed.initialize=no',
  ] + [f'--config.{o}' for o in overrides]


def run(
  config: ml_collections.ConfigDict,
  config_arg: str,
  workdir: str,
  groups: int,
  platform: str,
  devices: int,
  overrides: Sequence[str] = (),
) -> dict:
  """Runs the sweep's unfinished members `groups` at a time (with sweep.vmap, a member group per
  process); returns {first member of each job: exit code}."""
  ms = sweep.members(config)
  done = lambda i: sweep.finished(os.path.join(workdir, ms[i].name), ms[i].config, ms[i].name)
  k = max(1, int(config.sweep.get('vmap', 0) or 0))
  jobs = {u[0][0]: [i for i, _ in u] for u in sweep.units(list(enumerate(ms)), k)}
  todo = [i for i, unit in jobs.items() if not all(done(j) for j in unit)]
  platform, found = detect(platform)
  subsets = split(devices or found or groups, groups)
  os.makedirs(os.path.join(workdir, 'parallel_logs'), exist_ok=True)
  logging.info(
    '%d of %d members to run in %d jobs, %d at a time on %s devices %s',
    sum(len(jobs[i]) for i in todo),
    len(ms),
    len(todo),
    groups,
    platform,
    subsets,
  )
  running, codes, stopping = {}, {}, []

  def forward(signum: int, _: object) -> None:
    stopping.append(signum)
    for proc, _, _ in running.values():
      proc.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    while todo or running:
      free = [g for g in range(groups) if g not in running]
      trunks = lambda i: {ms[j].trunk for j in jobs[i] if ms[j].trunk}
      busy = set().union(*(trunks(i) for _, i, _ in running.values()))
      ready = [i for i in todo if not trunks(i) & busy]
      while ready and free and not stopping:
        g, i = free.pop(0), ready.pop(0)
        todo.remove(i)
        ready = [j for j in ready if not trunks(j) & trunks(i)]  # one job grows a trunk.
        log = open(os.path.join(workdir, 'parallel_logs', f'{ms[i].name}.log'), 'w')
        env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', **group_env(platform, subsets[g], g)}
        proc = subprocess.Popen(
          member_command(config_arg, workdir, i, overrides),
          cwd=REPO,
          env=env,
          stdout=log,
          stderr=subprocess.STDOUT,
        )
        running[g] = (proc, i, log)
        logging.info(
          'member %d %s%s started on devices %s (pid %d)',
          i,
          ms[i].name,
          f' and {len(jobs[i]) - 1} more as one group' if len(jobs[i]) > 1 else '',
          subsets[g],
          proc.pid,
        )
      if stopping and not running:
        break
      time.sleep(0.2)
      for g, (proc, i, log) in list(running.items()):
        if proc.poll() is not None:
          log.close()
          codes[ms[i].name] = proc.returncode
          del running[g]
          how = 'finished' if done(i) else 'stopped before finishing (rerun to resume)'
          logging.info('member %d %s %s (exit %d)', i, ms[i].name, how, proc.returncode)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return _forgiven(codes, jobs, ms, done)


def _forgiven(codes: dict, jobs: dict, ms: list, done: object) -> dict:
  """codes with 0 for a job that finished while a signal stopped it: it did not fail."""
  for i, unit in jobs.items():
    if codes.get(ms[i].name) and all(done(j) for j in unit):
      logging.info(
        'member %d %s finished before it was stopped (exit %d)', i, ms[i].name, codes[ms[i].name]
      )
      codes[ms[i].name] = 0
  return codes


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  config_arg = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--config='))
  overrides = [a[len('--config.') :] for a in sys.argv[1:] if a.startswith('--config.')]
  codes = run(
    f.config,
    config_arg,
    f.workdir,
    f.groups,
    f.platform,
    f.devices,
    overrides,
  )
  failed = {k: v for k, v in codes.items() if v}
  ms = sweep.members(f.config)
  unfinished = [
    m.name for m in ms if not sweep.finished(os.path.join(f.workdir, m.name), m.config, m.name)
  ]
  summary = {
    'ran': len(codes),
    'failed': failed,
    'unfinished': unfinished,
    'results_csv': os.path.join(f.workdir, 'results.csv'),
  }
  print(json.dumps(summary), flush=True)
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
