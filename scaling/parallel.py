"""Several trainings at once on one host, each in its own process on a disjoint device subset.

  python -m scaling.parallel --config=configs/sweeps/isoflop_tiny.py --workdir=W --groups=4 \
      [--platform=auto|gpu|tpu|cpu] [--devices=N] [--config.a.b=v ...]

`run_jobs` is the one launcher of many trainings (sweep members here; the studies' runs in
scaling/studies/): it runs the Jobs not yet done (a job is done once its workdir holds
result.json) up to `groups` at a time, each process seeing only its devices (GPU:
CUDA_VISIBLE_DEVICES; TPU: TPU_VISIBLE_CHIPS and the per-process bounds of one host's chips; CPU:
--xla_force_host_platform_device_count). A freed device group takes the next job. SIGTERM/SIGINT
are passed on: each running job checkpoints and stops; rerunning resumes. Jobs that share a trunk
(WSD branches) never run at once; they wait for each other.

As a program it runs a sweep's members, `main.py --config.sweep.member=i` for up to `groups`
members (with --config.sweep.vmap=K, member groups of up to K) at a time, logging each to
W/parallel_logs/<member>.log. Every member writes its own W/<member>/ and merges W/results.csv
under the sweep's file lock, so the table is the same as a sequential run's. `--config.*`
overrides go to every member.
"""

import dataclasses
import functools
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

# Importing these starts no JAX backend here (detect() reads no devices).
from scaling import results, sweep
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


def finished(workdir: str) -> bool:
  """A run is done once its workdir holds result.json (main.py writes it at the last step)."""
  return os.path.exists(os.path.join(workdir, results.RESULT_FILE))


@dataclasses.dataclass
class Job:
  """One training process: `argv`, run in the repo root, trains into `workdir`; done once `done()`
  says so (default: `finished(workdir)`). Jobs that share one of their `trunks` never run at once."""

  name: str
  argv: list[str]
  workdir: str
  trunks: tuple[str, ...] = ()
  done: Callable[[], bool] | None = None

  def is_done(self) -> bool:
    return self.done() if self.done else finished(self.workdir)


# Exit codes of a process a passed-on SIGTERM / SIGINT stopped (killed, or main.py's 130 / 143
# during start-up; 0: it checkpointed and returned).
_STOPPED = {0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT}


