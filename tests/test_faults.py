"""Fault injection: `main.py` as a real subprocess against bad input, torn checkpoints, divergence,
a full disk, a read-only workdir and a busy one. Each case asserts the exit code (2 bad input,
1 failed run, 0 recovered), the one `error:` line (no traceback), and that the workdir's
checkpoints, config.json and metrics are unchanged or resumable."""

import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import (
  REPO,
  cpu_env,
  distributed_flags,
  free_port,
  main_result,
  run,
  tiny_main_cmd,
  tmpfs,
)


def _main(cmd, timeout=600):
  """(returncode, stdout, stderr, seconds) of one main.py run."""
  tic = time.time()
  out = run(cmd, cpu_env(2), timeout)
  return out.returncode, out.stdout, out.stderr, time.time() - tic


def _error_line(stderr):
  """The run's single `error:` line; fails on a traceback or on more than one error line."""
  assert 'Traceback' not in stderr, stderr[-3000:]
  lines = [l for l in stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def _snapshot(workdir):
  """sha256 of every file under checkpoints/ plus config.json and metrics.jsonl."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, workdir)
      if rel.startswith('checkpoints') or rel in ('config.json', 'metrics.jsonl'):
        with open(path, 'rb') as f:
          out[rel] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  """A 4-step workdir (checkpoints 2 and 4) and the result of the same run trained straight to 6."""
  base = tmp_path_factory.mktemp('faults')
  workdir, straight = str(base / 'trained'), str(base / 'straight')
  rc, _, err, _ = _main(tiny_main_cmd(workdir, data_dir))
  assert rc == 0, err[-3000:]
  rc, out, err, _ = _main(tiny_main_cmd(straight, data_dir, steps=6))
  assert rc == 0, err[-3000:]
  return workdir, main_result(out)


def _tiny_train():
  from configs import base

  return base.get_config().train


def _copy(trained, tmp_path):
  dest = str(tmp_path / 'w')
  shutil.copytree(trained[0], dest)
  return dest


# --- bad input: one line, exit 2, before any compile --------------------------------------------


@pytest.mark.parametrize(
  'args,expected',
  [
    pytest.param(['--config.train.foo=1'], 'config.train.foo: unknown key', marks=pytest.mark.slow),
    (['--config.model.d_modle=3'], "config.model.d_modle: unknown key (did you mean 'd_model'?"),
    pytest.param(
      ['--config.train.keep_checkpoints=0'],
      'config.train.keep_checkpoints must be positive',
      marks=pytest.mark.slow,
    ),
    pytest.param(
      ['--config.train.eval_every=0'],
      'config.train.eval_every must be positive',
      marks=pytest.mark.slow,
    ),  # (the validation messages are also tested in process; the unknown-key path by d_modle)
    pytest.param(
      ['--config.data.max_documents=-1'],
      'config.data.max_documents must be >= 0',
      marks=pytest.mark.slow,
    ),
    (
      ['--config.data.dataset=stdlib_corpuss'],
      "no such TFDS dataset (did you mean 'stdlib_corpus'?",
    ),
    (  # the parse error once, not again as its cause
      ['--config.train.log_every=x'],
      "flag --config.train.log_every=x: invalid literal for int() with base 10: 'x'; see",
    ),
    pytest.param(
      ['--config.optim.lr=1'],
      "config.optim: unknown key (did you mean 'optimizer'?",
      marks=pytest.mark.slow,
    ),
  ],
)
def test_bad_config_is_one_line_exit_2(args, expected, data_dir, tmp_path):
  rc, _, err, _ = _main(tiny_main_cmd(str(tmp_path / 'w'), data_dir, *args))
  assert rc == 2
  assert expected in _error_line(err)
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


def test_unknown_key_in_a_config_file_says_the_same(data_dir, tmp_path):
  path = tmp_path / 'typo.py'
  path.write_text(
    'from configs import default\n\ndef get_config():\n  c = default.get_config()\n'
    '  c.model.d_modle = 3\n  return c\n'
  )
  cmd = tiny_main_cmd(str(tmp_path / 'w'), data_dir)
  cmd[2] = f'--config={path}'
  rc, _, err, _ = _main(cmd)
  assert rc == 2
  assert "config.model.d_modle: unknown key (did you mean 'd_model'?" in _error_line(err)


def test_missing_or_broken_config_file_names_the_path(data_dir, tmp_path):
  cmd = tiny_main_cmd(str(tmp_path / 'w'), data_dir)
  cmd[2] = '--config=configs/nope.py'
  rc, _, err, _ = _main(cmd)
  assert rc == 2 and "no such file 'configs/nope.py'" in _error_line(err)
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config(:\n  pass\n')
  cmd[2] = f'--config={broken}'
  rc, _, err, _ = _main(cmd)
  assert rc == 2 and f'{broken}:1: invalid syntax' in _error_line(err)


def test_debug_flag_shows_the_traceback(data_dir, tmp_path):
  rc, _, err, _ = _main(
    tiny_main_cmd(str(tmp_path / 'w'), data_dir, '--config.train.eval_every=0', '--debug')
  )
  assert rc != 0 and 'Traceback' in err and 'eval_every must be positive' in err


def test_read_only_workdir_is_refused(data_dir, tmp_path):
  with tmpfs(tmp_path / 'ro', '1m', read_only=True) as ro:
    rc, _, err, _ = _main(tiny_main_cmd(os.path.join(ro, 'w'), data_dir))
  assert rc == 2 and 'cannot be written (Read-only file system)' in _error_line(err)


# --- resume: a rejected resume changes nothing; a bad checkpoint is set aside ---------------------


@pytest.mark.parametrize(
  'args,expected',
  [
    pytest.param(  # (check_meta's messages: tests/train/data/test_data.py)
      ['--config.model.d_model=64'], 'config.model.d_model=128 (now 64)', marks=pytest.mark.slow
    ),
    pytest.param(
      ['--config.data.seq_len=64'], 'config.data.seq_len=128 (now 64)', marks=pytest.mark.slow
    ),
    # An intact checkpoint of another state structure is not corrupt: nothing is set aside.
    (
      ['--config.optimizer.grad_clip=0'],
      'holds another train state than this config builds (42 not built now, e.g. '
      '.opt_state[1][0].count; 42 new, e.g. .opt_state[0][0].count); it was written with '
      'config.optimizer.grad_clip=1.0 (now 0.0)',
    ),
    pytest.param(
      ['--config.train.loss_scale=dynamic'],
      "(2 new, e.g. .loss_scale); it was written with config.train.loss_scale='auto' (now "
      "'dynamic')",
      marks=pytest.mark.slow,
    ),
  ],
)
def test_resume_with_other_shapes_or_state_is_refused_and_changes_nothing(
  args, expected, trained, data_dir, tmp_path
):
  workdir = _copy(trained, tmp_path)
  before = _snapshot(workdir)
  rc, _, err, _ = _main(tiny_main_cmd(workdir, data_dir, *args, steps=6))
  assert rc == 2
  assert expected in _error_line(err)
  assert _snapshot(workdir) == before  # config.json included: the checkpoint still loads.


def _largest_array_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, 'state')) for f in fs]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_array_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def _empty_meta(step_dir):
  open(os.path.join(step_dir, 'meta', 'metadata'), 'w').close()


def _garbage(step_dir):
  """4 KiB of (seeded) random bytes over the middle of every array data file (the issue's case:
  this used to load silently). Where it breaks the encoding the arrays are unreadable; where it
  decodes, the values differ and only the checksums can tell: either is caught."""
  rng = random.Random(0)
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for name in files:
      path = os.path.join(root, name)
      if os.sep + 'd' + os.sep in path and os.path.getsize(path) > 8192:
        with open(path, 'r+b') as f:
          f.seek(os.path.getsize(path) // 2)
          f.write(rng.randbytes(4096))


def _wrong_checksum(step_dir):
  """Bit rot that decodes: one saved checksum no longer matches the arrays."""
  path = os.path.join(step_dir, 'meta', 'metadata')
  meta = json.load(open(path))
  key = sorted(meta['checksum'])[0]
  meta['checksum'][key] = '%016x' % (int(meta['checksum'][key], 16) ^ 1)
  with open(path, 'w') as f:
    json.dump(meta, f)


@pytest.mark.parametrize(
  'corrupt,problem',
  [
    (_truncate, 'unreadable arrays'),
    pytest.param(_empty_meta, 'unreadable metadata', marks=pytest.mark.slow),
    # Garbage bytes hit one of the two detection paths above or below (also tested at init_from).
    pytest.param(_garbage, '(unreadable arrays|checksum mismatch)', marks=pytest.mark.slow),
    (_wrong_checksum, 'checksum mismatch'),
  ],
)
def test_corrupt_latest_checkpoint_is_set_aside_and_the_previous_used(
  corrupt, problem, trained, data_dir, tmp_path
):
  workdir = _copy(trained, tmp_path)
  corrupt(os.path.join(workdir, 'checkpoints', '4'))
  rc, out, err, _ = _main(tiny_main_cmd(workdir, data_dir, steps=6))
  assert rc == 0, err[-3000:]
  assert re.search(f'Checkpoint 4 in {re.escape(workdir)} is corrupt: {problem}', err), err[-3000:]
  assert 'Resumed from step 2' in err and 'Traceback' not in err
  aside = os.listdir(os.path.join(workdir, 'checkpoints.corrupt'))
  assert len(aside) == 1 and aside[0].startswith('4-')  # moved, not deleted.
  # Resuming from step 2 is exact: the same final loss as the run trained straight to 6.
  assert main_result(out)['train/loss'] == trained[1]['train/loss']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '6']


def test_torn_last_metrics_row_is_cut_and_the_run_resumes(trained, data_dir, tmp_path):
  """A crash mid-write leaves half a row (or a NUL-filled tail): cut back to the last complete
  row with a warning naming the file and the bytes dropped, never more than the torn row."""
  workdir = _copy(trained, tmp_path)
  path = os.path.join(workdir, 'metrics.jsonl')
  torn = b'{"step": 45, "train/lo'
  with open(path, 'ab') as f:
    f.write(torn)
  rc, _, err, _ = _main(tiny_main_cmd(workdir, data_dir, steps=6))
  assert rc == 0, err[-3000:]
  assert f'{path} ends in a torn row ({len(torn)} bytes' in err, err[-3000:]
  assert [json.loads(line)['step'] for line in open(path)] == [2, 4, 6]
  from train import metrics  # a NUL tail (a power cut), in process: the rows before it stay.

  with open(path, 'rb') as f:
    rows = f.read()
  with open(path, 'ab') as f:
    f.write(b'\0' * 512)
  metrics.truncate_jsonl(path, 6)
  with open(path, 'rb') as f:
    assert f.read() == rows


def test_bad_init_from_changes_nothing_in_the_workdir(trained, data_dir, tmp_path):
  """init_from is loaded before the workdir is touched: metrics and config.json stay as they
  were (a workdir with metrics but no checkpoint yet), and a fresh workdir is not created."""
  workdir = _copy(trained, tmp_path)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  before = _snapshot(workdir)
  missing = str(tmp_path / 'no_such_run')
  rc, _, err, _ = _main(tiny_main_cmd(workdir, data_dir, f'--config.init_from={missing}'))
  assert rc == 2
  assert missing in _error_line(err)
  assert _snapshot(workdir) == before and not os.path.exists(os.path.join(workdir, 'checkpoints'))
  fresh = str(tmp_path / 'fresh')
  rc, _, err, _ = _main(tiny_main_cmd(fresh, data_dir, f'--config.init_from={missing}'))
  assert rc == 2 and missing in _error_line(err)
  assert not os.path.exists(fresh)


# --- failed runs: one line, exit 1, the last good checkpoint kept ---------------------------------


@pytest.mark.slow  # (12 s; the guard in process by default: test_guard_spike_nonfinite_...)
def test_loss_spike_stops_before_checkpointing(data_dir, tmp_path):
  """lr=10 without clipping: the loss jumps from 5.4 to ~1.6e3 (finite) at step 3."""
  workdir = str(tmp_path / 'w')
  rc, _, err, _ = _main(
    tiny_main_cmd(
      workdir,
      data_dir,
      '--config.optimizer.lr=10',
      '--config.optimizer.grad_clip=0',
      '--config.optimizer.schedule=constant',
      '--config.train.log_every=1',
      '--config.train.checkpoint_every=1',
      steps=8,
    )
  )
  assert rc == 1
  line = _error_line(err)
  assert 'at step 3 is above 10 x its running median' in line
  assert f'the last good checkpoint (step 2) in {workdir} is kept' in line
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1', '2']


def test_disk_full_keeps_the_last_checkpoint_and_resumes(data_dir, tmp_path):
  """A 4 MiB filesystem holds checkpoint 2 (~2.8 MB) but not 4: exit 1, 2 intact and loadable."""
  with tmpfs(tmp_path / 'small', '4m') as small:
    workdir = os.path.join(small, 'w')
    rc, _, err, _ = _main(tiny_main_cmd(workdir, data_dir))
    assert rc == 1
    assert (
      f'disk full writing {workdir}; its last committed checkpoint (step 2) is kept'
      in _error_line(err)
    )
    moved = str(tmp_path / 'moved')
    shutil.copytree(workdir, moved)  # "free space": the same workdir, on a disk with room.
  # Checkpoint 2 is whole: it loads and matches its checksums (resuming from it is exact, as the
  # corrupt-checkpoint tests show end to end).
  from train import checkpoint, init_from

  assert checkpoint.restore_meta(checkpoint.manager(moved, _tiny_train()), 2)['checksum']
  init_from.load_params(moved)


def test_an_eval_set_with_no_scored_token_is_an_error_not_a_zero_loss(monkeypatch):
  """Every validation completion cut off: no mean of nothing reported as loss 0.0 (which
  best_metric would keep as the best), but one line naming the source and the knobs."""
  import types

  from train import context, evaluators

  monkeypatch.setattr(context, 'global_batch', lambda r, arrays: arrays)
  source = types.SimpleNamespace(eval_arrays=lambda i: {})
  r = types.SimpleNamespace(
    eval_ds=types.SimpleNamespace(sources={'chat': source}, metrics=lambda means: means),
    config=types.SimpleNamespace(
      train=types.SimpleNamespace(eval_batches=2), data=types.SimpleNamespace(seq_len=32)
    ),
  )
  step = lambda params, batch: {'loss': np.float32(0.0), 'tokens': np.float32(0.0)}
  with pytest.raises(ValueError, match="data source 'chat' hold no scored token .*seq_len=32"):
    evaluators.evaluate(r, step, None, ())


def test_a_teacher_store_on_a_full_disk_is_one_error_not_a_bus_error(tmp_path):
  """The store's memmapped files are allocated up front: a disk too small is ENOSPC (exit 1 via
  the command line's boundary) at the start, not SIGBUS when a page is written later."""
  from train import cli
  from train.distillation import store as distill_store

  with tmpfs(tmp_path / 'small', '256k') as small:
    with pytest.raises(OSError) as e:
      distill_store._Writer(
        os.path.join(small, 'store'),
        {'process_index': 0, 'process_count': 1},
        {'logits': ('float16', (64, 8, 1024))},  # 1 MiB
      )
  assert e.value.errno == errno.ENOSPC and 'disk full reserving 1,048,' in str(e.value)
  assert cli.exit_code(e.value) == cli.RUN_FAILED


def test_second_run_on_a_busy_workdir_is_refused(data_dir, tmp_path):
  """A workdir held by another process (here this test's, through the same claim a run makes;
  a training run holding it: SIGTERM tests of test_loop) is refused with its holder named."""
  from train import workdir as workdir_lib

  workdir = str(tmp_path / 'w')
  lock = workdir_lib.claim(workdir)
  try:
    rc, _, err, _ = _main(tiny_main_cmd(workdir, data_dir))
  finally:
    lock.close()
  assert rc == 2
  assert f'--workdir={workdir} is in use by another run (pid {os.getpid()}' in _error_line(err)
  assert sorted(os.listdir(workdir)) == ['.lock']  # nothing else written.


@pytest.mark.slow  # (23 s; the first-signal path is in the default run: tests/train/test_loop.py)
def test_second_sigterm_exits_at_once_and_the_workdir_still_resumes(data_dir, tmp_path):
  """Two SIGTERMs in a row: the second kills the process (no clean stop), yet only committed
  checkpoints exist, and the same command resumes."""
  workdir = str(tmp_path / 'w')
  cmd = tiny_main_cmd(
    workdir,
    data_dir,
    '--config.train.log_every=5',
    '--config.train.checkpoint_every=5',
    '--config.train.eval_every=1000',
    steps=100000,
  )
  proc = subprocess.Popen(
    cmd, cwd=REPO, env=cpu_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  logged = 0
  for line in proc.stderr:  # step 15: the save of 10 has begun, so 5 has committed.
    logged += ' | loss ' in line
    if logged == 3:
      break
  proc.send_signal(signal.SIGTERM)
  for line in proc.stderr:
    if 'SIGTERM received' in line:
      proc.send_signal(signal.SIGTERM)
      break
  proc.communicate(timeout=120)
  assert proc.returncode == -signal.SIGTERM
  committed = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()]
  assert committed and min(committed) >= 5
  rc, _, err, _ = _main(cmd + ['--config.train.num_steps=100'])
  assert rc == 0, err[-3000:]
  assert f'Resumed from step {max(committed)}' in err and 'corrupt' not in err
  assert all(d.isdigit() for d in os.listdir(os.path.join(workdir, 'checkpoints')))


def test_a_state_of_other_shapes_at_the_same_paths_is_refused_not_set_aside():
  """The structure check also compares the shapes orbax recorded (e.g. a checkpoint written
  before checksums, or a change the run metadata does not name): StateMismatch, a ValueError."""
  import jax

  from train import checkpoint

  state = {'params': {'w': jax.ShapeDtypeStruct((4, 8), 'float32')}}
  checkpoint.check_structure(None, state, 4, 'W', {'params.w': (4, 8)})  # the same: passes.
  with pytest.raises(
    checkpoint.StateMismatch, match=r'1 of other shapes, e.g. params.w is \(4, 16\) there'
  ):
    checkpoint.check_structure(None, state, 4, 'W', {'params.w': (4, 16)})


def test_out_of_memory_is_not_a_full_disk():
  """XLA's allocation failure and TensorStore's full disk both say RESOURCE_EXHAUSTED: told apart
  by what ran out, and out of memory exits 1 (run failed) as its own one-line error."""
  from train import cli, loop

  oom = RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB.')
  disk = RuntimeError('RESOURCE_EXHAUSTED: Error writing local file "/w/ocdbt.process_0/d/x"')
  assert loop._out_of_memory(oom) and not loop._disk_full(oom)
  assert loop._disk_full(disk) and not loop._out_of_memory(disk)
  assert loop._disk_full(OSError(28, 'No space left on device'))
  assert cli.exit_code(loop.OutOfMemory('out of device memory')) == cli.RUN_FAILED


def test_guard_spike_nonfinite_and_skipped_steps():
  from train import divergence

  g = divergence.Guard(factor=10.0, window=3, vocab_size=257)
  with pytest.raises(divergence.Diverged, match='above 10 x its running median 5.549'):
    g.check(1, {'train/loss': 60.0}, 'W', None)  # before any history: ln(257) is the reference.
  for loss in (5.0, 3.0, 2.0, 1.0):
    g.check(2, {'train/loss': loss, 'train/grad_norm': 1.0}, 'W', 1)
  g.check(3, {'train/loss': 19.0}, 'W', 2)  # median of (3, 2, 1) is 2: 19 < 20 passes.
  with pytest.raises(divergence.Diverged, match=r'step 4 .*checkpoint \(step 3\) in W is kept'):
    g.check(4, {'train/loss': 1e13}, 'W', 3)
  with pytest.raises(divergence.Diverged, match='grad_norm is inf'):
    g.check(5, {'train/loss': 2.0, 'train/grad_norm': float('inf')}, 'W', 3)
  # A float16 step skipped by the loss scaler reports an infinite grad norm by design.
  g.check(6, {'train/loss': 2.0, 'train/grad_norm': float('inf'), 'train/skipped': 1.0}, 'W', 3)


def test_checksum_sees_one_flipped_bit_and_ignores_sharding():
  import jax
  import numpy as np

  from train import checkpoint

  x = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
  state = {'w': x, 'b': np.arange(7, dtype=np.int32), 'h': x.astype(jax.numpy.bfloat16)}
  ref = checkpoint.checksum(state)
  mesh = jax.make_mesh((4, 2), ('a', 'b'))
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P('a', 'b')))
  assert checkpoint.checksum({**state, 'w': sharded}) == ref
  flipped = x.copy()
  flipped.view(np.uint32)[17, 5] ^= 1 << 3
  got = checkpoint.checksum({**state, 'w': flipped})
  assert got["['w']"] != ref["['w']"] and got["['b']"] == ref["['b']"]


