"""LoRA on a float base against QLoRA on the same base quantized (train.tools.compress --quantize):
the frozen base's and the train state's resident bytes, XLA's memory analysis of the train step,
each run's peak host memory, final train and eval loss, and the step time.

  python -m bench.qlora                                   # pretrains configs/default.py first
  python -m bench.qlora --base=workdirs/default --steps=200 --scheme=nf4 --group=64

Without --base, configs/default.py's model is pretrained for --pretrain_steps under --root. The
base is quantized once (python -m train.tools.compress --quantize=SCHEME --group=GROUP); then two
fine-tuning runs of main.py's trainer, each in a fresh process, on the same data, steps and seed:
LoRA from the float base, and QLoRA (model.lora_base_resident='quantized') from the quantized one.

What is measured: base / state bytes are the arrays' nbytes (the frozen base; params, Adam moments
and step, plus QLoRA's held kernels); step args / temps are XLA's memory analysis of the compiled
train step (its inputs, the state donated, and its temporaries: activations, gradients, the
dequantized kernels); peak RSS is each training process's maximum resident set (ru_maxrss: the
JAX runtime, compiles and the data pipeline included; on CPU the device arrays live there too);
ms/step is the median of 5-step timings of the two compiled steps interleaved on one fixed batch
(a busy machine slows both alike). Prints a table, then one JSON line.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import jax
from absl import flags

from train import cli

_ROOT = flags.DEFINE_string('root', '/tmp/lmscale_qlora_bench', 'Scratch directory (kept).')
_BASE = flags.DEFINE_string('base', '', 'A pretrained workdir (default: pretrain one in --root).')
_PRETRAIN = flags.DEFINE_integer(
  'pretrain_steps', 150, 'Steps of configs/default.py without --base.'
)
_STEPS = flags.DEFINE_integer('steps', 100, 'Fine-tuning steps of each run.')
_RANK = flags.DEFINE_integer('rank', 8, 'LoRA rank (every target).')
_SCHEME = flags.DEFINE_string(
  'scheme', 'int4', 'train.tools.compress --quantize (int4, nf4, int8, ...).'
)
_GROUP = flags.DEFINE_integer('group', 64, 'train.tools.compress --group (0: per channel).')
_BATCH = flags.DEFINE_integer('batch', 16, 'Fine-tuning sequences per step (of 128 bytes).')
_MEASURE = flags.DEFINE_string('measure', '', 'Internal: run one fine-tuning (float|quantized).')

MODES = {'float': 'LoRA, float32 base', 'quantized': 'QLoRA, quantized base'}
ROUNDS = 6  # of 5 timed steps per mode, interleaved


def _config(src: str, mode: str, steps: int, rank: int, batch: int):
  """configs/default.py fine-tuned from `src` with LoRA of `rank` (QLoRA for mode 'quantized'),
  `batch` rows a step, seed 1 (other batches than the pretraining's seed 0), warm-up 10 %."""
  from configs import default

  c = default.get_config()
  c.seed, c.init_from = 1, src
  c.model.update(lora_rank=rank, lora_alpha=float(rank), lora_base_resident=mode)
  every = max(steps // 10, 1)
  c.train.update(
    global_batch_size=batch,
    num_steps=steps,
    log_every=every,
    eval_every=steps,
    checkpoint_every=steps,
  )
  c.optimizer.warmup_steps = max(steps // 10, 1)
  return c


def _sh(cmd: list) -> str:
  out = subprocess.run(cmd, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stderr[-3000:]}')
  return out.stdout


def measure(mode: str) -> dict:
  """One fine-tuning run in this process (--measure): its final losses, wall time and peak RSS."""
  from train import init_from, loop, validation

  root = _ROOT.value
  src = os.path.join(root, 'q') if mode == 'quantized' else _base()
  workdir = os.path.join(root, mode)
  config = _config(src, mode, _STEPS.value, _RANK.value, _BATCH.value)
  start = time.perf_counter()
  out = loop.run(validation.derive(config), workdir, init_params_fn=init_from.params_fn(config))
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    last = [json.loads(line) for line in f][-1]
  return {
    'train_loss': last['train/loss'],
    'eval_loss': out['eval/loss'],
    'wall_s': round(wall, 1),
    'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
  }


def _base() -> str:
  return _BASE.value or os.path.join(_ROOT.value, 'base')


def _prepare() -> dict:
  """Pretrain the base (without --base) and quantize it; returns train.tools.compress's record."""
  root, base, q = _ROOT.value, _base(), os.path.join(_ROOT.value, 'q')
  os.makedirs(root, exist_ok=True)
  if not _BASE.value:
    _sh([sys.executable, 'main.py', '--config=configs/default.py', f'--workdir={base}',
         f'--config.train.num_steps={_PRETRAIN.value}'])  # fmt: skip
  if not os.path.exists(os.path.join(q, 'compress.json')):
    _sh([sys.executable, '-m', 'train.tools.compress', f'--workdir={base}', f'--out={q}',
         f'--quantize={_SCHEME.value}', f'--group={_GROUP.value}'])  # fmt: skip
  with open(os.path.join(q, 'compress.json')) as f:
    return json.load(f)


def compiled_step(mode: str, src: str) -> tuple[dict, Callable[[int], float]]:
  """(bytes, run): resident bytes (nbytes of the arrays) of the frozen base and of the whole train
  state (params, Adam moments, step; QLoRA's held kernels included), XLA's memory analysis of the
  compiled train step (arguments + temporaries, the state donated); run(n) -> seconds per step of
  n steps on one fixed batch."""
  import flax.linen as nn
  import numpy as np

  from models import lora, resident_quant
  from train import context, init_from, loop, sharding, validation

  config = _config(src, mode, _STEPS.value, _RANK.value, _BATCH.value)
  r = context.setup(validation.derive(config), with_data=False)
  rows = (config.train.global_batch_size, config.data.seq_len + 1)
  tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, rows, np.int32)
  with jax.set_mesh(r.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    params, held = resident_quant.split(init_from.params_fn(config)(r))
    base = resident_quant.join(lora.split(params)[0], held)
    state = [context.init_state(r, params)]
    task = loop.with_held(r, context.lm_task(r), held)
    batch = {'tokens': jax.device_put(tokens, r.batch_sharding)}
    step = context.jit_train_step(r, task).lower(state[0], batch, *task.frozen).compile()
  analysis = step.memory_analysis()
  out = {
    'base_bytes': resident_quant.resident_bytes(base),
    'state_bytes': resident_quant.resident_bytes(state[0]) + resident_quant.resident_bytes(held),
    'step_args_bytes': analysis.argument_size_in_bytes,
    'step_temp_bytes': analysis.temp_size_in_bytes,
  }

  def run(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      state[0], metrics = step(state[0], batch, *task.frozen)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / n

  return out, run


def main(argv: list[str]) -> None:
  del argv
  if _MEASURE.value:
    print(json.dumps(measure(_MEASURE.value)))
    return
  record = _prepare()
  srcs = {'float': _base(), 'quantized': os.path.join(_ROOT.value, 'q')}
  out, runs = {}, {}
  for mode, src in srcs.items():
    flags_ = [f'--{f.name}={f.value}' for f in (_ROOT, _BASE, _STEPS, _RANK, _BATCH)]
    child = _sh([sys.executable, '-m', 'bench.qlora', f'--measure={mode}', *flags_])
    out[mode], runs[mode] = compiled_step(mode, src)
    out[mode].update(json.loads(child.strip().splitlines()[-1]))
  times = {mode: [] for mode in runs}
  for _ in range(ROUNDS):  # interleaved, so that a busy machine slows both alike.
    for mode, run in runs.items():
      times[mode].append(run(5))
  for mode in runs:
    out[mode]['step_s'] = statistics.median(times[mode][1:])  # (the first: warm-up)
  _print(out, record)


COLUMNS = (  # (header, key, format); bytes in MiB.
  ('base MiB', 'base_bytes', '{:8.3f}'),
  ('state MiB', 'state_bytes', '{:9.3f}'),
  ('step args MiB', 'step_args_bytes', '{:13.3f}'),
  ('step temps MiB', 'step_temp_bytes', '{:14.3f}'),
  ('peak RSS MiB', 'peak_rss_bytes', '{:12.1f}'),
  ('train loss', 'train_loss', '{:10.4f}'),
  ('eval loss', 'eval_loss', '{:9.4f}'),
  ('ms/step', 'step_s', '{:7.1f}'),
)


def _print(out: dict, record: dict) -> None:
  """The table (one row per run), the QLoRA / LoRA ratios, then everything as one JSON line."""
  print(
    f'{_STEPS.value} steps of LoRA rank {_RANK.value}; base eval loss: float '
    f'{record["loss_before"]:.4f}, {_SCHEME.value} group {_GROUP.value} {record["loss_after"]:.4f}'
  )
  print(f'{"run":22}  ' + '  '.join(h for h, _, _ in COLUMNS))
  scale = lambda k, v: v / 2**20 if k.endswith('bytes') else v * 1e3 if k == 'step_s' else v
  for mode, m in out.items():
    cells = (f.format(scale(k, m[k])) for _, k, f in COLUMNS)
    print(f'{MODES[mode]:22}  ' + '  '.join(cells))
  f, q = out['float'], out['quantized']
  ratios = {k: q[k] / f[k] for _, k, _ in COLUMNS if k.endswith(('bytes', '_s'))}
  print('QLoRA / LoRA: ' + ', '.join(f'{k} {v:.3f}' for k, v in ratios.items()))
  what = {k: record[k] for k in ('quantize', 'group', 'loss_before', 'loss_after')}
  print(json.dumps({'runs': out, 'ratios': ratios, 'compress': what}))


if __name__ == '__main__':
  cli.run(main, config_flags=())
