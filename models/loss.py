"""Token negative log-likelihood: the one place the next-token cross-entropy is written.

`nll(logits, targets)` works on logits a caller already has; `token_nll(cfg, params, inputs,
targets)` runs the model and, with model.loss_chunk > 0, applies the readout and the softmax
chunk by chunk along the sequence under `jax.checkpoint`, so neither the forward nor the
backward ever holds float32 logits for the whole [B, L, V] (large vocabularies, long rows).
"""

import jax
import jax.numpy as jnp

from models.config import ModelConfig, PyTree
from models.transformer import Transformer, readout, unembedding


def nll(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float32 NLL per token [B, L], 0 where the target is masked (< 0); and the mask [B, L]."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  mask_BxL = (targets_BxL >= 0).astype(jnp.float32)
  safe_BxL = jnp.maximum(targets_BxL, 0)
  target_BxL = jnp.take_along_axis(logits_BxLxV, safe_BxL[..., None], -1)[..., 0]
  return (jax.nn.logsumexp(logits_BxLxV, -1) - target_BxL) * mask_BxL, mask_BxL


def token_nll(
  cfg: ModelConfig, params: PyTree, inputs_BxL: jax.Array, targets_BxL: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(NLL per token [B, L] in float32, mask [B, L]) of `targets` given `inputs` (same length)."""
  chunk = cfg.loss_chunk
  if not chunk or chunk >= inputs_BxL.shape[1]:
    return nll(Transformer(cfg).apply({'params': params}, inputs_BxL), targets_BxL)
  x_BxLxD = Transformer(cfg).apply({'params': params}, inputs_BxL, head=False)
  unembed_DxV = unembedding(cfg, params)
  B, L, D = x_BxLxD.shape
  if L % chunk:
    raise ValueError(f'config.model.loss_chunk={chunk} does not divide the sequence length {L}')
  x_CxBxKxD = x_BxLxD.reshape(B, L // chunk, chunk, D).swapaxes(0, 1)
  t_CxBxK = targets_BxL.reshape(B, L // chunk, chunk).swapaxes(0, 1)

  @jax.checkpoint  # keep only the chunk's inputs; its logits are recomputed in the backward.
  def one(x_BxKxD, t_BxK):
    return nll(readout(cfg, x_BxKxD, unembed_DxV), t_BxK)

  nll_CxBxK, mask_CxBxK = jax.lax.map(lambda xt: one(*xt), (x_CxBxKxD, t_CxBxK))
  return nll_CxBxK.swapaxes(0, 1).reshape(B, L), mask_CxBxK.swapaxes(0, 1).reshape(B, L)