def test_init_from_and_teacher_loading_refuse_a_corrupt_checkpoint(trained, tmp_path):
  """`init_from.load_params` (init_from=W and distillation teachers) verifies the checksums too."""
  from train import init_from

  init_from.load_params(trained[0])  # intact: loads.
  workdir = _copy(trained, tmp_path)
  _garbage(os.path.join(workdir, 'checkpoints', '4'))
  with pytest.raises(ValueError, match=f'{workdir}: checkpoint 4 is corrupt'):
    init_from.load_params(workdir)
  # An intact checkpoint whose config.json was edited is not corrupt: the line says what differs.
  edited = _copy(trained, tmp_path / 'edited')
  config = json.load(open(os.path.join(edited, 'config.json')))
  config['model']['d_model'] = 64
  json.dump(config, open(os.path.join(edited, 'config.json'), 'w'))
  with pytest.raises(
    ValueError,
    match=re.escape(f'{edited}/config.json disagrees with checkpoint 4: params.embed is'),
  ):
    init_from.load_params(edited)


# --- issue 24: memory, start-up signals, unreadable files, workdir paths ------------------------


_CLI_CASES = [
  (
    ['-m', 'scaling.parallel', '--config=/no/such.py', '--workdir=W'],
    2,
    "--config=/no/such.py: no such file '/no/such.py'",
  ),
  (['-m', 'train.data.toy_sft', '--out=FILE'], 2, 'FILE: File exists'),
  pytest.param(['-m', 'scaling.sweep', '--config=RAISING'], 2, 'boom', marks=pytest.mark.slow),
  pytest.param(
    [
      '-m',
      'train.distillation.store',
      '--config=configs/distill.py',
      '--workdir=W',
      '--config.foo=1',
    ],
    2,
    "--config.foo: unknown key 'foo'",
    marks=pytest.mark.slow,
  ),
]


