"""Train-step throughput, MFU and memory on synthetic tokens (no dataset needed).

  python -m bench.throughput --config=configs/gpt2.py:124m --config.train.grad_accum_steps=1 \
      --config.train.global_batch_size=32 --steps=20

Times the real jitted train step (the trainer's own setup: same shardings, accumulation and
optimizer as main.py); MFU uses the convention in models/count.py. Prints one JSON object.
"""

import json
import os
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from models import attention, backend, count
from train import context, flops, sharding, validation

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (after 2 warm-up steps).')


class Step:
  """The compiled train step of `config` on a fixed synthetic batch, with its state."""

  def __init__(self, config: ml_collections.ConfigDict) -> None:
    self.run = r = context.setup(validation.derive(config), with_data=False)
    self.model = r.derived.model
    tokens = np.random.default_rng(0).integers(
      0,
      self.model.vocab_size,
      (config.train.global_batch_size, config.data.seq_len + 1),
      dtype=np.int32,
    )
    with jax.set_mesh(r.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
      self.state = context.init_state(r)
      self.batch = {'tokens': jax.device_put(tokens, r.batch_sharding)}
      step_fn = context.jit_train_step(r, context.lm_task(r))
      start = time.perf_counter()
      self.compiled = step_fn.lower(self.state, self.batch).compile()
      self.compile_s = time.perf_counter() - start
    self.metrics = None

  def __call__(self, n: int) -> float:
    """Run n steps; seconds per step (blocking on the result)."""
    start = time.perf_counter()
    for _ in range(n):
      self.state, self.metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready(self.metrics)
    return (time.perf_counter() - start) / n

  @property
  def tokens_per_step(self) -> int:
    return self.run.derived.tokens_per_step


def main(_: list[str]) -> None:
  os.environ.update(backend.xla_env())  # the trainer's per-backend flags (main.py sets them too).
  config = _CONFIG.value
  step = Step(config)
  step(2)
  step_s = step(_STEPS.value)
  model = step.model
  tokens_per_s = step.tokens_per_step / step_s
  flops_per_token = count.train_flops_per_token(model, config.data.seq_len)
  peak = flops.peak_flops() * jax.device_count()
  mem = jax.devices()[0].memory_stats() or {}
  print(
    json.dumps(
      {
        'device': jax.devices()[0].device_kind,
        'devices': jax.device_count(),
        'dtype': model.dtype,
        'remat': model.remat,
        'attention_impl': attention.resolve(model, config.data.seq_len),
        'matmul_params': count.matmul_params(model),
        'global_batch': config.train.global_batch_size,
        'seq_len': config.data.seq_len,
        'grad_accum_steps': config.train.grad_accum_steps,
        'compile_s': round(step.compile_s, 2),
        'step_s': step_s,
        'tokens_per_s': tokens_per_s,
        'model_tflops_per_s': tokens_per_s * flops_per_token / 1e12,
        'mfu': tokens_per_s * flops_per_token / peak if peak == peak else None,
        'peak_memory_gib': mem.get('peak_bytes_in_use', 0) / 2**30,
        'final_loss': float(step.metrics['train/loss']),
      }
    ),
    flush=True,
  )


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
