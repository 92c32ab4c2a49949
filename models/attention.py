"""Causal self-attention kernels behind one switch, `model.attention_impl`.

  'xla'        jax.nn.dot_product_attention's XLA path: the full [B, H, L, L] float32 scores.
  'blockwise'  queries in blocks of `model.attention_block`; query block i attends to keys
               [0, (i + 1) b) only, so the masked upper triangle is neither computed nor stored
               (about half the score FLOPs and memory when L >> b). Pure JAX, any backend.
  'cudnn'      cuDNN's fused flash kernel (GPU, bfloat16 / float16).
  'splash'     Pallas splash attention (TPU); elsewhere it runs in Pallas interpret mode, which
               is how the tests check it against 'xla' on CPU.
  'auto'       `resolve`: the backend's preferred kernel (models/backend.py), or its fallback
               when that kernel does not apply to this dtype, length or head dim.
All paths take scores and softmax in float32 and return the query's dtype.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from models import backend
from models.config import ModelConfig, head_dim

_SPLASH_BLOCKS = (512, 256, 128)  # splash block sizes must be multiples of 128 dividing L.


def applies(impl: str, cfg: ModelConfig, length: int) -> bool:
  """Whether `impl` can run this shape: cuDNN needs bf16/fp16 and head dim <= 128 in multiples
  of 8; splash needs L a multiple of 128."""
  if impl == 'cudnn':
    dh = head_dim(cfg)
    return cfg.dtype in ('bfloat16', 'float16') and dh <= 128 and dh % 8 == 0
  if impl == 'splash':
    return length % 128 == 0
  return True


def resolve(cfg: ModelConfig, length: int, row: backend.Backend | None = None) -> str:
  """The kernel `cfg.attention_impl` means for a length-`length` sequence on `row` (default: this
  process's backend): explicit choices as given, 'auto' the backend's preferred kernel if it
  applies, else its fallback."""
  if cfg.attention_impl != 'auto':
    return cfg.attention_impl
  row = row or backend.current()
  return row.attention if applies(row.attention, cfg, length) else row.fallback


def causal(
  cfg: ModelConfig, q_BxLxHxDh: jax.Array, k_BxLxKxDh: jax.Array, v_BxLxKxDh: jax.Array, scale
) -> jax.Array:
  """Causal attention (K divides H: grouped-query) with the kernel `resolve` picks; scale None:
  1 / sqrt(head dim)."""
  impl = resolve(cfg, q_BxLxHxDh.shape[1])
  scale = q_BxLxHxDh.shape[-1] ** -0.5 if scale is None else scale
  if impl == 'blockwise':
    return blockwise(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, scale, cfg.attention_block)
  if impl == 'splash':
    return splash_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, scale)
  return jax.nn.dot_product_attention(
    q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, is_causal=True, scale=scale, implementation=impl
  ).astype(q_BxLxHxDh.dtype)


def blockwise(
  q_BxLxHxDh: jax.Array, k_BxLxKxDh: jax.Array, v_BxLxKxDh: jax.Array, scale, block: int
) -> jax.Array:
  """Causal attention by query blocks: block i sees keys up to its own last position only.

  Layout: kv heads go in front of the length once (one transpose each way) and a block's G query
  heads of one kv head stack as rows (Q positions x G heads), so each block is two plain batched
  matmuls over contiguous tiles (about 2x faster on CPU than dots over [B, L, H, Dh] slices)."""
  B, L, H, Dh = q_BxLxHxDh.shape
  K = k_BxLxKxDh.shape[2]
  G = H // K
  q_BxKxLxGxDh = q_BxLxHxDh.reshape(B, L, K, G, Dh).transpose(0, 2, 1, 3, 4)
  k_BxKxLxDh, v_BxKxLxDh = (x.transpose(0, 2, 1, 3) for x in (k_BxLxKxDh, v_BxLxKxDh))
  outs = []
  for start in range(0, L, block):
    end = min(start + block, L)  # keys [0, end) are the only ones this block can see.
    rows = (end - start) * G  # row r: position start + r // G, query head r % G.
    q_BxKxRxDh = q_BxKxLxGxDh[:, :, start:end].reshape(B, K, rows, Dh)
    s_BxKxRxS = jnp.einsum(
      'bkrd,bksd->bkrs', q_BxKxRxDh, k_BxKxLxDh[:, :, :end], preferred_element_type=jnp.float32
    )
    s_BxKxRxS = s_BxKxRxS * jnp.float32(scale)
    causal_RxS = (start + jnp.arange(rows) // G)[:, None] >= jnp.arange(end)[None, :]
    s_BxKxRxS = jnp.where(causal_RxS, s_BxKxRxS, jnp.finfo(jnp.float32).min)
    p_BxKxRxS = jax.nn.softmax(s_BxKxRxS, axis=-1).astype(v_BxLxKxDh.dtype)
    o_BxKxRxDh = jnp.einsum(
      'bkrs,bksd->bkrd', p_BxKxRxS, v_BxKxLxDh[:, :, :end], preferred_element_type=jnp.float32
    )
    outs.append(o_BxKxRxDh.reshape(B, K, end - start, G, Dh))
  o_BxKxLxGxDh = jnp.concatenate(outs, axis=2)
  return o_BxKxLxGxDh.transpose(0, 2, 1, 3, 4).reshape(B, L, H, Dh).astype(q_BxLxHxDh.dtype)


def splash_attention(
  q_BxLxHxDh: jax.Array, k_BxLxKxDh: jax.Array, v_BxLxKxDh: jax.Array, scale
) -> jax.Array:
  """Pallas splash attention per example, under shard_map over the current mesh (a pallas_call is
  not partitioned by the compiler): batch split as 'batch', heads as 'heads' / 'kv_heads'."""
  interpret = jax.default_backend() != 'tpu'

  def local(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh):
    _, L, H, _ = q_BxLxHxDh.shape
    block = next(b for b in _SPLASH_BLOCKS if L % b == 0)
    sizes = splash.BlockSizes(
      block_q=block,
      block_kv=block,
      block_kv_compute=block,
      block_q_dkv=block,
      block_kv_dkv=block,
      block_kv_dkv_compute=block,
      block_q_dq=block,
      block_kv_dq=block,
    )
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((L, L))] * H)
    kernel = splash.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)
    # The kernel takes [heads, L, Dh] and leaves the scaling to the caller.
    q_BxHxLxDh = (q_BxLxHxDh * jnp.asarray(scale, q_BxLxHxDh.dtype)).transpose(0, 2, 1, 3)
    o_BxHxLxDh = jax.vmap(kernel)(
      q_BxHxLxDh, k_BxLxKxDh.transpose(0, 2, 1, 3), v_BxLxKxDh.transpose(0, 2, 1, 3)
    )
    return o_BxHxLxDh.transpose(0, 2, 1, 3).astype(q_BxLxHxDh.dtype)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh)
  q_spec = P(*nn.logical_to_mesh_axes(('batch', 'length', 'heads', 'head_dim')))
  kv_spec = P(*nn.logical_to_mesh_axes(('batch', 'length', 'kv_heads', 'head_dim')))
  return jax.shard_map(
    local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec, check_vma=False
  )(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh)