@pytest.mark.parametrize('args,code,expected', _CLI_CASES)
def test_every_command_line_ends_bad_input_in_one_line(args, code, expected, tmp_path):
  """The shared boundary (train/cli.py `run`): a missing or raising config file, an unknown
  override, an --out that is a file: one `error:` line and exit 2, never a traceback."""
  (tmp_path / 'FILE').write_text('x')
  (tmp_path / 'raising.py').write_text("def get_config():\n  raise RuntimeError('boom')\n")
  subs = {
    'W': str(tmp_path / 'w'),
    'FILE': str(tmp_path / 'FILE'),
    'RAISING': str(tmp_path / 'raising.py'),
  }
  args = [re.sub(r'\b(W|FILE|RAISING)\b', lambda m: subs[m.group(1)], a) for a in args]
  out = run([sys.executable, *args], cpu_env(1))
  assert out.returncode == code, out.stderr[-2000:]
  line = _error_line(out.stderr)
  assert re.sub(r'\b(W|FILE|RAISING)\b', lambda m: subs[m.group(1)], expected) in line, line


def _as_a_shell_starts_it():
  """SIGINT at its default and unblocked in the child, as a terminal starts a command: in the full
  suite an xdist worker can hand its children SIGINT ignored, and Python then never raises
  KeyboardInterrupt."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_in_any_command_line_is_one_line_and_exit_130(tmp_path):
  """SIGINT to a command line run through train/cli.run (a real signal to a real process, whose
  main waits as a long tool would): `error: interrupted (Ctrl-C)`, exit 130, no traceback."""
  script = (
    'import sys, time\nfrom train import cli\n'
    "def main(argv):\n  print('ready', flush=True)\n  time.sleep(60)\n"
    'cli.run(main)\n'
  )
  proc = subprocess.Popen(
    [sys.executable, '-c', script], cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE,
    stderr=subprocess.PIPE, text=True, preexec_fn=_as_a_shell_starts_it,
  )  # fmt: skip
  assert proc.stdout.readline().strip() == 'ready'
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130 and _error_line(err) == 'error: interrupted (Ctrl-C)', err


def test_a_distributed_start_whose_peers_never_come_gives_up_in_one_line(data_dir, tmp_path):
  """Process 0 of 2 alone: after config.distributed.timeout_s one line and exit 1, instead of
  JAX's C++ abort with a stack trace after 5 minutes; the workdir was never created."""
  workdir = str(tmp_path / 'w')
  address = f'localhost:{free_port()}'
  rc, _, err, seconds = _main(
    tiny_main_cmd(
      workdir,
      data_dir,
      *distributed_flags(int(address.split(':')[1]), 0),
      '--config.distributed.timeout_s=3',
    )
  )
  assert rc == 1 and seconds < 60
  assert f'process 0 of 2 waited 3 s for the others at {address}' in _error_line(err)
  assert not os.path.exists(workdir)


