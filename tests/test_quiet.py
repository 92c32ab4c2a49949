"""Every command line is quiet by default (train/cli.py's `quiet`): on stderr only our own lines
(`HH:MM:SS message`, main.py's console format) and `error:` lines; no absl/orbax/TFDS/lm-eval
INFO lines, TensorFlow banners or progress bars. `--verbosity=1` shows the libraries' lines again."""

import json
import logging
import os
import re
import sys

import pytest
from helpers import cpu_env, run, tiny_main_cmd

from train import cli

OWN = re.compile(r'^(\d\d:\d\d:\d\d |error: )')
# INFO lines of libraries that, in our format, would pass OWN: none may show either.
LIBRARY_INFO = (
  'Building contexts',
  'Running loglikelihood',
  'TensorFlow version',
  'Reusing dataset',
)


def _foreign(stderr: str) -> list[str]:
  """stderr's lines (a progress bar's \\r-separated updates each) that are not ours."""
  lines = [line for line in re.split(r'[\r\n]+', stderr) if line.strip()]
  return [l for l in lines if not OWN.match(l) or any(s in l for s in LIBRARY_INFO)]


def _env(devices=None) -> dict:
  """A child's CPU env without the test session's TF_CPP_MIN_LOG_LEVEL: the CLI must set it."""
  env = cpu_env(devices)
  for name in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS', 'TQDM_DISABLE'):
    env.pop(name, None)
  return env


def _check(runs: dict) -> None:
  """Every run exited 0 and wrote no foreign line (all offenders named in the failure)."""
  for name, out in runs.items():
    assert out.returncode == 0, f'{name}: {out.stderr[-3000:]}'
  foreign = {name: _foreign(out.stderr) for name, out in runs.items()}
  assert not any(foreign.values()), {k: v[:5] for k, v in foreign.items() if v}


def _prepare_cmd(data_dir, prepared_dir, *flags) -> list:
  return [
    sys.executable,
    '-m',
    'train.data.prepare',
    '--config=configs/default.py',
    f'--config.data.data_dir={data_dir}',
    f'--config.data.prepared_dir={prepared_dir}',
    '--config.data.max_documents=12',
    *flags,
  ]


def test_filter_passes_ours_and_library_warnings_only():
  def record(name, level, path='/x/site-packages/orbax/checkpoint/manager.py', msg='m'):
    return logging.LogRecord(name, level, path, 1, msg, (), None)

  quiet, verbose = cli.QuietLibraries(), cli.QuietLibraries(verbose=True)
  assert quiet.filter(record('root', logging.INFO, '/repo/train/loop.py'))
  assert not quiet.filter(record('absl', logging.INFO))  # orbax's chatter
  assert not quiet.filter(record('lm_eval.evaluator', logging.INFO, '/x/lm_eval/evaluator.py'))
  assert quiet.filter(record('lm_eval.api.task', logging.WARNING, '/x/lm_eval/api/task.py'))
  tpu = record(
    'jax._src.xla_bridge',
    logging.WARNING,
    '/x/jax/_src/xla_bridge.py',
    "Unable to initialize backend 'tpu': no TPU",
  )
  assert not quiet.filter(tpu) and verbose.filter(tpu)
  assert verbose.filter(record('absl', logging.INFO))


def test_progress_bars_off_and_back_on():
  from tqdm import tqdm

  try:
    cli._progress_bars(show=False)
    assert tqdm(range(2), disable=False).disable  # lm-eval's own disable=False too
    cli._progress_bars(show=True)
    assert not tqdm(range(2), disable=False, file=open(os.devnull, 'w')).disable
  finally:
    cli._progress_bars(show=True)


def test_plan_printing_is_quiet():
  """The default tier's command line: `python -m scaling.sweep` (imports JAX, TFDS and
  TensorFlow; prints the member table) writes nothing foreign on stderr."""
  cmd = [sys.executable, '-m', 'scaling.sweep', '--config=configs/sweeps/isoflop_tiny.py']
  out = run(cmd, _env(1))
  _check({'sweep plan': out})
  assert 'members' in out.stdout


@pytest.mark.slow
def test_prepare_is_quiet_unless_verbose(data_dir, tmp_path):
  """`python -m train.data.prepare` (TFDS, tf.data) writes only our lines; `--verbosity=1` shows
  TFDS's INFO lines again."""
  env = _env(1)
  _check({'prepare': run(_prepare_cmd(data_dir, tmp_path / 'p'), env)})
  loud = run(_prepare_cmd(data_dir, tmp_path / 'v', '--verbosity=1'), env)
  assert loud.returncode == 0 and 'Reusing dataset' in loud.stderr, loud.stderr[-2000:]


def _task_dir(path) -> str:
  """One toy multiple-choice lm-eval task over a local jsonl file (its metric fully specified:
  lm-eval warns about a missing aggregation, in our format, otherwise)."""
  os.makedirs(path)
  docs = [
    {'question': 'import', 'choices': [' os', ' (('], 'label': 0},
    {'question': 'for i in', 'choices': [' range(3):', ' ]]'], 'label': 0},
  ]
  with open(os.path.join(path, 'mc.jsonl'), 'w') as f:
    f.writelines(json.dumps(d) + '\n' for d in docs)
  with open(os.path.join(path, 'toy_mc.yaml'), 'w') as f:
    f.write(
      f'task: toy_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n'
      f'    test: {os.path.join(path, "mc.jsonl")}\ntest_split: test\n'
      'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
      'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
      'metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n'
    )
  return str(path)


@pytest.mark.slow
def test_training_commands_are_quiet(data_dir, trained_workdir, tmp_path):
  """main.py with lm-eval inside the loop (no progress bars), `python -m train.tools.harness` and
  `python -m train.distillation.store` (orbax restores, lm-eval, datasets) write no foreign line."""
  tasks = _task_dir(tmp_path / 'tasks')
  lm_eval = ['--config.lm_eval.tasks=toy_mc', f'--config.lm_eval.include_path={tasks}']
  harness = [sys.executable, '-m', 'train.tools.harness', f'--workdir={trained_workdir}']
  harness += [f'--include_path={tasks}', '--tasks=toy_mc', '--limit=2']
  store = [sys.executable, '-m', 'train.distillation.store', '--config=configs/distill.py:offline']
  store += [f'--workdir={tmp_path / "store"}', f'--config.distill.teacher={trained_workdir}']
  store += [
    f'--config.{k}={v}'
    for k, v in {
      'data.data_dir': data_dir,
      'model.d_model': 16,
      'model.n_layers': 1,
      'model.n_heads': 2,
      'model.d_ff': 32,
      'model.max_len': 32,
      'data.seq_len': 32,
      'train.global_batch_size': 8,
      'train.num_steps': 2,
      'train.checkpoint_every': 2,
      'optimizer.warmup_steps': 1,
      'distill.top_k': 8,
    }.items()
  ]
  runs = {
    'main.py + lm-eval': run(
      tiny_main_cmd(tmp_path / 'w', data_dir, *lm_eval, steps=2, eval_every=2), _env(1)
    ),
    'train.tools.harness': run(harness, _env(1)),
    'train.distillation.store': run(store, _env(1)),
  }
  _check(runs)
  assert 'lm_eval/toy_mc/acc' in runs['main.py + lm-eval'].stdout
