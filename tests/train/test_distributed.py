"""Two local processes (jax.distributed + gloo CPU collectives) == one process, same devices."""

import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import (
  REPO,
  cpu_env,
  distributed_flags,
  free_port,
  fsdp2_main_cmd,
  main_result,
  run,
  run_pair,
)


def test_two_processes_match_one(data_dir, tmp_path):
  single = run(fsdp2_main_cmd(tmp_path / 'single', data_dir), cpu_env(4))
  assert single.returncode == 0, single.stderr[-3000:]
  outs = run_pair(lambda *flags: fsdp2_main_cmd(tmp_path / 'multi', data_dir, *flags))
  assert 'process 1 of 2' in outs[1][1] or 'process 1 of 2' in outs[0][1]
  multi = main_result(outs[0][0])
  ref = main_result(single.stdout)
  for key in ('train/loss', 'eval/loss', 'train/grad_norm'):
    np.testing.assert_allclose(multi[key], ref[key], rtol=1e-5, err_msg=key)
  assert os.path.isdir(tmp_path / 'multi' / 'checkpoints' / '3')


def _start_pair(workdir, data_dir, steps, env, logdir):
  """Two main.py processes; stdout/stderr go to files (a full pipe would stall one of them)."""
  port = free_port()
  procs = []
  for i in range(2):
    with open(logdir / f'out{i}', 'w') as out, open(logdir / f'err{i}', 'w') as err:
      cmd = fsdp2_main_cmd(
        workdir, data_dir, *distributed_flags(port, i), steps=steps, log_every=10
      )
      procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, env=env))
  return procs


@pytest.mark.slow  # one process's SIGTERM: tests/train/test_loop.py (default); the sync across two here.
def test_sigterm_to_one_process_stops_both_at_the_same_step(data_dir, tmp_path):
  """A real SIGTERM to process 1 only (a preempted host): through JAX's preemption sync both
  processes finish the same step, commit its checkpoint together and exit 0."""
  workdir = tmp_path / 'w'
  procs = _start_pair(workdir, data_dir, 100000, cpu_env(2), tmp_path)
  deadline = time.time() + 300
  while ' | loss ' not in (tmp_path / 'err0').read_text():  # the first logged step
    assert time.time() < deadline and procs[0].poll() is None, (tmp_path / 'err0').read_text()
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGTERM)
  steps = []
  for i, p in enumerate(procs):
    p.wait(timeout=300)
    log = (tmp_path / f'err{i}').read_text()
    assert p.returncode == 0, log[-3000:]
    m = re.search(r'SIGTERM: stopped at step (\d+), its checkpoint committed', log)
    assert m, log[-3000:]
    steps.append(int(m.group(1)))
  assert steps[0] == steps[1] and 10 <= steps[0] < 100000
  assert os.listdir(workdir / 'checkpoints') == [str(steps[0])]