@pytest.mark.parametrize(
  'flag,advice',
  [
    ('--config.model.d_model=1000000000', 'config.mesh.fsdp'),
    # The probe's case: an eval batch that passed the estimate and died as "disk full".
    pytest.param(
      '--config.train.eval_batch_size=2000000',
      'config.train.eval_batch_size',
      marks=pytest.mark.slow,
    ),
  ],
)
def test_a_step_that_cannot_fit_is_refused_before_anything(flag, advice, data_dir, tmp_path):
  """d_model=1e9 (it used to abort inside XLA after writing config.json), or an eval batch of 2M
  rows: the estimate, from shapes only, refuses it in one line; the workdir is not even created."""
  workdir = str(tmp_path / 'w')
  rc, _, err, _ = _main(tiny_main_cmd(workdir, data_dir, flag))
  assert rc == 2
  line = _error_line(err)
  assert 'memory per device (GiB)' in line and 'the step does not fit' in line
  assert advice in line and not os.path.exists(workdir)


def test_sigterm_during_start_up_exits_at_once_with_the_workdir_intact(trained, data_dir, tmp_path):
  """A real SIGTERM while the run sets up (data, init_from, restore): no step to finish, so it
  stops at once (128 + SIGTERM) with the checkpoints and metrics as they were."""
  workdir = _copy(trained, tmp_path)
  before = {k: v for k, v in _snapshot(workdir).items() if k != 'config.json'}
  proc = subprocess.Popen(
    tiny_main_cmd(workdir, data_dir, steps=6),
    cwd=REPO,
    env=cpu_env(2),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  log = []
  for line in proc.stderr:  # the memory line: validated, nothing built yet.
    log.append(line)
    if 'memory per device' in line:
      proc.send_signal(signal.SIGTERM)
      break
  log.extend(proc.stderr)
  proc.communicate(timeout=120)
  log = ''.join(log)
  assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
  assert 'SIGTERM received during start-up: stopped before the first step' in log
  assert 'Traceback' not in log and ' | loss ' not in log
  assert {k: v for k, v in _snapshot(workdir).items() if k != 'config.json'} == before
  assert not os.path.exists(os.path.join(workdir, '.lock')) or not _locked(workdir)


def _locked(workdir):
  """Whether some process still holds workdir/.lock."""
  import fcntl

  with open(os.path.join(workdir, '.lock')) as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      return True
  return False


def test_stop_request_raises_until_the_state_is_ready_and_waits_after():
  from train import preemption

  with pytest.raises(preemption.Interrupted, match='SIGTERM received during start-up') as e:
    with preemption.StopRequest():
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)  # (the handler runs at once; never reached)
  assert e.value.exit_code == 128 + signal.SIGTERM
  with preemption.StopRequest() as stop:
    stop.ready()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.should_stop(1) and stop.signal == 'SIGTERM'


