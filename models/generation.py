"""Sampling with a KV cache: the left-padded prompts are prefilled in one forward pass, then each
new token is one cached decode step inside a single compiled loop (no recompilation per token).

Greedy (temperature 0), temperature, top-k and top-p (nucleus) sampling; logits in float32.
Shape suffixes as in models/transformer.py, plus P prompt length, S cache slots, T new tokens.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models import resident_quant
from models.config import ModelConfig, PyTree
from models.transformer import DTYPES, KVCache, Transformer, decode_context, head_dim, kv_heads

Prompts = Sequence[Sequence[int]] | np.ndarray | jax.Array


def init_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
  """Zero keys and values [N, B, S, K, Dh] in the compute dtype."""
  zeros = jnp.zeros((cfg.n_layers, batch, slots, kv_heads(cfg), head_dim(cfg)), DTYPES[cfg.dtype])
  return zeros, zeros


def filter_logits(
  logits_BxV: jax.Array, top_k: int = 0, top_p: float | jax.Array = 1.0
) -> jax.Array:
  """float32 logits with everything outside the top-k and the top-p nucleus set to -inf."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  if top_k:
    kth_B = jax.lax.top_k(logits_BxV, top_k)[0][:, -1]
    logits_BxV = jnp.where(logits_BxV < kth_B[:, None], -jnp.inf, logits_BxV)
  # Nucleus: keep the most likely tokens until their mass reaches top_p (at least one).
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  cutoff_B = jnp.min(jnp.where(mass_before_BxV < top_p, sorted_BxV, jnp.inf), axis=-1)
  return jnp.where(logits_BxV < cutoff_B[:, None], -jnp.inf, logits_BxV)


def sample(
  logits_BxV: jax.Array,
  rng: jax.Array,
  greedy: bool,
  temperature: float | jax.Array = 1.0,
  top_k: int = 0,
  top_p: float | jax.Array = 1.0,
) -> jax.Array:
  """Next tokens [B]: argmax when greedy, else a draw from the filtered softmax(logits / T)."""
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  filtered_BxV = filter_logits(logits_BxV.astype(jnp.float32) / temperature, top_k, top_p)
  return jax.random.categorical(rng, filtered_BxV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('cfg', 'max_new_tokens', 'greedy', 'top_k', 'eos_id'))
def _generate(
  cfg,
  params,
  prompts_BxP,
  pads_B,
  rng,
  temperature,
  top_p,
  *,
  max_new_tokens,
  greedy,
  top_k,
  eos_id,
):
  """(new tokens [B, T], the logits each was drawn from [B, T, V])."""
  model, variables = Transformer(cfg), resident_quant.variables(params)
  B, P = prompts_BxP.shape
  S = P + max_new_tokens
  ctx = decode_context(0, pads_B, P, S)
  logits_BxPxV, cache = model.apply(variables, prompts_BxP, init_cache(cfg, B, S), ctx)

  def step(carry, t):
    cache, logits_BxV, done_B = carry
    tokens_B = sample(logits_BxV, jax.random.fold_in(rng, t), greedy, temperature, top_k, top_p)
    if eos_id is not None:  # after its EOS a row keeps emitting EOS.
      tokens_B = jnp.where(done_B, eos_id, tokens_B)
      done_B = done_B | (tokens_B == eos_id)
    next_BxLxV, cache = model.apply(
      variables, tokens_B[:, None], cache, decode_context(P + t, pads_B, 1, S)
    )
    return (cache, next_BxLxV[:, 0], done_B), (tokens_B, logits_BxV)

  init = (cache, logits_BxPxV[:, -1], jnp.zeros((B,), bool))
  _, (tokens_TxB, logits_TxBxV) = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
  return tokens_TxB.T, jnp.swapaxes(logits_TxBxV, 0, 1)


def left_pad(prompts: Prompts, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(int32 [B, P] with each prompt right-aligned, pads [B]) from sequences of varying length."""
  rows = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
  if not rows or min(len(r) for r in rows) == 0:
    raise ValueError('prompts: need at least one prompt, each of at least one token')
  width = max(len(r) for r in rows)
  out = np.full((len(rows), width), pad_id, np.int32)
  for i, r in enumerate(rows):
    out[i, width - len(r) :] = r
  return out, np.asarray([width - len(r) for r in rows], np.int32)


def check_options(
  cfg: ModelConfig,
  prompt_len: int,
  max_new_tokens: int,
  temperature: float,
  top_k: int,
  top_p: float,
) -> None:
  """ValueError naming the first bad sampling option (checked before anything compiles)."""
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
  if prompt_len + max_new_tokens > cfg.max_len:
    raise ValueError(
      f'prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceeds the '
      f'context (model max_len={cfg.max_len})'
    )
  if not temperature >= 0:
    raise ValueError(f'temperature must be >= 0 (0: greedy), got {temperature}')
  if not 0 <= top_k <= cfg.vocab_size:
    raise ValueError(f'top_k must be in [0, vocab_size={cfg.vocab_size}] (0: off), got {top_k}')
  if not 0 < top_p <= 1:
    raise ValueError(f'top_p must be in (0, 1] (1: off), got {top_p}')


def generate_with_logits(
  model_config: ModelConfig,
  params: PyTree,
  prompts: Prompts,
  max_new_tokens: int,
  *,
  temperature: float = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
  rng: jax.Array | None = None,
  eos_id: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """`generate`, plus the float32 logits [B, T, V] each new token was chosen from."""
  cfg = ModelConfig.expect(model_config)
  prompts_BxP, pads_B = left_pad(prompts)
  check_options(cfg, prompts_BxP.shape[1], max_new_tokens, temperature, top_k, top_p)
  if temperature > 0 and rng is None:
    raise ValueError('rng: sampling with temperature > 0 needs a jax.random key')
  rng = jax.random.key(0) if rng is None else rng
  new_BxT, logits_BxTxV = _generate(
    cfg,
    params,
    jnp.asarray(prompts_BxP),
    jnp.asarray(pads_B),
    rng,
    jnp.float32(temperature or 1.0),
    jnp.float32(top_p),
    max_new_tokens=max_new_tokens,
    greedy=temperature == 0,
    top_k=top_k,
    eos_id=eos_id,
  )
  return jnp.concatenate([jnp.asarray(prompts_BxP), new_BxT], axis=1), logits_BxTxV


def generate(
  model_config: ModelConfig,
  params: PyTree,
  prompts: Prompts,
  max_new_tokens: int,
  *,
  temperature: float = 0.0,
  top_k: int = 0,
  top_p: float = 1.0,
  rng: jax.Array | None = None,
  eos_id: int | None = None,
) -> jax.Array:
  """int32 [B, P + max_new_tokens]: the prompts left-padded with 0 to the longest (P), then the
  new tokens (the last max_new_tokens columns). temperature 0 is greedy; top_k 0 and top_p 1 are
  off. With eos_id, a row that emitted it keeps emitting it."""
  return generate_with_logits(
    model_config,
    params,
    prompts,
    max_new_tokens,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    rng=rng,
    eos_id=eos_id,
  )[0]
