"""Two local processes (jax.distributed + gloo CPU collectives) == one process, same devices."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _cmd(workdir, data_dir, extra=()):
  return [
    sys.executable,
    'main.py',
    '--config=configs/default.py',
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    '--config.train.num_steps=3',
    '--config.train.log_every=3',
    '--config.train.eval_every=3',
    '--config.train.eval_batches=1',
    '--config.train.checkpoint_every=3',
    '--config.optimizer.warmup_steps=1',
    '--config.model.n_layers=1',
    '--config.model.d_model=64',
    '--config.model.d_ff=128',
    '--config.train.global_batch_size=8',
    '--config.mesh.fsdp=2',
    *extra,
  ]


def _result(stdout):
  return json.loads(stdout[stdout.index('{') :])


def test_two_processes_match_one(data_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  single = subprocess.run(
    _cmd(tmp_path / 'single', data_dir),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env={**env, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'},
  )
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  procs = [
    subprocess.Popen(
      _cmd(
        tmp_path / 'multi',
        data_dir,
        [
          f'--config.distributed.coordinator_address=localhost:{port}',
          '--config.distributed.num_processes=2',
          f'--config.distributed.process_id={i}',
        ],
      ),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env={**env, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'},
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert 'process 1 of 2' in outs[1][1] or 'process 1 of 2' in outs[0][1]
  multi = _result(outs[0][0])
  ref = _result(single.stdout)
  for key in ('train/loss', 'eval/loss', 'train/grad_norm'):
    np.testing.assert_allclose(multi[key], ref[key], rtol=1e-5, err_msg=key)
  assert os.path.isdir(tmp_path / 'multi' / 'checkpoints' / '3')


def _start_pair(workdir, data_dir, steps, env, logdir):
  """Two main.py processes; stdout/stderr go to files (a full pipe would stall one of them)."""
  port = _free_port()
  procs = []
  for i in range(2):
    with open(logdir / f'out{i}', 'w') as out, open(logdir / f'err{i}', 'w') as err:
      procs.append(
        subprocess.Popen(
          _cmd(
            workdir,
            data_dir,
            [
              f'--config.train.num_steps={steps}',
              '--config.train.log_every=10',
              f'--config.train.eval_every={steps}',
              f'--config.train.checkpoint_every={steps}',
              f'--config.distributed.coordinator_address=localhost:{port}',
              '--config.distributed.num_processes=2',
              f'--config.distributed.process_id={i}',
            ],
          ),
          cwd=REPO,
          stdout=out,
          stderr=err,
          env=env,
        )
      )
  return procs


def test_sigterm_to_one_process_stops_both_at_the_same_step(data_dir, tmp_path):
  """A real SIGTERM to process 1 only (a preempted host): through JAX's preemption sync both
  processes finish the same step, commit its checkpoint together and exit 0."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  workdir = tmp_path / 'w'
  procs = _start_pair(workdir, data_dir, 100000, env, tmp_path)
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
