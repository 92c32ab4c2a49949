"""Two local processes (jax.distributed + gloo CPU collectives) == one process, same devices."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _cmd(workdir, data_dir, extra=()):
  return [sys.executable, 'main.py', '--config=configs/default.py', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', '--config.train.num_steps=3',
          '--config.train.log_every=3', '--config.train.eval_every=3',
          '--config.train.eval_batches=1', '--config.train.checkpoint_every=3',
          '--config.optimizer.warmup_steps=1', '--config.model.n_layers=1',
          '--config.model.d_model=64', '--config.model.d_ff=128',
          '--config.train.global_batch_size=8', '--config.mesh.fsdp=2', *extra]


def _result(stdout):
  return json.loads(stdout[stdout.index('{'):])


def test_two_processes_match_one(data_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  single = subprocess.run(
      _cmd(tmp_path / 'single', data_dir), cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**env, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(tmp_path / 'multi', data_dir,
           [f'--config.distributed.coordinator_address=localhost:{port}',
            '--config.distributed.num_processes=2', f'--config.distributed.process_id={i}']),
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**env, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert 'process 1 of 2' in outs[1][1] or 'process 1 of 2' in outs[0][1]
  multi = _result(outs[0][0])
  ref = _result(single.stdout)
  for key in ('train/loss', 'eval/loss', 'train/grad_norm'):
    np.testing.assert_allclose(multi[key], ref[key], rtol=1e-5, err_msg=key)
  assert os.path.isdir(tmp_path / 'multi' / 'checkpoints' / '3')
