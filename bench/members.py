"""Members per hour: K same-shape members one at a time vs as one vmapped group (train/group.py).

  python -m bench.members                       # the step: ~100K, ~1M, ~10M params; K = 1..16
  python -m bench.members --sizes=1m --ks=8 --steps=5
  python -m bench.members --mode=sweep --widths=32,128 --sweep_steps=200    # whole sweeps

--mode=step (default) times the train step alone; --mode=sweep times whole sweeps end to end
(start-up, compiles, evals, checkpoints: what a researcher waits for): the μP width study's
members (configs/sweeps/mup_width.py, 4 layers) at each width, 8 lrs a factor 2 apart, through
main.py as fresh processes, one at a time (sweep.vmap=0) and grouped (sweep.vmap=8), interleaved.

For each size the single member's jitted train step and the group's step for each K are timed on
synthetic tokens (the trainer's own setup and step), interleaved round by round so that drift
on a shared machine hits both alike; a member of S steps then costs S * t_single alone and
S * t_group / K in a group. Prints one JSON row per (size, K): seconds per step, members per
hour both ways and their ratio (the speed-up). Each member has its own seed and lr (the
members of an lr x seed scan), so batches are stacked [K, B, L+1].
"""

import csv
import json
import os
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from configs import base
from models import backend, count
from train import context, group, sharding, validation

