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
All paths take scores and softmax in float32 and return the query's dtype. Packed rows (several
examples per row) pass segment ids [B, L]: a query attends only to earlier keys of its own segment
('xla', 'blockwise' and 'splash'; cuDNN's fused kernel here takes no such mask, so 'auto' falls
back to 'xla' for packed rows and an explicit 'cudnn' refuses them).
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


SEGMENTED = ('xla', 'blockwise', 'splash')  # the kernels that take segment ids (packed rows).


def applies(impl: str, cfg: ModelConfig, length: int, packed: bool = False) -> bool:
  """Whether `impl` can run this shape: cuDNN needs bf16/fp16 and head dim <= 128 in multiples
  of 8 and unpacked rows; splash needs L a multiple of 128."""
  if packed and impl not in SEGMENTED:
    return False
  if impl == 'cudnn':
    dh = head_dim(cfg)
    return cfg.dtype in ('bfloat16', 'float16') and dh <= 128 and dh % 8 == 0
  if impl == 'splash':
    return length % 128 == 0
  return True


def resolve(
  cfg: ModelConfig, length: int, row: backend.Backend | None = None, packed: bool = False
) -> str:
  """The kernel `cfg.attention_impl` means for a length-`length` sequence on `row` (default: this
  process's backend), `packed` rows having segment ids: explicit choices as given, 'auto' the
  backend's preferred kernel if it applies, else its fallback ('xla' for packed rows)."""
  if cfg.attention_impl != 'auto':
    return cfg.attention_impl
  row = row or backend.current()
  if applies(row.attention, cfg, length, packed):
    return row.attention
  return row.fallback if row.fallback in SEGMENTED or not packed else 'xla'


def check_packed(impl: str) -> None:
  """ValueError unless kernel `impl` takes segment ids (packed rows of several examples)."""
  if impl not in SEGMENTED and impl != 'auto':
    raise ValueError(
      f'config.model.attention_impl={impl!r} does not support packed rows (segment ids, from '
      f'jsonl: data) yet; use one of {", ".join(SEGMENTED)} or auto'
    )


def causal(
  cfg: ModelConfig,
  q_BxLxHxDh: jax.Array,
  k_BxLxKxDh: jax.Array,
  v_BxLxKxDh: jax.Array,
  scale: float | None,
  segment_ids_BxL: jax.Array | None = None,
) -> jax.Array:
  """Causal attention (K divides H: grouped-query) with the kernel `resolve` picks; scale None:
  1 / sqrt(head dim). With segment ids a query sees only earlier keys of its own segment."""
  packed = segment_ids_BxL is not None
  impl = resolve(cfg, q_BxLxHxDh.shape[1], packed=packed)
  if packed:
    check_packed(impl)
  scale = q_BxLxHxDh.shape[-1] ** -0.5 if scale is None else scale
  if impl == 'blockwise':
    return blockwise(
      q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, scale, cfg.attention_block, segment_ids_BxL
    )
  if impl == 'splash':
    return splash_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, scale, segment_ids_BxL)
  mask = None
  if packed:  # [B, 1, L, L]: same segment (the causal part is is_causal's).
    mask = segment_ids_BxL[:, None, :, None] == segment_ids_BxL[:, None, None, :]
  return jax.nn.dot_product_attention(
    q_BxLxHxDh,
    k_BxLxKxDh,
    v_BxLxKxDh,
    mask=mask,
    is_causal=True,
    scale=scale,
    implementation=impl,
  ).astype(q_BxLxHxDh.dtype)


def blockwise(
  q_BxLxHxDh: jax.Array,
  k_BxLxKxDh: jax.Array,
  v_BxLxKxDh: jax.Array,
  scale: float,
  block: int,
  segment_ids_BxL: jax.Array | None = None,
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
    if segment_ids_BxL is None:
      s_BxKxRxS = jnp.where(causal_RxS, s_BxKxRxS, jnp.finfo(jnp.float32).min)
    else:
      seg_q_BxR = jnp.repeat(segment_ids_BxL[:, start:end], G, axis=1)
      same_BxRxS = seg_q_BxR[:, :, None] == segment_ids_BxL[:, None, :end]
      allowed_Bx1xRxS = (causal_RxS[None] & same_BxRxS)[:, None]
      s_BxKxRxS = jnp.where(allowed_Bx1xRxS, s_BxKxRxS, jnp.finfo(jnp.float32).min)
    p_BxKxRxS = jax.nn.softmax(s_BxKxRxS, axis=-1).astype(v_BxLxKxDh.dtype)
    o_BxKxRxDh = jnp.einsum(
      'bkrs,bksd->bkrd', p_BxKxRxS, v_BxKxLxDh[:, :, :end], preferred_element_type=jnp.float32
    )
    outs.append(o_BxKxRxDh.reshape(B, K, end - start, G, Dh))
  o_BxKxLxGxDh = jnp.concatenate(outs, axis=2)
  return o_BxKxLxGxDh.transpose(0, 2, 1, 3, 4).reshape(B, L, H, Dh).astype(q_BxLxHxDh.dtype)


def splash_attention(
  q_BxLxHxDh: jax.Array,
  k_BxLxKxDh: jax.Array,
  v_BxLxKxDh: jax.Array,
  scale: float,
  segment_ids_BxL: jax.Array | None = None,
) -> jax.Array:
  """Pallas splash attention per example, under shard_map over the current mesh (a pallas_call is
  not partitioned by the compiler): batch split as 'batch', heads as 'heads' / 'kv_heads'. Segment
  ids go to the kernel's own SegmentIds (AND-ed with the causal mask)."""
  interpret = jax.default_backend() != 'tpu'

  def local(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL):
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
    kv = (k_BxLxKxDh.transpose(0, 2, 1, 3), v_BxLxKxDh.transpose(0, 2, 1, 3))
    if segment_ids_BxL is None:
      o_BxHxLxDh = jax.vmap(kernel)(q_BxHxLxDh, *kv)
    else:
      one = lambda q, k, v, seg_L: kernel(q, k, v, segment_ids=splash.SegmentIds(seg_L, seg_L))
      o_BxHxLxDh = jax.vmap(one)(q_BxHxLxDh, *kv, segment_ids_BxL)
    return o_BxHxLxDh.transpose(0, 2, 1, 3).astype(q_BxLxHxDh.dtype)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL)
  q_spec = P(*nn.logical_to_mesh_axes(('batch', 'length', 'heads', 'head_dim')))
  kv_spec = P(*nn.logical_to_mesh_axes(('batch', 'length', 'kv_heads', 'head_dim')))
  seg_spec = P(*nn.logical_to_mesh_axes(('batch', 'length')))
  if segment_ids_BxL is None:
    return jax.shard_map(
      lambda q, k, v: local(q, k, v, None),
      mesh=mesh,
      in_specs=(q_spec, kv_spec, kv_spec),
      out_specs=q_spec,
      check_vma=False,
    )(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh)
  return jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
    out_specs=q_spec,
    check_vma=False,
  )(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL)
