"""Train-step throughput, MFU and memory on synthetic tokens (no dataset needed).

  python -m bench.throughput --config=configs/gpt2.py:124m --config.train.grad_accum_steps=1 \
      --config.train.global_batch_size=32 --steps=20

Times the real jitted train step (same shardings, accumulation and optimizer as main.py);
MFU uses the convention in train/flops.py. Prints one JSON object.
"""
import json
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from train import flops, sharding, validation
from train import optimizer as optim
from train import state as state_lib
from train.step import lm_loss, make_train_step

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (after 2 warm-up steps).')


def main(_):
  config = _CONFIG.value
  derived = validation.derive(config, jax.device_count(), jax.process_count())
  model = derived.model
  mesh = sharding.make_mesh(config.mesh)
  tx = optim.make_optimizer(config.optimizer, derived.num_steps, derived.model)
  shardings = state_lib.state_shardings(model, tx, mesh, derived.loss_scale)
  batch_sharding = sharding.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, model.vocab_size, (config.train.global_batch_size,
                                              config.data.seq_len + 1), dtype=np.int32)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    state = state_lib.init_state(model, tx, shardings, config.seed,
                                 loss_scale=config.train.loss_scale_init)
    batch = {'tokens': jax.device_put(tokens, batch_sharding)}
    step_fn = jax.jit(make_train_step(lm_loss(model), tx,
                                      optim.lr_schedule(config.optimizer, derived.num_steps),
                                      config.train.grad_accum_steps,
                                      config.train.loss_scale_period if derived.loss_scale else 0),
                      in_shardings=(shardings, batch_sharding),
                      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(2):
      state, m = compiled(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
      state, m = compiled(state, batch)
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / _STEPS.value
  tokens_per_s = derived.tokens_per_step / step_s
  flops_per_token = flops.train_flops_per_token(model, config.data.seq_len)
  peak = flops.peak_flops() * jax.device_count()
  mem = jax.devices()[0].memory_stats() or {}
  print(json.dumps({
      'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
      'dtype': model.dtype, 'remat': model.remat, 'attention_impl': model.attention_impl,
      'matmul_params': flops.matmul_params(model), 'global_batch': config.train.global_batch_size,
      'seq_len': config.data.seq_len, 'grad_accum_steps': config.train.grad_accum_steps,
      'compile_s': round(compile_s, 2), 'step_s': step_s, 'tokens_per_s': tokens_per_s,
      'model_tflops_per_s': tokens_per_s * flops_per_token / 1e12,
      'mfu': tokens_per_s * flops_per_token / peak,
      'peak_memory_gib': mem.get('peak_bytes_in_use', 0) / 2**30,
      'final_loss': float(m['train/loss'])}), flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