# name -> model shape (byte vocabulary, GPT-2 block), about the parameter count it is named for.
SIZES = {
  '100k': dict(d_model=64, n_layers=2, n_heads=4, d_ff=256),
  '1m': dict(d_model=128, n_layers=4, n_heads=4, d_ff=512),
  '10m': dict(d_model=320, n_layers=8, n_heads=5, d_ff=1280),
}
FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, defined only when this runs as a program (bench.device_check
  imports the classes below next to bench.throughput's own --steps)."""
  flags.DEFINE_enum('mode', 'step', ['step', 'sweep'], 'Time the step, or whole sweeps.')
  flags.DEFINE_list('sizes', list(SIZES), 'Sizes to time: ' + ', '.join(SIZES))
  flags.DEFINE_list('ks', ['1', '2', '4', '8', '16'], 'Group sizes K.')
  flags.DEFINE_integer('steps', 3, 'Timed steps per round (after two warm-up steps).')
  flags.DEFINE_integer('rounds', 2, 'Interleaved rounds; the fastest round is reported.')
  flags.DEFINE_integer('batch', 16, 'Global batch (sequences) per member.')
  flags.DEFINE_integer('seq_len', 128, 'Sequence length.')
  flags.DEFINE_list('widths', ['32', '128'], '--mode=sweep: μP width study widths.')
  flags.DEFINE_integer('sweep_steps', 200, '--mode=sweep: steps per member.')
  flags.DEFINE_integer('sweep_k', 8, '--mode=sweep: members (8 lrs), all in one group.')


def member_config(size: str, i: int, batch: int, seq_len: int):
  """Member i of a scan at `size`: seed i, peak lr 1e-3 * 2^(i % 4 - 2)."""
  c = base.get_config()
  c.model.update(SIZES[size], max_len=seq_len)
  c.data.seq_len = seq_len
  c.train.update(global_batch_size=batch, num_steps=1000, grad_accum_steps=1)
  c.optimizer.update(lr=1e-3 * 2.0 ** (i % 4 - 2), warmup_steps=10)
  c.seed = i
  return c


class Single:
  """One member's compiled train step on a fixed synthetic batch."""

  def __init__(self, size: str, batch: int, seq_len: int) -> None:
    r = context.setup(validation.derive(member_config(size, 0, batch, seq_len)), with_data=False)
    self.params = count.param_counts(r.derived.model)['params']
    tokens = np.random.default_rng(0).integers(0, 256, (batch, seq_len + 1), np.int32)
    with jax.set_mesh(r.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
      self.state = context.init_state(r)
      self.batch = {'tokens': jax.device_put(tokens, r.batch_sharding)}
      self.fn = context.jit_train_step(r, context.lm_task(r))
      self(2)  # compile + warm-up (the second call sees the step's own output shardings).

  def __call__(self, n: int) -> float:
    tic = time.perf_counter()
    for _ in range(n):
      self.state, self.m = self.fn(self.state, self.batch)
    jax.block_until_ready(self.m)
    return (time.perf_counter() - tic) / n


class Grouped:
  """K members' compiled group step (their own seeds and lrs: stacked batches)."""

  def __init__(self, size: str, k: int, batch: int, seq_len: int) -> None:
    derived = [validation.derive(member_config(size, i, batch, seq_len)) for i in range(k)]
    g = group.setup(derived, [''] * k, with_data=False)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (k, batch, seq_len + 1), np.int32)
    r0 = g.runs[0]
    with jax.set_mesh(r0.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
      self.gs = group.init(g)
      self.batch = {'tokens': jax.device_put(tokens, g.batch_sharding)}
      self.hypers = {key: jax.numpy.asarray(v) for key, v in g.hypers.items()}
      self.fn = group.jit_step(g, context.lm_task(r0))
      self(2)

  def __call__(self, n: int) -> float:
    tic = time.perf_counter()
    for _ in range(n):
      self.gs, self.m = self.fn(self.hypers, self.gs, self.batch)
    jax.block_until_ready(self.m)
    return (time.perf_counter() - tic) / n


def _sweep(width: int, vmap: int, workdir: str) -> tuple[float, dict]:
  """(wall seconds, {member: final eval loss}) of the width study's sweep at `width` in a fresh
  main.py process: _SWEEP_K lrs 2^-10... a factor 2 apart, seed 0, _SWEEP_STEPS steps each."""
  lrs = '(' + ','.join(repr(2.0 ** (e - 10)) for e in range(FLAGS.sweep_k)) + ')'
  cmd = [
    sys.executable,
    'main.py',
    f'--config=configs/sweeps/mup_width.py:mup,{width if width in (32, 128, 256) else 32}',
    f'--config.sweep.widths=({width},)',
    f'--config.sweep.lrs={lrs}',
    f'--config.sweep.tokens=({FLAGS.sweep_steps * 1024},)',
    f'--config.sweep.vmap={vmap}',
    f'--workdir={workdir}',
  ]
  tic = time.time()
  out = subprocess.run(cmd, capture_output=True, text=True)
  wall = time.time() - tic
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  with open(os.path.join(workdir, 'results.csv')) as f:
    return wall, {r['name']: float(r['loss']) for r in csv.DictReader(f)}


def sweeps() -> None:
  """--mode=sweep: whole sweeps one at a time vs grouped, interleaved round by round."""
  k = FLAGS.sweep_k
  for width in map(int, FLAGS.widths):
    for round_ in range(FLAGS.rounds):
      with tempfile.TemporaryDirectory() as tmp:
        alone, a = _sweep(width, 0, os.path.join(tmp, 'alone'))
        grouped, b = _sweep(width, k, os.path.join(tmp, 'grouped'))
      row = {
        'mode': 'sweep',
        'width': width,
        'members': k,
        'steps': FLAGS.sweep_steps,
        'round': round_,
        'alone_s': round(alone, 1),
        'grouped_s': round(grouped, 1),
        'members_per_hour_alone': round(3600 * k / alone, 1),
        'members_per_hour_grouped': round(3600 * k / grouped, 1),
        'speedup': round(alone / grouped, 3),
        'max_abs_loss_diff': max(abs(a[n] - b[n]) for n in a),
        'loss_diff_by_member': {n: b[n] - a[n] for n in sorted(a)},
      }
      print(json.dumps(row), flush=True)


def main(_: list[str]) -> None:
  os.environ.update(backend.xla_env())
  if FLAGS.mode == 'sweep':
    sweeps()
    return
  for size in FLAGS.sizes:
    single = Single(size, FLAGS.batch, FLAGS.seq_len)
    for k in map(int, FLAGS.ks):
      grouped = Grouped(size, k, FLAGS.batch, FLAGS.seq_len) if k > 1 else single
      t1, tk = [], []
      for _ in range(FLAGS.rounds):  # interleaved: alone, grouped, alone, grouped, ...
        t1.append(single(FLAGS.steps))
        tk.append(grouped(FLAGS.steps))
      t1, tk = min(t1), min(tk)
      alone_per_hour = 3600 / (t1 * 1000)  # members of 1000 steps.
      grouped_per_hour = 3600 / (tk / k * 1000)
      row = {
        'size': size,
        'params': single.params,
        'k': k,
        'batch': FLAGS.batch,
        'seq_len': FLAGS.seq_len,
        'device': jax.devices()[0].device_kind,
        'single_step_s': round(t1, 5),
        'group_step_s': round(tk, 5),
        'members_per_hour_alone': round(alone_per_hour, 2),
        'members_per_hour_grouped': round(grouped_per_hour, 2),
        'speedup': round(grouped_per_hour / alone_per_hour, 3),
      }
      print(json.dumps(row), flush=True)
      del grouped


if __name__ == '__main__':
  define_flags()
  app.run(main)
