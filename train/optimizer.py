"""AdamW (per-parameter lr/wd scales under μP / u-μP) with warmup + (cosine | linear | constant |
warmup-stable-decay), clipping and a decay mask."""

from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

import models
from configs.schema import OptimizerConfig, SparsityConfig
from models import parametrization
from models import sparsity as sparsity_lib
from models.config import ModelConfig, PyTree

# The `config.optimizer` section: typed (derived.config.optimizer) or its ConfigDict.
Optimizer = OptimizerConfig | ml_collections.ConfigDict


def lr_schedule(opt: Optimizer, num_steps: int) -> optax.Schedule:
  """Learning rate per optimizer step, from the `config.optimizer` section."""
  peak, warmup = opt.lr, opt.warmup_steps
  floor = peak * opt.min_lr_ratio
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
  rest = max(num_steps - warmup, 1)
  if opt.schedule == 'cosine':
    after = optax.cosine_decay_schedule(peak, rest, alpha=opt.min_lr_ratio)
  elif opt.schedule == 'linear':
    after = optax.linear_schedule(peak, floor, rest)
  elif opt.schedule == 'constant':
    after = optax.constant_schedule(peak)
  elif opt.schedule == 'wsd':
    decay = max(int(round(opt.decay_fraction * num_steps)), 1)
    stable = max(rest - decay, 0)
    after = optax.join_schedules(
      [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)], [stable]
    )
  else:
    raise ValueError(f'config.optimizer.schedule: unknown {opt.schedule!r}')
  return optax.join_schedules([warm, after], [warmup])


def decay_mask(params: PyTree, exclude: Iterable[str]) -> PyTree:
  """True where weight decay applies: a param is excluded when one of `exclude` is a whole
  '_'-separated word of a name on its path (e.g. 'norm' in 'attn_norm', 'bias' in 'query_bias')."""
  exclude = set(exclude)

  def keep(path: tuple, _: object) -> bool:
    words = {w for k in path for w in str(getattr(k, 'key', k)).split('_')}
    return not (words & exclude)

  return jax.tree_util.tree_map_with_path(keep, params)


def _per_leaf(fn: Callable, *trees: PyTree) -> optax.GradientTransformation:
  """Stateless transform applying fn(update, param, *leaves of trees) leaf by leaf (a leaf
  optax.multi_transform masked out, e.g. a frozen one, passes through)."""
  masked = lambda x: isinstance(x, optax.MaskedNode)
  leaf_fn = lambda u, p, *xs: u if masked(u) else fn(u, p, *xs)
  return optax.stateless(lambda u, p: jax.tree.map(leaf_fn, u, p, *trees, is_leaf=masked))


def make_optimizer(
  opt: Optimizer,
  num_steps: int,
  model_config: ModelConfig,
  sparsity: SparsityConfig | None = None,
) -> optax.GradientTransformation:
  """Clipping + AdamW; under μP / u-μP (`model_config`, validation.derive's derived.model) with
  the per-parameter lr and weight-decay scales of models.parametrization (the same table that
  sets init and multipliers). Frozen params (models.trainable; with LoRA all but the adapters,
  W8A8's calibrated ones) get no update and no optimizer state. With `sparsity` (config.sparsity)
  on, then keep_sparse."""
  train = _adamw(opt, num_steps, model_config)
  if sparsity is not None and sparsity.target > 0:
    train = optax.chain(train, keep_sparse(sparsity, model_config))
  if not parametrization.has_frozen(model_config):
    return train
  labels = jax.tree.map(lambda t: 'train' if t else 'frozen', models.trainable(model_config))
  return optax.multi_transform({'train': train, 'frozen': optax.set_to_zero()}, labels)


def _adamw(
  opt: Optimizer, num_steps: int, model_config: ModelConfig
) -> optax.GradientTransformation:
  """make_optimizer's chain for the params that train."""
  chain = []
  if opt.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip))
  schedule = lr_schedule(opt, num_steps)
  mask = lambda p: decay_mask(p, opt.wd_exclude)
  if model_config.parametrization == 'sp' and not model_config.independent_wd:
    chain.append(
      optax.adamw(
        schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=mask
      )
    )
    return optax.chain(*chain)
  # optax.adamw's chain, with per-leaf decay (0 where masked) and per-leaf lr scale.
  lr_scale = _per_leaf(lambda u, p, s: u * s, models.param_scales(model_config, 'lr'))
  decay = _per_leaf(
    lambda u, p, wd: u if _is_zero(wd) else u + wd * p, _decays(opt, model_config, mask)
  )
  # Coupled (AdamW, MuAdamW): decay before the lr scale. Independent: after it, so only lr(t)/peak.
  middle = [lr_scale, decay] if model_config.independent_wd else [decay, lr_scale]
  chain += [
    optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
    *middle,
    optax.scale_by_learning_rate(schedule),
  ]
  return optax.chain(*chain)


