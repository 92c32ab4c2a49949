"""Input-pipeline benchmark: preparation time, a training host's start-up time and memory, and the
reader's tokens/s, on a synthetic on-disk corpus at 1x and 10x size (>= 1B tokens at 10x).

  python -m bench.data --root=/tmp/lmscale_data_bench [--sizes=bench_1x,bench_10x] [--keep]

For each size of the `synthetic_prose` TFDS corpus (train/data/synthetic_corpus.py, byte tokens,
about 104M and 1.04B tokens) it builds the TFDS dataset under --root, prepares it with
`python -m train.data.prepare --workers=N` (timed), then in fresh processes (median of 3) measures,
with GPT-2 124M's data shape (configs/gpt2.py:124m: seq_len 1024, here a global batch of 32 read by
one host): the data layer's start-up (make_datasets + first batch, at step 0 and at a resume far
into training), resident memory, and tokens/s read by `TrainStream.batch` (sequential steps with
grain reader threads, and random access without). The trainer's consumption to compare with is
docs/performance.md's measured H100 figure for GPT-2 124M. --root is deleted at the end unless --keep.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from absl import app, flags

_ROOT = flags.DEFINE_string('root', '/tmp/lmscale_data_bench', 'Scratch directory (deleted).')
_SIZES = flags.DEFINE_list('sizes', ['bench_1x', 'bench_10x'], 'synthetic_prose configs.')
_WORKERS = flags.DEFINE_integer('workers', 2, 'Local processes for `train.data.prepare`.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Sequential steps timed per reader measurement.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Fresh measuring processes per size (median).')
_KEEP = flags.DEFINE_bool('keep', False, 'Keep --root (the corpora and shards) afterwards.')
_MEASURE = flags.DEFINE_string('measure', '', 'Internal: measure one size in this process.')

# docs/performance.md, "One H100": one H100 80GB, gpt2 124m, bf16, cuDNN attention, vocab 50304, batch 64 x 1024
# (the fastest GPT-2 124M row of its table).
TRAINER_TOKENS_PER_SEC = 345_497


def _config(root: str, size: str, read_threads: int = 4):
  # Lazy: it imports models (flax); measure() times the data layer's import before that.
  from configs import gpt2

  c = gpt2.get_config('124m')
  c.data.update(
    dataset=f'synthetic_prose/{size}',
    data_dir=os.path.join(root, 'tfds'),
    prepared_dir=os.path.join(root, 'prepared'),
    read_threads=read_threads,
  )
  c.train.update(global_batch_size=32, grad_accum_steps=1)
  return c


def _overrides(root: str, size: str) -> list[str]:
  c = _config(root, size)
  return [
    '--config=configs/gpt2.py:124m',
    f'--config.data.dataset={c.data.dataset}',
    f'--config.data.data_dir={c.data.data_dir}',
    f'--config.data.prepared_dir={c.data.prepared_dir}',
    '--config.train.global_batch_size=32',
    '--config.train.grad_accum_steps=1',
  ]


def _status_mb(key: str = 'VmRSS') -> float:
  """This process's resident (VmRSS) or peak resident (VmHWM) memory in MiB."""
  with open('/proc/self/status') as f:
    kb = next(int(line.split()[1]) for line in f if line.startswith(key + ':'))
  return kb / 1024