def run_jobs(
  jobs: Sequence[Job],
  groups: int,
  platform: str = 'auto',
  devices: int = 0,
  log_dir: str | None = None,
) -> dict[str, int | None]:
  """Runs the jobs not yet done, `groups` at a time, each on its own device subset, logging to
  log_dir/<name>.log (None: this process's output); SIGTERM/SIGINT are passed on. Returns {name:
  exit code} of the jobs run: 0 also for one that finished although stopped, None for one a
  passed-on signal stopped before it finished (unfinished, not failed: rerun to resume)."""
  todo = [j for j in jobs if not j.is_done()]
  platform, found = detect(platform)
  subsets = split(devices or found or groups, groups)
  logging.info(
    '%d of %d jobs to run, %d at a time on %s devices %s',
    len(todo),
    len(jobs),
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
      for g, job in _ready(todo, running, groups):
        if stopping:
          break
        todo.remove(job)
        running[g] = _start(job, platform, subsets[g], g, log_dir)
        if stopping:  # the signal came while it started.
          running[g][0].send_signal(stopping[-1])
      if stopping and not running:
        break
      time.sleep(0.2)
      for g, (proc, job, log) in list(running.items()):
        if proc.poll() is not None:
          if log:
            log.close()
          del running[g]
          codes[job.name] = _outcome(job, proc.returncode, bool(stopping))
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return codes


def run_all(jobs: Sequence[Job], groups: int, **kwargs: object) -> None:
  """run_jobs (kwargs: its platform, devices, log_dir), then an error unless every job is done:
  RuntimeError naming a failed one; else one line saying how many are left (rerun to resume)."""
  codes = run_jobs(jobs, groups, **kwargs)
  failed = [n for n, c in codes.items() if c]
  if failed:
    raise RuntimeError(f'{len(failed)} run(s) failed, e.g. {failed[0]} (exit {codes[failed[0]]})')
  left = [j.name for j in jobs if not j.is_done()]
  if left:
    stopped = None in codes.values()
    cli.fail(
      f'{len(left)} run(s) not finished, e.g. {left[0]}; rerun to resume', 130 if stopped else 1
    )


def _ready(todo: list[Job], running: dict, groups: int) -> list[tuple[int, Job]]:
  """(free device group, job) for the next jobs in `todo` whose trunks no running or picked job
  shares (one job grows a trunk at a time)."""
  free = [g for g in range(groups) if g not in running]
  busy = set().union(*(job.trunks for _, job, _ in running.values()))
  picked = []
  for job in todo:
    if len(picked) == len(free):
      break
    if not busy & set(job.trunks):
      picked.append((free[len(picked)], job))
      busy |= set(job.trunks)
  return picked


def _start(job: Job, platform: str, devices: list, index: int, log_dir: str | None) -> tuple:
  """(process, job, log file or None): `job` started seeing only `devices`."""
  log = None
  if log_dir:
    path = os.path.join(log_dir, f'{job.name}.log')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log = open(path, 'w')
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', **group_env(platform, devices, index)}
  out = {'stdout': log, 'stderr': subprocess.STDOUT} if log else {}
  proc = subprocess.Popen(job.argv, cwd=REPO, env=env, **out)
  logging.info('%s started on devices %s (pid %d)', job.name, devices, proc.pid)
  return proc, job, log


def _outcome(job: Job, code: int, signalled: bool) -> int | None:
  """A job's exit code as run_jobs returns it: 0 once it is done (a signal may have stopped it
  after its result was written: not a failure), None when a passed-on signal stopped it first."""
  if job.is_done():
    if code:
      logging.info('%s finished before it was stopped (exit %d)', job.name, code)
    else:
      logging.info('%s finished (exit 0)', job.name)
    return 0
  logging.info('%s stopped before finishing (rerun to resume) (exit %d)', job.name, code)
  return None if signalled and code in _STOPPED else code


# --- Sweep members ---------------------------------------------------------------------------------


def member_command(config_arg: str, workdir: str, member: int, overrides: Sequence[str]) -> list:
  return [
    sys.executable,
    os.path.join(REPO, 'main.py'),
    f'--config={config_arg}',
    f'--workdir={workdir}',
    f'--config.sweep.member={member}',
    '--config.distributed.initialize=no',
  ] + [f'--config.{o}' for o in overrides]


def sweep_jobs(
  config: ml_collections.ConfigDict, config_arg: str, workdir: str, overrides: Sequence[str] = ()
) -> list[Job]:
  """A Job per member group (sweep.vmap=K: up to K members; else one each), named by its first
  member, which main.py trains the group as; done once every member's result.json carries its
  config's hash (sweep.finished)."""
  ms = sweep.members(config)
  k = max(1, int(config.sweep.get('vmap', 0) or 0))
  jobs = []
  for unit in sweep.units(list(enumerate(ms)), k):
    i, first = unit[0]
    group = [m for _, m in unit]
    job = Job(
      name=first.name,
      argv=member_command(config_arg, workdir, i, overrides),
      workdir=os.path.join(workdir, first.name),
      trunks=tuple(sorted({m.trunk for m in group if m.trunk})),
      done=functools.partial(_members_finished, workdir, group),
    )
    jobs.append(job)
  return jobs


def _members_finished(workdir: str, ms: Sequence[sweep.Member]) -> bool:
  return all(sweep.finished(os.path.join(workdir, m.name), m.config, m.name) for m in ms)


def run(
  config: ml_collections.ConfigDict,
  config_arg: str,
  workdir: str,
  groups: int,
  platform: str,
  devices: int,
  overrides: Sequence[str] = (),
) -> dict[str, int | None]:
  """Runs the sweep's unfinished members `groups` at a time (with sweep.vmap, a member group per
  process), logging to W/parallel_logs/; returns run_jobs' {first member of each job: exit code}."""
  jobs = sweep_jobs(config, config_arg, workdir, overrides)
  logging.info('%d members in %d jobs', len(sweep.members(config)), len(jobs))
  return run_jobs(jobs, groups, platform, devices, os.path.join(workdir, 'parallel_logs'))


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  config_arg = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--config='))
  overrides = [a[len('--config.') :] for a in sys.argv[1:] if a.startswith('--config.')]
  codes = run(f.config, config_arg, f.workdir, f.groups, f.platform, f.devices, overrides)
  failed = {k: v for k, v in codes.items() if v}  # (None: stopped by a signal, not failed)
  ms = sweep.members(f.config)
  unfinished = [m.name for m in ms if not _members_finished(f.workdir, [m])]
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