def _is_zero(x: object) -> bool:
  """A Python 0: decay skipped. An array (a group member's traced value, train/group.py) is not."""
  return isinstance(x, (int, float)) and x == 0


def _decays(opt: Optimizer, model_config: ModelConfig, mask: Callable) -> PyTree:
  """Per-leaf decay coefficients: wd · the table's wd scale (multiplied by the per-leaf lr scale
  and lr(t) later), or with model.independent_wd wd / peak lr (Wortsman et al. 2023: each step
  decays by wd · lr(t)/peak, whatever the peak lr and the per-leaf lr scale)."""
  decayed = mask(models.param_shapes(model_config))
  if model_config.independent_wd:
    wd = 0.0 if _is_zero(opt.lr) else opt.weight_decay / opt.lr
    return jax.tree.map(lambda m: wd if m else 0.0, decayed)
  return jax.tree.map(
    lambda m, s: opt.weight_decay * s if m else 0.0,
    decayed,
    models.param_scales(model_config, 'wd'),
  )


class SparsityState(NamedTuple):
  """keep_sparse's state: updates applied, the masks (matching params, uint8 1 = kept, all 1 on
  the dense leaves; uint8 as the checkpoint checksums bitcast) and the pruned fraction now."""

  count: jax.Array
  masks: PyTree
  sparsity: jax.Array


def mask_step(sp: SparsityConfig, step: jax.Array) -> jax.Array:
  """Whether the params of `step` are re-masked: begin <= step <= end on the `every` grid, or end."""
  on_grid = (step - sp.begin_step) % sp.every == 0
  return (step >= sp.begin_step) & (step <= sp.end_step) & (on_grid | (step == sp.end_step))


def keep_sparse(sp: SparsityConfig, model_config: ModelConfig) -> optax.GradientTransformation:
  """Last in the chain: updates that keep pruned weights at exactly zero (where(mask, u, -p)); on
  mask_step steps the masks are recomputed from |params + update| at the cubic schedule's
  fraction (models/sparsity.py). Adam moments of pruned weights keep values; only params matter."""

  def init(params: PyTree) -> SparsityState:
    masks = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), jnp.uint8), params)
    return SparsityState(jnp.zeros((), jnp.int32), masks, jnp.zeros((), jnp.float32))

  def masked(updates: PyTree, params: PyTree, masks: PyTree) -> PyTree:
    return jax.tree.map(lambda u, p, m: jnp.where(m > 0, u, -p), updates, params, masks)

  def update(updates: PyTree, state: SparsityState, params: PyTree | None = None) -> tuple:
    if params is None:
      raise ValueError('keep_sparse needs the params')
    step = state.count + 1  # the step the params reach with this update.
    updates = masked(updates, params, state.masks)

    def recompute(_: None) -> tuple:
      level = sparsity_lib.cubic(step, sp.begin_step, sp.end_step, sp.target)
      new = optax.apply_updates(params, updates)
      masks = sparsity_lib.magnitude_masks(model_config, new, level, sp.scope, sp.pattern)
      masks = jax.tree.map(lambda m: m.astype(jnp.uint8), masks)
      return masks, 1.0 - sparsity_lib.density(model_config, masks)

    keep = lambda _: (state.masks, state.sparsity)
    masks, level = jax.lax.cond(mask_step(sp, step), recompute, keep, None)
    return masked(updates, params, masks), SparsityState(step, masks, level)

  return optax.GradientTransformation(init, update)


def sparsity_metrics(opt_state: optax.OptState) -> dict[str, jax.Array]:
  """{'train/sparsity': the pruned fraction of the compressible kernels} under keep_sparse."""
  is_state = lambda x: isinstance(x, SparsityState)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]
  return {'train/sparsity': found[0].sparsity} if found else {}
