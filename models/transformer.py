"""Decoder-only transformer covering the GPT-2 and LLaMA families.

One flat set of small modules; the choices (positions, norm, MLP, attention heads, tied
embeddings, biases) come from the `config.model` section. Parameters are float32 and carry
logical axis names; compute runs in `model.dtype`; softmax, logits and loss in float32.
Shape suffixes: B batch, L length, D d_model, H query heads, K kv heads, Dh head dim,
F d_ff, V vocab, N layers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

REMAT_POLICIES = {
    'full': None,  # save nothing: recompute the whole layer.
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def head_dim(cfg) -> int:
  return cfg.head_dim or cfg.d_model // cfg.n_heads


def kv_heads(cfg) -> int:
  return cfg.n_kv_heads or cfg.n_heads


def _param(module, name, shape, axes, init):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _dense(module, name, x, eqn, shape, axes, n_out, init, bias, dtype):
  """einsum(eqn, x, kernel) in the compute dtype, plus an optional zero-init bias over the
  kernel's last `n_out` (output) dims, named `<name>_bias`."""
  y = jnp.einsum(eqn, x, _param(module, name, shape, axes, init).astype(dtype))
  if bias:
    y = y + _param(module, name + '_bias', shape[-n_out:], axes[-n_out:],
                   nn.initializers.zeros).astype(dtype)
  return y


class Norm(nn.Module):
  """LayerNorm (mean-centred, optional bias) or RMSNorm, computed in float32."""
  cfg: object

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    x = x_BxLxD.astype(jnp.float32)
    if cfg.norm == 'layernorm':
      x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps)
    x = x * _param(self, 'scale', (cfg.d_model,), ('norm',), nn.initializers.ones)
    if cfg.norm == 'layernorm' and cfg.use_bias:
      x = x + _param(self, 'bias', (cfg.d_model,), ('norm',), nn.initializers.zeros)
    return x.astype(DTYPES[cfg.dtype])


def rope(x_BxLxHxDh, positions_L, theta):
  """Rotary embedding, HF/LLaMA 'rotate half' layout (first and second halves pair up)."""
  dh = x_BxLxHxDh.shape[-1]
  inv_freq = 1.0 / theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)
  angles_LxDh2 = positions_L.astype(jnp.float32)[:, None] * inv_freq[None, :]
  cos = jnp.cos(jnp.concatenate([angles_LxDh2] * 2, -1))[None, :, None, :]
  sin = jnp.sin(jnp.concatenate([angles_LxDh2] * 2, -1))[None, :, None, :]
  x = x_BxLxHxDh.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxLxHxDh.dtype)


class Attention(nn.Module):
  """Causal multi-head / grouped-query attention through jax.nn.dot_product_attention."""
  cfg: object

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    dtype = DTYPES[cfg.dtype]
    D, H, K, Dh = cfg.d_model, cfg.n_heads, kv_heads(cfg), head_dim(cfg)
    init = nn.initializers.normal(cfg.init_std)
    # Residual-branch output projections are scaled down with depth (GPT-2).
    out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def proj(name, heads, axes):  # qkv_bias alone: Qwen2 (no out-projection/MLP biases).
      return _dense(self, name, x_BxLxD, 'bld,dhk->blhk', (D, heads, Dh),
                    ('embed', axes, 'head_dim'), 2, init, cfg.use_bias or cfg.qkv_bias, dtype)

    q_BxLxHxDh = proj('query', H, 'heads')
    k_BxLxKxDh = proj('key', K, 'kv_heads')
    v_BxLxKxDh = proj('value', K, 'kv_heads')
    if cfg.positions == 'rope':
      positions_L = jnp.arange(x_BxLxD.shape[1])
      q_BxLxHxDh = rope(q_BxLxHxDh, positions_L, cfg.rope_theta)
      k_BxLxKxDh = rope(k_BxLxKxDh, positions_L, cfg.rope_theta)
    # Logits and softmax are computed in float32 inside dot_product_attention (XLA path);
    # 'cudnn' selects the fused flash kernel on GPU. GQA: K divides H, heads are grouped.
    o_BxLxHxDh = jax.nn.dot_product_attention(
        q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, is_causal=True,
        implementation=None if cfg.attention_impl == 'auto' else cfg.attention_impl)
    return _dense(self, 'out', o_BxLxHxDh, 'blhk,hkd->bld', (H, Dh, D),
                  ('heads', 'head_dim', 'embed'), 1, out_init, cfg.use_bias, dtype)


