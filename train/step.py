"""Pure step functions: LM loss, gradient accumulation by scan, optimizer update, eval.

A loss function has the signature `loss_fn(params, batch, *frozen) -> (loss_sum, sums)`,
where `sums` is a dict of per-token sums including 'tokens' (the count). Dividing by
the token count happens once, after accumulation, so k microbatches give exactly the
token-weighted mean of one k-times-larger batch.
"""

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import jmp
import optax

from models import loss
from models.config import ModelConfig, PyTree
from train import optimizer as optim

# loss_fn(params, batch, *frozen) -> (loss_sum, sums), as in the module docstring.
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
# The train batch's per-row dropout keys (uint32 [B, 2], `dropout_keys`): only training steps
# carry them, so model.lora_dropout is active in training and never in evaluation.
DROPOUT_KEYS = 'dropout_keys'


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


@flax.struct.dataclass
class ScaledTrainState(TrainState):
  """TrainState plus the dynamic loss scale of float16 training (jmp.DynamicLossScale's arrays,
  kept as plain arrays so orbax checkpoints them like the rest of the state)."""

  loss_scale: jax.Array
  loss_scale_counter: jax.Array


# train_step(state, batch, *frozen) -> (new state, metrics).
TrainStepFn = Callable[..., tuple[TrainState, dict[str, jax.Array]]]


def cross_entropy_sum(
  logits_BxLxV: jax.Array, targets_BxL: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Summed token cross-entropy in float32 and the token count (targets < 0 are masked)."""
  nll_BxL, mask_BxL = loss.nll(logits_BxLxV, targets_BxL)
  return nll_BxL.sum(), mask_BxL.sum()


def lm_loss(model_config: ModelConfig) -> LossFn:
  """Next-token loss on rows batch['tokens'] [B, L+1]: inputs row[:-1], targets row[1:]; rows
  packed with examples (batch['segment_ids'], ['positions'], ['loss_mask']) count only the masked-in
  targets of each segment (models/loss.py next_token_rows), so the step's mean is per target
  token. With model.loss_chunk the full float32 logits are never materialised. A batch with
  DROPOUT_KEYS drops out (model.lora_dropout) with its first row's key."""
  cfg = ModelConfig.expect(model_config)

  def loss_fn(params, batch):
    inputs_BxL, targets_BxL, ctx = loss.next_token_rows(batch)
    keys = batch.get(DROPOUT_KEYS)
    rng = None if keys is None else jax.random.wrap_key_data(keys[0])
    nll_BxL, mask_BxL = loss.token_nll(cfg, params, inputs_BxL, targets_BxL, ctx, rng)
    loss_sum = nll_BxL.sum()
    return loss_sum, {'loss': loss_sum, 'tokens': mask_BxL.sum()}

  return loss_fn


def dropout_keys(seed: int, step: jax.Array, rows: int) -> jax.Array:
  """Per-row dropout keys (uint32 [rows, 2]) of a train step: one per (seed, step, row), so
  microbatch j (rows j, j+k, ...) and a resumed run draw the same masks."""
  keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), step), rows)
  return jax.random.key_data(keys)


def microbatches(batch: PyTree, k: int) -> PyTree:
  """Leaves [B, ...] -> [k, B/k, ...]; microbatch j = rows j, j+k, ... so devices keep their rows."""

  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def accumulate_grads(
  loss_fn: LossFn, params: PyTree, batch: PyTree, k: int, *frozen: PyTree
) -> tuple[PyTree, dict[str, jax.Array]]:
  """Summed loss grads and sums over k microbatches (lax.scan), then the token-weighted mean."""
  grad_fn = jax.grad(loss_fn, has_aux=True)
  if k == 1:
    grads, sums = grad_fn(params, batch, *frozen)
  else:

    def body(carry, mb):
      g, s = grad_fn(params, mb, *frozen)
      return jax.tree.map(jnp.add, carry, (g, s)), None

    first = jax.tree.map(lambda x: x[0], microbatches(batch, k))
    zeros = jax.eval_shape(grad_fn, params, first, *frozen)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), zeros)
    (grads, sums), _ = jax.lax.scan(body, zeros, microbatches(batch, k))
  n = jnp.maximum(sums['tokens'], 1.0)
  grads = jax.tree.map(lambda g: g / n, grads)
  return grads, sums


