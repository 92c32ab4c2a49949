"""Device memory of one train step, estimated from the config before anything is allocated.

Parameters, Adam's two moments and the gradients are counted exactly per device from the shapes
and the sharding table; activations of one microbatch are a per-token model of what the backward
keeps, by remat policy, calibrated against XLA's compiled memory analysis (tests/train/test_memory.py
states the tolerance). A run that cannot fit is refused before compile with the knobs to turn.
"""

import dataclasses
import logging

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

import models
from models import parametrization
from models.config import ModelConfig, head_dim, kv_heads
from train import init_from, sharding, validation

GIB = 2**30
F32 = 4
ITEMSIZE = {'float32': 4, 'bfloat16': 2, 'float16': 2}
# Floats the backward keeps per token and layer without remat, fitted on XLA's buffer assignment
# (21 shapes: d_model, d_ff, heads, length, vocab varied one at a time): about 16 d_model-wide
# tensors (residuals, norms, q/k/v/out), 3 d_ff-wide ones (up, activation, its input; 4.4 when
# gated) and 2 per head and key (attention probabilities and their softmax input).
PER_D, PER_FF, PER_FF_GATED, PER_SCORE = 16, 3, 4.4, 2
PER_V, PER_D_HEAD = 2, 5  # logits and their gradient (float32); final norm and its input.
ROLLED = 1.25  # a rolled layer scan keeps its stacked carries too (407 vs 327 MB measured).


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes per device of one train step; `limit` is what the device (or host) offers, if known."""

  params: int
  optimizer: int
  grads: int
  activations: int
  limit: int | None
  eval: int = 0  # one evaluation batch's forward (the train state stays resident meanwhile).
  members: int = 1  # a member group (train/group.py): K of everything above on every device.

  @property
  def total(self) -> int:
    one = self.params + self.optimizer + max(self.grads + self.activations, self.eval)
    return self.members * one

  def line(self) -> str:
    keys = ('params', 'optimizer', 'grads', 'activations') + (('eval',) if self.eval else ())
    parts = ', '.join(f'{k} {getattr(self, k) / GIB:.2f}' for k in keys)
    limit = f' of {self.limit / GIB:.2f} GiB available' if self.limit else ''
    each = f' each x {self.members} members' if self.members > 1 else ''
    return f'memory per device (GiB): {parts}{each}; total {self.total / GIB:.2f}{limit}'


def param_bytes(model: ModelConfig, mesh_shape: dict, trainable: bool = False) -> int:
  """float32 parameter bytes held by one device under the sharding table (`trainable`: of the
  params that train only, e.g. LoRA's adapters)."""
  shapes, specs = models.param_shapes(model), models.logical_axes(model)
  sizes = jax.tree.map(
    lambda spec, s, t: F32 * int(np.prod(s.shape)) // sharding.shards(spec, s.shape, mesh_shape)
    if t or not trainable
    else 0,
    specs,
    shapes,
    models.trainable(model),
    is_leaf=lambda x: isinstance(x, P),
  )
  return int(sum(jax.tree.leaves(sizes)))


def _saved_per_layer(m: ModelConfig, seq_len: int, tensor: int) -> float:
  """Floats per token one layer keeps for the backward under m.remat."""
  gated = m.mlp in ('swiglu', 'geglu')
  hd, heads = head_dim(m), m.n_heads / tensor
  ff = m.d_ff / tensor
  if m.remat == 'full':
    return m.d_model  # the layer's input only.
  if m.remat in ('dots', 'dots_no_batch'):  # matmul outputs: q, k, v, out, up (gate), down.
    return (m.n_heads + 2 * kv_heads(m)) * hd / tensor + 2 * m.d_model + ff * (1 + gated)
  return PER_D * m.d_model + (PER_FF_GATED if gated else PER_FF) * ff + PER_SCORE * heads * seq_len


def activation_bytes(m: ModelConfig, tokens: int, seq_len: int, tensor: int = 1) -> int:
  """Bytes of activations for `tokens` tokens of one microbatch on one device."""
  itemsize = F32 if jax.default_backend() == 'cpu' else ITEMSIZE[m.dtype]  # XLA:CPU widens.
  saved = m.n_layers * _saved_per_layer(m, seq_len, tensor)
  if m.remat != 'none':  # plus one layer's working set while it is recomputed.
    saved += _saved_per_layer(m.replace(remat='none'), seq_len, tensor)
  elif m.scan_layers and (m.scan_unroll == 1 or jax.default_backend() != 'cpu'):
    saved *= ROLLED
  saved += _lora_per_layer(m) * m.n_layers
  vocab = -(-m.vocab_size // m.vocab_multiple) * m.vocab_multiple / tensor
  rows = tokens if not m.loss_chunk else tokens * m.loss_chunk // seq_len
  return int(tokens * (saved + PER_D_HEAD * m.d_model) * itemsize + rows * PER_V * vocab * F32)


def _lora_per_layer(m: ModelConfig) -> int:
  """Floats per token one layer's LoRA adapters keep for the backward: x @ A ([tokens, rank])
  of each adapted kernel (a large rank makes these the biggest activations)."""
  if not m.lora_rank:
    return 0
  paths = jax.tree_util.tree_flatten_with_path(models.param_shapes(m))[0]
  adapters = sum(jax.tree_util.keystr(p).endswith("_lora_a']") for p, _ in paths)
  return m.lora_rank * adapters // (1 if m.scan_layers else m.n_layers)


def eval_bytes(m: ModelConfig, tokens: int, seq_len: int, tensor: int = 1) -> int:
  """Bytes of one evaluation batch's forward on one device (`tokens` tokens), bounded by what a
  one-layer train step keeps: a layer's working set and the float32 logits (and their softmax)."""
  one = m.replace(n_layers=1, remat='none', scan_layers=False)
  return activation_bytes(one, tokens, seq_len, tensor)


def available(devices: list | None = None) -> int | None:
  """Bytes one device can hold: the accelerator's limit, or on CPU the host's available memory
  shared by its local devices; None when unknown."""
  devices = devices or jax.local_devices()
  stats = devices[0].memory_stats() if devices[0].platform != 'cpu' else None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  try:
    with open('/proc/meminfo') as f:
      info = dict(line.split(':', 1) for line in f)
    return int(info['MemAvailable'].split()[0]) * 1024 // len(devices)
  except (OSError, KeyError, ValueError):  # not Linux: unknown.
    return None


def estimate(
  model: ModelConfig,
  mesh_shape: dict,
  micro_batch: int,
  seq_len: int,
  grad_accum_steps: int = 1,
  limit: int | None = None,
  sparse: bool = False,
  eval_batch: int = 0,
) -> Estimate:
  """Per-device bytes of the train step: params, Adam moments and gradients of the params that
  train (plus the accumulator when accumulating), with `sparse` the sparsity masks in the
  optimizer state (one uint8 per float32 param), and one microbatch's activations
  (`micro_batch` global sequences); `eval_batch` > 0: an evaluation batch's forward too."""
  p = param_bytes(model, mesh_shape)
  t = param_bytes(model, mesh_shape, trainable=True) if parametrization.has_frozen(model) else p
  shards = mesh_shape['data'] * mesh_shape['fsdp']
  tokens = max(micro_batch // shards, 1) * seq_len
  acts = activation_bytes(model, tokens, seq_len, mesh_shape['tensor'])
  masks = p // 4 if sparse else 0
  evals = eval_bytes(model, max(eval_batch // shards, 1) * seq_len, seq_len, mesh_shape['tensor'])
  grads = t * (2 if grad_accum_steps > 1 else 1)
  return Estimate(p, 2 * t + masks, grads, acts, limit, evals if eval_batch else 0)


def compiled_bytes(m: ModelConfig, opt_config, batch: int, seq_len: int, k: int = 1) -> int:
  """Arguments + temporaries of the jitted train step (state donated) on one device, from XLA's
  memory analysis of the compiled step: what `estimate` approximates (nothing is run)."""
  import jax.numpy as jnp

  from train import optimizer as optim
  from train import step as step_lib

  opt = optim.make_optimizer(opt_config, 10, m)
  trainable = models.trainable(m) if parametrization.has_frozen(m) else None
  fn = step_lib.make_train_step(
    step_lib.lm_loss(m), opt, optim.lr_schedule(opt_config, 10), k, 0, trainable
  )

  def state():
    p = models.init(m, jax.random.key(0))
    return step_lib.TrainState(jnp.zeros((), jnp.int32), p, opt.init(p))

  tokens = jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32)
  lowered = jax.jit(fn, donate_argnums=(0,)).lower(jax.eval_shape(state), {'tokens': tokens})
  analysis = lowered.compile().memory_analysis()
  return analysis.argument_size_in_bytes + analysis.temp_size_in_bytes


def check(est: Estimate) -> None:
  """Refuse a step that cannot fit, in one line with the estimate, the limit and the knobs."""
  if est.limit is None or est.total <= est.limit:
    return
  raise ValueError(
    f'{est.line()}: the step does not fit; '
    + ('use fewer members per group (config.sweep.vmap), ' if est.members > 1 else '')
    + (
      'use a smaller config.train.eval_batch_size, '
      if est.eval > est.grads + est.activations
      else ''
    )
    + 'shard the state (config.mesh.fsdp), '
    'recompute activations (config.model.remat), use smaller microbatches '
    '(config.train.grad_accum_steps or global_batch_size), or chunk the loss '
    '(config.model.loss_chunk)'
  )


def for_run(derived: validation.Derived, members: int = 1) -> Estimate:
  """The run's estimate from its validated config, logged; refused (ValueError) if it cannot fit.
  Shapes only (eval_shape): nothing is allocated, so a huge model is refused in seconds.
  `members`: a member group's K runs of this config, stacked on every device."""
  c = derived.config
  est = estimate(
    derived.model,
    derived.mesh_shape,
    derived.micro_batch,
    c.data.seq_len,
    c.train.grad_accum_steps,
    available(),
    sparse=c.sparsity.target > 0,
    eval_batch=c.train.eval_batch_size or c.train.global_batch_size,
  )
  if c.model.lora_rank and c.model.lora_base_resident == 'quantized':  # QLoRA's held kernels.
    base = init_from.base_record(c.init_from, c.model)['base']  # (a QLoRA workdir's: its base)
    est = dataclasses.replace(est, params=est.params + init_from.held_bytes(base))
  est = dataclasses.replace(est, members=members)
  logging.info(est.line())
  check(est)
  return est