class Mlp(nn.Module):
  """GELU MLP (GPT-2, tanh approximation) or SwiGLU (LLaMA)."""
  cfg: object

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    dtype = DTYPES[cfg.dtype]
    D, F = cfg.d_model, cfg.d_ff
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def dense(name, x, shape, axes, w_init):
      return _dense(self, name, x, '...i,io->...o', shape, axes, 1, w_init, cfg.use_bias, dtype)

    h_BxLxF = dense('wi', x_BxLxD, (D, F), ('embed', 'mlp'), init)
    if cfg.mlp == 'swiglu':
      gate_BxLxF = dense('wg', x_BxLxD, (D, F), ('embed', 'mlp'), init)
      h_BxLxF = nn.silu(gate_BxLxF) * h_BxLxF
    else:
      h_BxLxF = nn.gelu(h_BxLxF, approximate=True)
    h_BxLxF = nn.with_logical_constraint(h_BxLxF, ('batch', 'length', 'mlp'))
    return dense('wo', h_BxLxF, (F, D), ('mlp', 'embed'), out_init)


class Block(nn.Module):
  """Pre-norm residual block; the (carry, None) signature lets nn.scan stack it."""
  cfg: object

  @nn.compact
  def __call__(self, x_BxLxD, _):
    x_BxLxD = x_BxLxD + Attention(self.cfg, name='attn')(Norm(self.cfg, name='attn_norm')(x_BxLxD))
    x_BxLxD = x_BxLxD + Mlp(self.cfg, name='mlp')(Norm(self.cfg, name='mlp_norm')(x_BxLxD))
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ('batch', 'length', 'embed'))
    return x_BxLxD, None


class Transformer(nn.Module):
  """Token ids [B, L] -> float32 logits [B, L, V]."""
  cfg: object

  @nn.compact
  def __call__(self, tokens_BxL):
    cfg = self.cfg
    dtype = DTYPES[cfg.dtype]
    embed_VxD = _param(self, 'embed', (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'),
                       nn.initializers.normal(cfg.init_std))
    x_BxLxD = jnp.take(embed_VxD, tokens_BxL, axis=0).astype(dtype)
    if cfg.positions == 'learned':
      pos_PxD = _param(self, 'pos_embed', (cfg.max_len, cfg.d_model), ('position', 'embed'),
                       nn.initializers.normal(cfg.init_std / 2))
      x_BxLxD = x_BxLxD + pos_PxD[:tokens_BxL.shape[1]].astype(dtype)[None]
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ('batch', 'length', 'embed'))

    block = Block
    if cfg.remat != 'none':
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      # One traced layer, params stacked on a leading 'layers' axis: compile time flat in depth.
      layers = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True},
                       length=cfg.n_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
      x_BxLxD, _ = layers(cfg, name='layers')(x_BxLxD, None)
    else:
      for i in range(cfg.n_layers):
        x_BxLxD, _ = block(cfg, name=f'layer_{i}')(x_BxLxD, None)

    x_BxLxD = Norm(cfg, name='final_norm')(x_BxLxD)
    if cfg.tie_embeddings:
      unembed_DxV = embed_VxD.T
    else:
      unembed_DxV = _param(self, 'unembed', (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'),
                           nn.initializers.normal(cfg.init_std))
    # Logits in float32: the matmul accumulates in float32 whatever the compute dtype.
    logits_BxLxV = jnp.einsum('bld,dv->blv', x_BxLxD, unembed_DxV.astype(dtype),
                              preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits_BxLxV, ('batch', 'length', 'vocab'))