def make_train_step(
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  lr_fn: optax.Schedule,
  grad_accum_steps: int,
  loss_scale_period: int = 0,
  trainable: PyTree | None = None,
  dropout_seed: int | None = None,
) -> TrainStepFn:
  """(state, batch, *frozen) -> (state, metrics): one optimizer step, metrics per step.

  `trainable` (bools matching params; None: all) zeroes the gradients of frozen params, so XLA
  drops their computation and grad_norm is the trained params' (LoRA). With `dropout_seed` each
  batch gets `dropout_keys` (DROPOUT_KEYS) for the loss (model.lora_dropout).

  With loss_scale_period > 0 the state is a ScaledTrainState: the loss is multiplied by the
  dynamic loss scale before differentiation (so float16 gradients neither underflow nor overflow),
  gradients are unscaled, and a step whose gradients are not finite is skipped while the scale
  halves (jmp.DynamicLossScale; it doubles after `loss_scale_period` finite steps). The stored
  scale applies to the token-mean loss (the usual convention, at least 1); the summed loss
  differentiated here is multiplied by scale / tokens per microbatch."""

  def train_step(state: TrainState, batch, *frozen):
    if dropout_seed is not None:
      keys = dropout_keys(dropout_seed, state.step, batch['tokens'].shape[0])
      batch = {**batch, DROPOUT_KEYS: keys}
    if loss_scale_period:
      scale = jmp.DynamicLossScale(state.loss_scale, state.loss_scale_counter, loss_scale_period)
      rows, cols = batch['tokens'].shape
      factor = scale.loss_scale / (rows // grad_accum_steps * (cols - 1))  # per summed token.

      def scaled_loss_fn(params, batch, *frozen):
        loss_sum, sums = loss_fn(params, batch, *frozen)
        return loss_sum * factor, sums

      grads, sums = accumulate_grads(scaled_loss_fn, state.params, batch, grad_accum_steps, *frozen)
      grads = jax.tree.map(lambda g: g / factor, grads)
      finite = jmp.all_finite(grads)
      scale = scale.adjust(finite)
    else:
      grads, sums = accumulate_grads(loss_fn, state.params, batch, grad_accum_steps, *frozen)
    if trainable is not None:
      grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    n = jnp.maximum(sums['tokens'], 1.0)
    metrics = {f'train/{k}': v / n for k, v in sums.items() if k != 'tokens'}
    metrics.update(
      {
        'train/grad_norm': optax.global_norm(grads),
        'train/param_norm': optax.global_norm(params),
        'train/lr': lr_fn(state.step),
        'train/tokens': sums['tokens'],
      }
    )
    metrics.update(optim.sparsity_metrics(opt_state))
    if not loss_scale_period:
      return TrainState(state.step + 1, params, opt_state), metrics
    params, opt_state = jmp.select_tree(
      finite, (params, opt_state), (state.params, state.opt_state)
    )
    metrics.update(
      {'train/loss_scale': scale.loss_scale, 'train/skipped': 1.0 - finite.astype(jnp.float32)}
    )
    return ScaledTrainState(
      state.step + 1, params, opt_state, scale.loss_scale, scale.counter
    ), metrics

  return train_step


def make_eval_step(loss_fn: LossFn) -> Callable[..., dict[str, jax.Array]]:
  """(params, batch, *frozen) -> dict of sums over the batch (averaged by the caller)."""

  def eval_step(params, batch, *frozen):
    _, sums = loss_fn(params, batch, *frozen)
    return sums

  return eval_step
