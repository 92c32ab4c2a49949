"""The training loop end to end: exact resume, finished runs, metrics files, main.py CLI."""

import json
import os
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest
from helpers import REPO, cpu_env, main_result, run, tiny_main_cmd

from scaling import results
from train import checkpoint, context, hooks, loop, validation


def _params(workdir, config):
  r = context.setup(validation.derive(config))
  mngr = checkpoint.manager(workdir, config.train)
  abstract = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    jax.eval_shape(lambda: context.init_state(r)),
    r.state_shardings,
  )
  state, _ = checkpoint.restore(mngr, mngr.latest_step(), abstract)
  return int(state.step), jax.device_get(state.params), jax.device_get(state.opt_state)


@pytest.fixture
def own_compilation_cache():
  """The session's compilation cache directory (conftest.py) put back after the test."""
  from jax.experimental.compilation_cache import compilation_cache

  before = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update('jax_compilation_cache_dir', before)
  compilation_cache.reset_cache()


def test_resume_is_bitwise_exact(tiny_config, tmp_path, own_compilation_cache):
  """2n steps straight == n steps, restart, n steps (params and optimizer state, bitwise); the
  split run uses its own train.compilation_cache_dir, so its second half runs the executable
  its first half wrote there."""
  over = {
    'train.num_steps': 4,
    'train.grad_accum_steps': 2,
    'train.global_batch_size': 16,
    'mesh.fsdp': 2,
    'mesh.tensor': 2,
  }
  config = tiny_config(over)
  cache = tmp_path / 'xla_cache'
  straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
  loop.run(validation.derive(config), straight)
  config = tiny_config({**over, 'train.compilation_cache_dir': str(cache)})
  assert loop.run(validation.derive(config), split, stop_after=2)['stopped_at_step'] == 2
  assert _params(split, config)[0] == 2
  assert os.listdir(cache), 'train.compilation_cache_dir: nothing was cached'
  # A row logged after the last checkpoint (a crash between logging and saving) is dropped.
  with open(os.path.join(split, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps({'step': 3, 'train/loss': 0.0}) + '\n')
  events = []
  listener = lambda event, **kw: events.append(event)
  jax.monitoring.register_event_listener(listener)
  try:
    loop.run(validation.derive(config), split)
  finally:
    jax.monitoring.unregister_event_listener(listener)
  assert '/jax/compilation_cache/cache_hits' in events  # the resumed half loaded its step.
  (s1, p1, o1), (s2, p2, o2) = _params(straight, config), _params(split, config)
  assert s1 == s2 == 4
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  jax.tree.map(np.testing.assert_array_equal, o1, o2)
  rows = [json.loads(l) for l in open(os.path.join(split, 'metrics.jsonl'))]
  assert [r['step'] for r in rows] == [2, 4]


def test_nonfinite_loss_stops_before_checkpoint(tiny_config, tmp_path):
  config = tiny_config(
    {
      'optimizer.lr': 1e30,
      'optimizer.grad_clip': 0.0,
      'train.checkpoint_every': 1,
      'train.log_every': 1,
    }
  )
  with pytest.raises(FloatingPointError, match='train/loss'):
    loop.run(validation.derive(config), str(tmp_path))
  steps = sorted(os.listdir(tmp_path / 'checkpoints'))
  last = loop.checkpoint.manager(str(tmp_path), config.train).latest_step()
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(str(tmp_path), config)[1])), (
    steps
  )
  assert last is None or last >= 1


def _main_cmd(workdir, data_dir, **schedule):
  """A tiny main.py command line on the default config, and its environment (2 CPU devices)."""
  return tiny_main_cmd(workdir, data_dir, **schedule), cpu_env(2)


