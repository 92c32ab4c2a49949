"""Members per hour: K same-shape members one at a time vs as one vmapped group (train/group.py).

  python -m bench.members                       # ~100K, ~1M, ~10M params; K = 1, 2, 4, 8, 16
  python -m bench.members --sizes=1m --ks=8 --steps=5

For each size the single member's jitted train step and the group's step for each K are timed on
synthetic tokens (the trainer's own setup and step), interleaved round by round so that drift
on a shared machine hits both alike; a member of S steps then costs S * t_single alone and
S * t_group / K in a group. Prints one JSON row per (size, K): seconds per step, members per
hour both ways and their ratio (the speed-up). Each member has its own seed and lr (the
members of an lr x seed scan), so batches are stacked [K, B, L+1].
"""

import json
import os
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from configs import base
from models import backend, count
from train import context, group, sharding

# name -> model shape (byte vocabulary, GPT-2 block), about the parameter count it is named for.
SIZES = {
  '100k': dict(d_model=64, n_layers=2, n_heads=4, d_ff=256),
  '1m': dict(d_model=128, n_layers=4, n_heads=4, d_ff=512),
  '10m': dict(d_model=320, n_layers=8, n_heads=5, d_ff=1280),
}
_SIZES = flags.DEFINE_list('sizes', list(SIZES), 'Sizes to time: ' + ', '.join(SIZES))
_KS = flags.DEFINE_list('ks', ['1', '2', '4', '8', '16'], 'Group sizes K.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per round (after two warm-up steps).')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Interleaved rounds; the fastest round is reported.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Global batch (sequences) per member.')
_SEQ = flags.DEFINE_integer('seq_len', 128, 'Sequence length.')


def member_config(size: str, i: int):
  """Member i of a scan at `size`: seed i, peak lr 1e-3 * 2^(i % 4 - 2)."""
  c = base.get_config()
  c.model.update(SIZES[size], max_len=_SEQ.value)
  c.data.seq_len = _SEQ.value
  c.train.update(global_batch_size=_BATCH.value, num_steps=1000, grad_accum_steps=1)
  c.optimizer.update(lr=1e-3 * 2.0 ** (i % 4 - 2), warmup_steps=10)
  c.seed = i
  return c


class Single:
  """One member's compiled train step on a fixed synthetic batch."""

  def __init__(self, size: str) -> None:
    r = context.setup(member_config(size, 0), with_data=False)
    self.params = count.param_counts(r.derived.model)['params']
    tokens = np.random.default_rng(0).integers(0, 256, (_BATCH.value, _SEQ.value + 1), np.int32)
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

  def __init__(self, size: str, k: int) -> None:
    configs = [member_config(size, i) for i in range(k)]
    g = group.setup(configs, [''] * k, with_data=False)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (k, _BATCH.value, _SEQ.value + 1), np.int32)
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


def main(_: list[str]) -> None:
  os.environ.update(backend.xla_env())
  for size in _SIZES.value:
    single = Single(size)
    for k in map(int, _KS.value):
      grouped = Grouped(size, k) if k > 1 else single
      t1, tk = [], []
      for _ in range(_ROUNDS.value):  # interleaved: alone, grouped, alone, grouped, ...
        t1.append(single(_STEPS.value))
        tk.append(grouped(_STEPS.value))
      t1, tk = min(t1), min(tk)
      alone_per_hour = 3600 / (t1 * 1000)  # members of 1000 steps.
      grouped_per_hour = 3600 / (tk / k * 1000)
      row = {
        'size': size,
        'params': single.params,
        'k': k,
        'batch': _BATCH.value,
        'seq_len': _SEQ.value,
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
  app.run(main)