def _du(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def measure(root: str, size: str, steps: int) -> dict:
  """One size, in this (fresh) process: start-up, memory and reader tokens/s of the data layer."""
  # Lazy, in this order: JAX first (the trainer has it loaded before its data; not counted as
  # start-up), then the timed import of the data layer.
  import jax  # noqa: F401

  tic = time.perf_counter()
  from train.data import pipeline

  import_s = time.perf_counter() - tic
  config, config0 = _config(root, size), _config(root, size, read_threads=0)
  before = _status_mb()
  tic = time.perf_counter()
  train_ds, _, _ = pipeline.make_datasets(config, 0, 1)
  make_s = time.perf_counter() - tic
  train_ds.batch(0)
  first_s = time.perf_counter() - tic - make_s
  tic = time.perf_counter()
  resumed, _, _ = pipeline.make_datasets(config0, 0, 1)
  resumed.batch(1_000_000)  # a resume a million steps (32G tokens, 30+ epochs) in.
  resume_s = time.perf_counter() - tic
  after_startup = _status_mb()
  tokens_per_batch = 32 * 1024
  train_ds.batch(1)  # sequential from here: grain threads read ahead.
  tic = time.perf_counter()
  for s in range(2, 2 + steps):
    train_ds.batch(s)
  sequential = steps * tokens_per_batch / (time.perf_counter() - tic)
  tic = time.perf_counter()
  for s in range(steps // 3):
    resumed.batch(7919 * s + 13)  # jumps: every batch read on demand, no read-ahead.
  random_access = (steps // 3) * tokens_per_batch / (time.perf_counter() - tic)
  split = train_ds.splits[0]
  return {
    'train_tokens': split.num_tokens,
    'shards': split.num_shards,
    'import_s': import_s,
    'make_datasets_s': make_s,
    'first_batch_s': first_s,
    'resume_s': resume_s,
    'rss_before_mb': before,
    'rss_after_startup_mb': after_startup,
    'rss_after_reading_mb': _status_mb(),
    'peak_rss_mb': _status_mb('VmHWM'),
    'reader_tokens_per_s': sequential,
    'random_access_tokens_per_s': random_access,
  }


def _build_and_prepare(root: str, size: str, workers: int) -> dict:
  """Build the TFDS corpus (not timed as preparation) and run the prepare command (timed)."""
  # Lazy: TFDS (TensorFlow) is heavy and not for the measuring processes.
  import tensorflow_datasets as tfds

  from train.data import synthetic_corpus  # noqa: F401  (registers the builder)

  tfds.disable_progress_bar()
  tic = time.perf_counter()
  builder = tfds.builder(f'synthetic_prose/{size}', data_dir=os.path.join(root, 'tfds'))
  builder.download_and_prepare()
  build_s = time.perf_counter() - tic
  cmd = [
    sys.executable,
    '-m',
    'train.data.prepare',
    *_overrides(root, size),
    f'--workers={workers}',
  ]
  tic = time.perf_counter()
  out = subprocess.run(
    cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  )
  prep_s = time.perf_counter() - tic
  if out.returncode:
    raise RuntimeError(f'prepare failed: {out.stderr[-3000:]}')
  prepared = os.path.join(root, 'prepared', f'synthetic_prose_{size}')
  return {
    'tfds_build_s': build_s,
    'tfds_bytes': _du(builder.data_dir),
    'prep_s': prep_s,
    'prepared_bytes': _du(prepared),
    'prepare_stdout': out.stdout.strip(),
  }


def _table(results: dict) -> str:
  """The markdown table of docs/data.md, one column per size."""
  vs = lambda tps: f'{tps / 1e6:.1f}M ({tps / TRAINER_TOKENS_PER_SEC:.0f}x the trainer)'
  rows = [
    ('train tokens', lambda r: f'{r["train_tokens"] / 1e6:,.0f}M'),
    (
      'token shards on disk',
      lambda r: f'{r["prepared_bytes"] / 2**30:.2f} GiB in {r["shards"]} shards',
    ),
    (
      'preparation (`prepare --workers=2`, both splits)',
      lambda r: f'{r["prep_s"]:.0f} s ({r["train_tokens"] / r["prep_s"] / 1e6:.1f}M tokens/s)',
    ),
    ('host start-up: import the data layer (grain)', lambda r: f'{r["import_s"]:.2f} s'),
    (
      'host start-up: make_datasets (train + eval)',
      lambda r: f'{r["make_datasets_s"] * 1e3:.0f} ms',
    ),
    ('host start-up: first batch (32 rows)', lambda r: f'{r["first_batch_s"] * 1e3:.1f} ms'),
    ('resume at step 1,000,000: make_datasets + batch', lambda r: f'{r["resume_s"] * 1e3:.1f} ms'),
    (
      'host RSS: before data / after start-up / after reading / peak',
      lambda r: f'{r["rss_before_mb"]:.0f} / {r["rss_after_startup_mb"]:.0f} / '
      f'{r["rss_after_reading_mb"]:.0f} / {r["peak_rss_mb"]:.0f} MiB',
    ),
    ('reader tokens/s, sequential steps (4 grain threads)', lambda r: vs(r['reader_tokens_per_s'])),
    (
      'reader tokens/s, random steps (no read-ahead)',
      lambda r: vs(r['random_access_tokens_per_s']),
    ),
  ]
  sizes = list(results)
  lines = [
    '| | ' + ' | '.join(s.replace('bench_', '') for s in sizes) + ' |',
    '|---|' + '---|' * len(sizes),
  ]
  lines += [
    f'| {name} | ' + ' | '.join(fmt(results[s]) for s in sizes) + ' |' for name, fmt in rows
  ]
  lines.append(
    '| trainer tokens/s (docs/performance.md: one H100, GPT-2 124M) | '
    + ' | '.join(f'{TRAINER_TOKENS_PER_SEC:,}' for _ in sizes)
    + ' |'
  )
  return '\n'.join(lines)


def main(argv):
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  root = _ROOT.value
  if _MEASURE.value:
    print(json.dumps(measure(root, _MEASURE.value, _STEPS.value)), flush=True)
    return
  results = {}
  try:
    for size in _SIZES.value:
      r = _build_and_prepare(root, size, _WORKERS.value)
      print(f'{size}: built in {r["tfds_build_s"]:.0f} s; {r["prepare_stdout"]}', flush=True)
      runs = []
      for _ in range(_REPEATS.value):  # fresh processes; the median of each figure.
        out = subprocess.run(
          [
            sys.executable,
            '-m',
            'bench.data',
            f'--root={root}',
            f'--measure={size}',
            f'--steps={_STEPS.value}',
          ],
          capture_output=True,
          text=True,
          env=os.environ,
        )
        if out.returncode:
          raise RuntimeError(f'measuring {size} failed: {out.stderr[-3000:]}')
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
      r.update({k: statistics.median(run[k] for run in runs) for k in runs[0]})
      results[size] = r
      print(json.dumps({size: {k: v for k, v in r.items() if k != 'prepare_stdout'}}), flush=True)
  finally:
    if not _KEEP.value and os.path.isdir(root):
      shutil.rmtree(root)
  print(_table(results), flush=True)


if __name__ == '__main__':
  app.run(main)
