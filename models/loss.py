"""Token negative log-likelihood: the one place the next-token cross-entropy is written.

`nll(logits, targets)` works on logits a caller already has; `token_nll(cfg, params, inputs,
targets)` runs the model and, with model.loss_chunk > 0, applies the readout and the softmax
chunk by chunk along the sequence under `jax.checkpoint`, so neither the forward nor the
backward ever holds float32 logits for the whole [B, L, V] (large vocabularies, long rows).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from models import resident_quant
from models.config import ModelConfig, PyTree
from models.transformer import Transformer, packed_context, readout, unembedding

PACKED_KEYS = (
  'loss_mask',
  'segment_ids',
  'positions',
)  # a batch's keys beside 'tokens' when packed.


def nll(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float32 NLL per token [B, L], 0 where the target is masked (< 0); and the mask [B, L]."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  mask_BxL = (targets_BxL >= 0).astype(jnp.float32)
  safe_BxL = jnp.maximum(targets_BxL, 0)
  target_BxL = jnp.take_along_axis(logits_BxLxV, safe_BxL[..., None], -1)[..., 0]
  return (jax.nn.logsumexp(logits_BxLxV, -1) - target_BxL) * mask_BxL, mask_BxL


def next_token_rows(batch: dict) -> tuple[jax.Array, jax.Array, dict | None]:
  """(inputs [B, L], targets [B, L], ctx) of a batch of rows batch['tokens'] [B, L+1]. Plain rows:
  every next token is a target, ctx None. Packed rows (PACKED_KEYS, each [B, L+1]): the target at
  t+1 counts only where loss_mask is 1 and t+1 is in t's segment (-1, masked, elsewhere), and
  ctx = `packed_context` of the inputs' segment ids and positions."""
  tokens_BxL1 = batch['tokens']
  inputs_BxL, targets_BxL = tokens_BxL1[:, :-1], tokens_BxL1[:, 1:]
  if 'segment_ids' not in batch:
    return inputs_BxL, targets_BxL, None
  seg_BxL1 = batch['segment_ids']
  keep_BxL = (batch['loss_mask'][:, 1:] > 0) & (seg_BxL1[:, 1:] == seg_BxL1[:, :-1])
  targets_BxL = jnp.where(keep_BxL, targets_BxL, -1)
  return inputs_BxL, targets_BxL, packed_context(seg_BxL1[:, :-1], batch['positions'][:, :-1])


def features(
  cfg: ModelConfig,
  params: PyTree,
  inputs_BxL: jax.Array,
  ctx: dict | None = None,
  dropout_rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """(final normed features [B, L, D], unembedding [D, V]): what `readout` turns into logits;
  ctx: `packed_context` for packed rows; dropout_rng: a training step's (model.lora_dropout)."""
  x_BxLxD = Transformer(cfg).apply(
    resident_quant.variables(params), inputs_BxL, ctx=ctx, head=False, rngs=_rngs(dropout_rng)
  )
  return x_BxLxD, unembedding(cfg, params)


def _rngs(dropout_rng: jax.Array | None) -> dict:
  """The apply's rngs: a 'dropout' stream in training (dropout active), none in evaluation."""
  return {} if dropout_rng is None else {'dropout': dropout_rng}


def chunked(cfg: ModelConfig, length: int) -> bool:
  """Whether a length-`length` row's loss goes chunk by chunk (model.loss_chunk set and shorter)."""
  return 0 < cfg.loss_chunk < length


def chunk_map(fn: Callable, chunk: int, *xs_BxL: jax.Array):
  """fn over chunks of `chunk` positions of [B, L, ...] arrays, each under `jax.checkpoint` (only
  the chunk's inputs are kept; what fn builds, e.g. its logits, is recomputed in the backward);
  fn's per-position outputs [B, chunk, ...] come back as [B, L, ...]."""
  B, L = xs_BxL[0].shape[:2]
  if L % chunk:
    raise ValueError(f'config.model.loss_chunk={chunk} does not divide the sequence length {L}')
  split = lambda x: x.reshape(B, L // chunk, chunk, *x.shape[2:]).swapaxes(0, 1)
  join = lambda x: x.swapaxes(0, 1).reshape(B, L, *x.shape[3:])
  out = jax.lax.map(lambda xs: jax.checkpoint(fn)(*xs), tuple(split(x) for x in xs_BxL))
  return jax.tree.map(join, out)


def token_nll(
  cfg: ModelConfig,
  params: PyTree,
  inputs_BxL: jax.Array,
  targets_BxL: jax.Array,
  ctx: dict | None = None,
  dropout_rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """(NLL per token [B, L] in float32, mask [B, L]) of `targets` given `inputs` (same length);
  ctx: `packed_context` for packed rows (None: one sequence per row); dropout_rng: see features."""
  if not chunked(cfg, inputs_BxL.shape[1]):
    logits_BxLxV = Transformer(cfg).apply(
      resident_quant.variables(params), inputs_BxL, ctx=ctx, rngs=_rngs(dropout_rng)
    )
    return nll(logits_BxLxV, targets_BxL)
  x_BxLxD, unembed_DxV = features(cfg, params, inputs_BxL, ctx, dropout_rng)
  one = lambda x_BxKxD, t_BxK: nll(readout(cfg, x_BxKxD, unembed_DxV), t_BxK)
  return chunk_map(one, cfg.loss_chunk, x_BxLxD, targets_BxL)