def test_main_cli_trains_writes_outputs_and_resumes(data_dir, tmp_path):
  """`python main.py --config=configs/default.py ...` through the real command line, twice; the
  finished run's result.json holds the metrics it printed."""
  workdir = str(tmp_path / 'w')
  cmd, env = _main_cmd(workdir, data_dir, steps=4, log_every=2, eval_every=4, checkpoint_every=2)
  out = run(cmd, env)
  assert out.returncode == 0, out.stderr[-3000:]
  result = main_result(out.stdout)
  assert result['eval/bits_per_byte'] < result['unigram_byte_entropy_bits'] + 3
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  for key in (
    'step',
    'train/loss',
    'train/lr',
    'train/grad_norm',
    'train/tokens_seen',
    'train/tokens_per_sec',
    'train/mfu',
  ):
    assert key in rows[-1], key
  assert 'eval/loss' in rows[-1] and 'eval/bits_per_byte' in rows[-1]
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(os.path.join(workdir, 'tensorboard'))
  events.Reload()  # TensorBoard's own reader: the loss curve as metrics.jsonl has it.
  tb_loss = [(e.step, e.value) for e in events.Scalars('train/loss')]
  assert tb_loss == [(r['step'], pytest.approx(r['train/loss'])) for r in rows]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert json.load(open(os.path.join(workdir, 'config.json')))['train']['num_steps'] == 4
  assert json.load(open(os.path.join(workdir, results.RESULT_FILE))) == result  # its done-marker.
  again = run(cmd, env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'already finished' in again.stderr
  assert len(open(os.path.join(workdir, 'metrics.jsonl')).readlines()) == len(rows)
  rerun = main_result(again.stdout)
  assert sorted(rerun) == sorted(result)  # the same summary, in strict JSON (no NaN).
  assert 'NaN' not in out.stdout and 'NaN' not in again.stdout
  steps = [l for l in out.stderr.splitlines() if ' step ' in l and ' | loss ' in l]
  assert [l.split(' | ')[0].split()[-1] for l in steps] == ['2/4', '4/4'], out.stderr[-2000:]
  assert 'steps/s' not in out.stderr and 'oneDNN' not in out.stderr


def _main_until(cmd, env, marker, sig=signal.SIGTERM):
  """Starts main.py, sends `sig` once `marker` shows in its log; returns (returncode, stdout, log)."""
  proc = subprocess.Popen(
    cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  log = []
  for line in proc.stderr:
    log.append(line)
    if marker in line:
      proc.send_signal(sig)
      break
  log.extend(proc.stderr)
  stdout = proc.stdout.read()
  return proc.wait(timeout=300), stdout, ''.join(log)


def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(data_dir, tmp_path):
  """A real SIGTERM to a real main.py: it finishes the step it is in, commits a checkpoint of it,
  says so in one line and exits 0 (no result.json: not finished); the same command resumes from
  that step (SIGINT likewise)."""
  workdir = str(tmp_path / 'w')
  cmd, env = _main_cmd(
    workdir, data_dir, steps=5000, log_every=5, eval_every=5000, checkpoint_every=5000
  )
  rc, stdout, log = _main_until(cmd, env, ' | loss ')  # the first logged step (5).
  assert rc == 0, log[-3000:]
  step = main_result(stdout)['preempted_at_step']
  assert 5 <= step < 5000
  assert f'SIGTERM: stopped at step {step}, its checkpoint committed' in log
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(step)]
  assert 'Traceback' not in log
  assert not os.path.exists(os.path.join(workdir, results.RESULT_FILE))  # not finished: no marker.
  rc, stdout, log = _main_until(cmd, env, f'Resumed from step {step}', signal.SIGINT)
  assert rc == 0, log[-3000:]
  assert main_result(stdout)['preempted_at_step'] >= step
  assert 'SIGINT: stopped at step' in log and 'Traceback' not in log
  assert not os.path.exists(os.path.join(workdir, results.RESULT_FILE))


def test_keep_best_and_early_stopping_resume_and_load_everywhere(tiny_config, tmp_path):
  """W/best holds the best evaluation's params (bitwise those of a run stopped there); patience
  stops the run with a checkpoint; a rerun trains no further; init_from=W/best loads them."""
  from train import init_from

  over = {'train.num_steps': 12, 'train.eval_every': 2, 'train.log_every': 2}
  # 'max' of a falling loss: the first evaluation stays best, so patience 2 stops two evals on.
  config = tiny_config({**over, 'train.best_metric': 'eval/loss', 'train.best_mode': 'max'})
  config.train.early_stop_patience = 2
  w = str(tmp_path / 'w')
  loop.run(validation.derive(config), w)
  record = json.load(open(os.path.join(w, 'best', 'record.json')))
  assert record['best_step'] == 2 and record['stopped_at'] == 6
  assert record['best_value'] == max(record['history'].values())
  assert _params(w, config)[0] == 6  # the stopping step is checkpointed.
  rows = open(os.path.join(w, 'metrics.jsonl')).read()
  loop.run(validation.derive(config), w)  # stopped early: a rerun trains nothing.
  assert _params(w, config)[0] == 6 and open(os.path.join(w, 'metrics.jsonl')).read() == rows
  ref = str(tmp_path / 'ref')
  loop.run(validation.derive(tiny_config(over)), ref, stop_after=2)
  _, best = init_from.load_params(os.path.join(w, 'best'))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(best), _params(ref, config)[1])
  # Checkpoints removed, rerun at another lr: W/best's step 2 is replaced (the old one set aside),
  # not kept because the step exists.
  shutil.rmtree(os.path.join(w, 'checkpoints'))
  config.optimizer.lr = 3e-3
  loop.run(validation.derive(config), w)
  record = json.load(open(os.path.join(w, 'best', 'record.json')))
  best_dir = os.path.join(w, 'best')
  meta = checkpoint.restore_meta(checkpoint.manager(best_dir, config.train), 2)
  assert meta['best'] == {'eval/loss': record['best_value']} and record['best_step'] == 2
  _, best2 = init_from.load_params(best_dir)
  assert checkpoint.checksum(best2) != checkpoint.checksum(best)
  assert os.listdir(os.path.join(best_dir, hooks.STALE_DIR))[0].startswith('2-')
  with pytest.raises(ValueError, match="config.train.best_metric='eval/nope' is not measured"):
    loop.run(
      validation.derive(tiny_config({**over, 'train.best_metric': 'eval/nope'})),
      str(tmp_path / 'x'),
    )
  config.train.best_metric = ''
  with pytest.raises(ValueError, match='early_stop_patience needs config.train.best_metric'):
    loop.run(validation.derive(config), str(tmp_path / 'y'))