def _tiny_hf(tmp_path):
  import transformers
  from helpers import HF_GPT2, make_hf, save

  return save(make_hf(transformers.GPT2Config, {**HF_GPT2, 'vocab_size': 257}), tmp_path / 'hf')


@pytest.mark.parametrize(
  'damage',
  [
    lambda p: os.truncate(p, os.path.getsize(p) // 2),
    lambda p: os.truncate(p, 0),
    lambda p: open(p, 'r+b').write(b'\xff' * 16),  # the header's length and first bytes.
  ],
  ids=['truncated', 'emptied', 'header'],
)
def test_unreadable_hf_weights_name_the_file(damage, tmp_path):
  from models import hf

  path = _tiny_hf(tmp_path)
  weights = os.path.join(path, 'model.safetensors')
  damage(weights)
  with pytest.raises(ValueError, match=f'{re.escape(weights)}: not a readable safetensors file'):
    hf.import_checkpoint(path)


def test_unparsable_json_names_its_path(tmp_path):
  """A half-written config.json: an HF directory's (init_from, train.tools.sample) and a
  workdir's."""
  from models import hf
  from train import init_from

  path = _tiny_hf(tmp_path)
  config = os.path.join(path, 'config.json')
  with open(config, 'r+') as f:
    f.truncate(len(f.read()) // 2)
  with pytest.raises(ValueError, match=f'{re.escape(config)}: not valid JSON'):
    hf.read_config(path)
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  open(os.path.join(workdir, 'config.json'), 'w').close()
  with pytest.raises(ValueError, match=f'{re.escape(workdir)}/config.json: not valid JSON'):
    init_from.workdir_model_config(workdir)


def test_hf_config_whose_layer_count_disagrees_with_the_weights_is_refused(tmp_path):
  from models import hf

  path = _tiny_hf(tmp_path)
  config = os.path.join(path, 'config.json')
  hf_config = json.load(open(config))
  with open(config, 'w') as f:
    json.dump({**hf_config, 'n_layer': 3}, f)
  with pytest.raises(ValueError, match='says 3 layers but the weights .* hold 2'):
    hf.import_checkpoint(path)


def test_sweep_member_with_an_empty_json_is_rerun_the_others_proceed(tmp_path, monkeypatch, caplog):
  from scaling import sweep

  config = _sweep_file_config('configs/sweeps/isoflop_tiny.py')
  a, b, c = sweep.members(config)[:3]
  workdir = str(tmp_path)
  for m in (a, b):
    os.makedirs(os.path.join(workdir, m.name))
  for name in ('sweep_member.json', 'result.json'):
    open(os.path.join(workdir, a.name, name), 'w').close()  # a crash mid-write, emptied.
  # c: its meta emptied beside a checkpoint: which config made it can't be told; skipped.
  os.makedirs(os.path.join(workdir, c.name, 'checkpoints', '5'))
  open(os.path.join(workdir, c.name, 'sweep_member.json'), 'w').close()
  ok = {**b.info, 'loss': 2.5, 'bits_per_byte': 3.0, 'wall_s': 1.0, 'status': 'ok'}
  sweep.workdir_lib.write_json(
    os.path.join(workdir, b.name, 'result.json'), {**ok, 'config_hash': b.config_hash}
  )
  trained_members = []

  def train(m, *args, **kwargs):
    trained_members.append(m.name)
    return {'eval/loss': 2.0, 'eval/bits_per_byte': 3.0}

  monkeypatch.setattr(sweep, '_train', train)
  config.sweep.member = -1  # every member: the damaged one does not block the others.
  summary = sweep.run(config, workdir)
  assert a.name in trained_members and not {b.name, c.name} & set(trained_members)
  assert summary['skipped'] == [b.name] and summary['failed'] == [c.name]
  assert summary['finished'] == len(sweep.members(config)) - 1
  assert f'{os.path.join(workdir, a.name, "result.json")} is not valid JSON' in caplog.text
  assert f'{os.path.join(workdir, c.name, "sweep_member.json")} does not parse' in caplog.text


def _sweep_file_config(path):
  """get_config() of a config file, loaded by path as config_flags does."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    os.path.basename(path)[:-3], os.path.join(REPO, path)
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def test_workdir_paths_are_checked_before_anything_is_created(tmp_path):
  """A `checkpoints` that is a regular file, and a path over the OS limit (nothing created)."""
  from train import workdir as workdir_lib

  workdir = tmp_path / 'w'
  workdir.mkdir()
  for name in ('checkpoints', 'checkpoints.corrupt', 'tensorboard'):
    (workdir / name).write_text('')
    with pytest.raises(ValueError, match=f'{re.escape(str(workdir))}/{name} is a file'):
      workdir_lib.check(str(workdir))
    (workdir / name).unlink()
  deep = os.path.join(str(tmp_path / 'deep'), *['d' * 200] * 21)
  with pytest.raises(ValueError, match='path too long'):
    workdir_lib.check(deep)
  with pytest.raises(ValueError, match='path too long'):
    workdir_lib.check(str(tmp_path / ('n' * 300)))
  assert not os.path.exists(tmp_path / 'deep')


def test_metrics_rows_without_a_checkpoint_are_dropped_with_a_warning(tmp_path, caplog):
  from train import metrics

  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'w') as f:
    f.writelines(json.dumps({'step': s, 'train/loss': 1.0}) + '\n' for s in (2, 4, 6))
  metrics.truncate_jsonl(path, 0)
  assert 'no checkpoint to resume from, starting again at step 0; dropped its 3 rows' in caplog.text
  assert 'up to step 6' in caplog.text and open(path).read() == ''
  for bad in ('null', '{"foo": 1}', '[1, 2]'):  # valid JSON, not a row: named, nothing changed.
    text = f'{{"step": 2}}\n{bad}\n{{"step": 4}}\n'
    open(path, 'w').write(text)
    with pytest.raises(ValueError, match=f'{path}: line 2 is not a metrics row'):
      metrics.truncate_jsonl(path, 4)
    assert open(path).read() == text


@pytest.mark.slow
def test_compress_killed_mid_write_reruns_to_the_same_result(trained_workdir, tmp_path):
  """`python -m train.tools.compress` killed with SIGKILL while its staging directory exists leaves
  no OUT; the same command again finishes, and its record and weights equal an uninterrupted
  run's."""
  from train import init_from

  def cmd(out):
    return [sys.executable, '-m', 'train.tools.compress', f'--workdir={trained_workdir}',
            f'--out={out}', '--prune=mlp:32', '--calib_batches=1']  # fmt: skip

  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  assert run(cmd(straight), cpu_env(2), 600).returncode == 0
  proc = subprocess.Popen(cmd(killed), cwd=REPO, env=cpu_env(2), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
  while not os.path.isdir(killed + '.partial'):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.005)
  proc.kill()
  assert proc.wait() == -signal.SIGKILL
  assert not os.path.exists(killed)  # nothing half-written under OUT's name.
  out = run(cmd(killed), cpu_env(2), 600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert not os.path.exists(killed + '.partial')
  # Time and bytes on disk (orbax's file layout, not the values) may differ; the params are
  # compared bitwise below.
  record = lambda d: {k: v for k, v in json.load(open(os.path.join(d, 'compress.json'))).items()
                      if k not in ('wall_s', 'bytes_on_disk')}  # fmt: skip
  assert record(killed) == record(straight)
  (c1, p1), (c2, p2) = init_from.load_params(straight), init_from.load_params(killed)
  assert c1 == c2
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
