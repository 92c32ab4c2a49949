"""Decoder-only transformer covering the GPT-2, LLaMA, Qwen and Gemma families.

One flat set of small modules; the choices (positions, norm, MLP, attention heads, tied
embeddings, biases) come from the `config.model` section. Parameters are float32 and carry
logical axis names; compute runs in `model.dtype`; softmax, logits and loss in float32.
Shape suffixes: B batch, L length, D d_model, H query heads, K kv heads, Dh head dim,
F d_ff, V vocab, N layers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import act_quant, attention, backend, parametrization, resident_quant, rtn
from models.config import ModelConfig, PyTree, head_dim, kv_heads

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# (keys, values): [B, S, K, Dh] per layer, [N, B, S, K, Dh] for the whole model.
KVCache = tuple[jax.Array, jax.Array]

REMAT_POLICIES = {
  'full': None,  # save nothing: recompute the whole layer.
  'dots': jax.checkpoint_policies.checkpoint_dots,
  'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _f32_dot_inputs(*xs):
  """Inputs of a dot that accumulates in float32. XLA:CPU has no float16 x float16 -> float32
  dot (GPUs do), so on CPU float16 inputs are upcast: float16 runs there for tests and studies."""
  if jax.default_backend() == 'cpu':
    return tuple(x.astype(jnp.float32) if x.dtype == jnp.float16 else x for x in xs)
  return xs


def _param(module, name, shape, axes, init=None):
  """A float32 param with logical axes; weights (init None) get the parametrization's init std."""
  if init is None:
    init = nn.initializers.normal(parametrization.scales(module.cfg, axes, shape).init)
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def fp8(x: jax.Array) -> jax.Array:
  """x rounded to float8_e4m3fn (saturating at ±448) and back, with a straight-through gradient:
  a simulated fp8 matmul input (the product still accumulates in the compute dtype)."""
  f8, top = jnp.float8_e4m3fn, float(jnp.finfo(jnp.float8_e4m3fn).max)
  q = jnp.clip(x, -top, top).astype(f8).astype(x.dtype)
  return x + jax.lax.stop_gradient(q - x)


def _matmul(cfg, eqn, x, kernel, **kw):
  """einsum in the compute dtype; with model.fp8 both inputs are first rounded to fp8."""
  kernel = kernel.astype(DTYPES[cfg.dtype])
  if cfg.fp8:
    x, kernel = fp8(x), fp8(kernel)
  return jnp.einsum(eqn, x, kernel, **kw)


def _dense(module, name, x, eqn, shape, axes, n_out, bias):
  """einsum(eqn, x, kernel) in the compute dtype times the parametrization's multiplier, plus an
  optional zero-init bias over the kernel's last `n_out` (output) dims, named `<name>_bias`."""
  cfg = module.cfg
  if module.has_variable(resident_quant.COLLECTION, name):  # held quantized: dequantize here.
    kernel = resident_quant.dequantize(module.get_variable(resident_quant.COLLECTION, name), shape)
  elif parametrization.held_quantized(cfg, axes):  # QLoRA's kernel is no param: a stand-in at init
    kernel = module.variable(resident_quant.COLLECTION, name, jnp.ones, shape).value
  else:
    kernel = _param(module, name, shape, axes)
  if parametrization.compressible(axes):  # its input, for GPTQ / AWQ (models/calibrated_quant.py)
    module.sow('calibration', name, x)
  x_in, kernel = act_quant.dense_inputs(module, name, x, kernel, axes)  # W8A8, SmoothQuant
  if cfg.weight_quant != 'none' and parametrization.compressible(axes):  # QAT / PTQ (models/rtn.py)
    kernel = rtn.fake_quant(kernel, axes, cfg.weight_quant, cfg.weight_group)
  y = _matmul(cfg, eqn, x_in, kernel)
  if parametrization.lora_target(cfg, axes):
    y = y + _lora(module, name, x, eqn, kernel, axes, n_out, y)
  y = parametrization.apply(y, parametrization.scales(cfg, axes, shape))
  if bias:
    y = y + _param(
      module, name + '_bias', shape[-n_out:], axes[-n_out:], nn.initializers.zeros
    ).astype(DTYPES[cfg.dtype])
  return y


def _lora(module, name, x, eqn, kernel, axes, n_out, y):
  """LoRA's update of the dense layer y = einsum(eqn, x, W): (x·A)·B × lora_scale, A [fan_in...,
  r] (`<name>_lora_a`), B [r, fan_out...] (`<name>_lora_b`); x·W + that is x·(W + A·B·scale),
  which models/lora.py merges. Adapters stack over 'layers' as W does (no copy of W). As in PEFT:
  model.lora_dropout drops x's entries before A when the apply has a 'dropout' rng (training);
  with DoRA the update is PEFT's (s - 1)·x·W + s·(x·A·B·scale), s = m / ||W + A·B·scale||."""
  cfg, r, shape = module.cfg, module.cfg.lora_rank, kernel.shape
  ins, out = eqn.split('->')
  xs, ks = ins.split(',')
  k_in, k_out, batch = ks[:-n_out], ks[-n_out:], out[:-n_out]  # 'z': the rank (not in eqn).
  a = _param(module, name + '_lora_a', (*shape[:-n_out], r), (*axes[:-n_out], 'lora'))
  b = _param(module, name + '_lora_b', (r, *shape[-n_out:]), ('lora', *axes[-n_out:]))
  if cfg.lora_dropout and module.has_rng('dropout'):
    keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - cfg.lora_dropout, x.shape)
    x, y = jnp.where(keep, x / jnp.asarray(1.0 - cfg.lora_dropout, x.dtype), 0), None
  xa = _matmul(cfg, f'{xs},{k_in}z->{batch}z', x, a)
  update = _matmul(cfg, f'{batch}z,z{k_out}->{out}', xa, b) * parametrization.lora_scale(cfg)
  if not cfg.lora_dora:
    return update
  # The norm is a constant to the gradient (DoRA section 4.3, PEFT's detach); m starts at it.
  norm = jax.lax.stop_gradient(dora_norm(kernel, a, b, parametrization.lora_scale(cfg)))
  m = _param(
    module, name + '_lora_m', (1, *norm.shape), ('dora', *axes[-n_out:]), lambda *_: norm[None]
  )
  s = (m[0] / norm).astype(update.dtype)
  if y is None:  # PEFT: with dropout, x·W too is taken on the dropped-out input.
    y = _matmul(cfg, eqn, x, kernel)
  return (s - 1) * y + s * update


def dora_norm(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """DoRA's column norms ||W + A·B·scale|| in float32, over the fan-in axes: W [lead..., fan_in...,
  fan_out...], A [lead..., fan_in..., r], B [lead..., r, fan_out...] -> [lead..., fan_out...]
  (lead: the stacked-layers axis when W has one)."""
  n_lead = a.ndim + b.ndim - 2 - kernel.ndim  # counted once in each of A and B.
  n_in = a.ndim - 1 - n_lead
  a2 = a.reshape(*a.shape[:n_lead], -1, a.shape[-1]).astype(jnp.float32)  # [lead..., I, r]
  b2 = b.reshape(*b.shape[: n_lead + 1], -1).astype(jnp.float32)  # [lead..., r, O]
  w = kernel.astype(jnp.float32) + scale * jnp.matmul(a2, b2).reshape(kernel.shape)
  return jnp.sqrt(jnp.sum(w * w, axis=tuple(range(n_lead, n_lead + n_in))))


class Norm(nn.Module):
  """LayerNorm (mean-centred, optional bias) or RMSNorm, computed in float32."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    cfg = self.cfg
    x = x_BxLxD.astype(jnp.float32)
    if cfg.norm == 'layernorm':
      x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps)
    n = x.shape[-1]  # d_model, or head_dim for the q/k norms.
    if cfg.norm_plus_one:  # Gemma: (1 + scale), scale zero-init.
      x = x * (1.0 + _param(self, 'scale', (n,), ('norm',), nn.initializers.zeros))
    else:
      x = x * _param(self, 'scale', (n,), ('norm',), nn.initializers.ones)
    if cfg.norm == 'layernorm' and cfg.use_bias:
      x = x + _param(self, 'bias', (n,), ('norm',), nn.initializers.zeros)
    return x.astype(DTYPES[cfg.dtype])


def rope_frequencies(cfg: ModelConfig, dh: int) -> jax.Array:
  """Inverse frequencies [Dh/2] as transformers computes them for cfg.rope_scaling. 'dynamic'
  rescales theta only past rope_original_max_len (per call, statefully): plain rope within it."""
  inv_freq = 1.0 / cfg.rope_theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)
  if cfg.rope_scaling == 'linear':
    return inv_freq / cfg.rope_factor
  if cfg.rope_scaling == 'dynamic' and cfg.max_len > cfg.rope_original_max_len:
    raise ValueError(
      f'rope_scaling dynamic: max_len {cfg.max_len} exceeds rope_original_max_len '
      f'{cfg.rope_original_max_len}, beyond which it depends on run-time lengths'
    )
  if cfg.rope_scaling == 'llama3':  # Low frequencies / factor, high kept, a smooth ramp between.
    old, low, high = cfg.rope_original_max_len, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelen = 2 * jnp.pi / inv_freq
    scaled = jnp.where(wavelen > old / low, inv_freq / cfg.rope_factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
    return jnp.where((wavelen >= old / high) & (wavelen <= old / low), smoothed, scaled)
  return inv_freq


def rope(x_BxLxHxDh: jax.Array, positions: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Rotary embedding, HF/LLaMA 'rotate half' layout (first and second halves pair up).
  positions: [L] (shared by the batch) or [B, L] (per row, e.g. left-padded decoding)."""
  dh = x_BxLxHxDh.shape[-1]
  inv_freq = rope_frequencies(cfg, dh)
  positions_BxL = jnp.atleast_2d(positions)
  angles_BxLxDh2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq
  cos = jnp.cos(jnp.concatenate([angles_BxLxDh2] * 2, -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([angles_BxLxDh2] * 2, -1))[:, :, None, :]
  x = x_BxLxHxDh.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos + rotated * sin).astype(x_BxLxHxDh.dtype)


class Attention(nn.Module):
  """Causal multi-head / grouped-query attention (kernels in models/attention.py)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(
    self, x_BxLxD: jax.Array, cache: KVCache | None = None, ctx: dict | None = None
  ) -> tuple[jax.Array, KVCache | None]:
    """Training: causal attention over x; packed rows (no cache, ctx from `packed_context`) attend
    within their segments at per-segment positions. Decoding (cache = (keys, values) [B, S, K,
    Dh], ctx from `decode_context`): x's keys/values are written at slot ctx['index'] of the
    cache and the queries attend over the cache under ctx's mask. Returns (output, cache or
    None)."""
    cfg = self.cfg
    D, H, K, Dh = cfg.d_model, cfg.n_heads, kv_heads(cfg), head_dim(cfg)

    def proj(name, heads, head_axis, dim_axis):  # qkv_bias alone: Qwen2 (no out/MLP biases).
      return _dense(
        self,
        name,
        x_BxLxD,
        'bld,dhk->blhk',
        (D, heads, Dh),
        ('embed', head_axis, dim_axis),
        2,
        cfg.use_bias or cfg.qkv_bias,
      )

    q_BxLxHxDh = proj('query', H, 'heads', 'head_dim')
    k_BxLxKxDh = proj('key', K, 'kv_heads', 'head_dim')
    v_BxLxKxDh = proj('value', K, 'kv_heads', 'v_head_dim')  # its own name: a LoRA target apart
    if cfg.qk_norm:  # Qwen3: each head's query and key normed over head_dim, before rope.
      q_BxLxHxDh = Norm(cfg, name='query_norm')(q_BxLxHxDh)
      k_BxLxKxDh = Norm(cfg, name='key_norm')(k_BxLxKxDh)
    if cfg.positions == 'rope':
      positions = jnp.arange(x_BxLxD.shape[1]) if ctx is None else ctx['positions_BxL']
      q_BxLxHxDh = rope(q_BxLxHxDh, positions, cfg)
      k_BxLxKxDh = rope(k_BxLxKxDh, positions, cfg)
    if cache is not None:
      return self._decode(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, cache, ctx)
    # Scores and softmax in float32; the kernel is model.attention_impl's (models/attention.py).
    # GQA: K divides H, heads are grouped.
    o_BxLxHxDh = attention.causal(
      cfg,
      *_f32_dot_inputs(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh),
      parametrization.attention_scale(cfg),
      None if ctx is None else ctx['segment_ids_BxL'],
    )
    self.sow('importance', 'heads', o_BxLxHxDh)  # read by models/pruning.py only.
    return self._out(o_BxLxHxDh.astype(q_BxLxHxDh.dtype)), None

  def _out(self, o_BxLxHxDh):
    cfg = self.cfg
    H, Dh, D = cfg.n_heads, head_dim(cfg), cfg.d_model
    return _dense(
      self,
      'out',
      o_BxLxHxDh,
      'blhk,hkd->bld',
      (H, Dh, D),
      ('heads', 'v_head_dim', 'embed'),
      1,
      cfg.use_bias or cfg.out_bias,
    )

  def _decode(self, q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, cache, ctx):
    """Attention of L new tokens over the KV cache (S slots) after writing theirs at ctx['index']."""
    k_BxSxKxDh, v_BxSxKxDh = (
      jax.lax.dynamic_update_slice_in_dim(c, x.astype(c.dtype), ctx['index'], axis=1)
      for c, x in zip(cache, (k_BxLxKxDh, v_BxLxKxDh))
    )
    o_BxLxHxDh = jax.nn.dot_product_attention(
      *_f32_dot_inputs(
        q_BxLxHxDh, k_BxSxKxDh.astype(q_BxLxHxDh.dtype), v_BxSxKxDh.astype(q_BxLxHxDh.dtype)
      ),
      mask=ctx['mask_BxLxS'][:, None],
      scale=parametrization.attention_scale(self.cfg),
      implementation='xla',
    )
    return self._out(o_BxLxHxDh.astype(q_BxLxHxDh.dtype)), (k_BxSxKxDh, v_BxSxKxDh)


class Mlp(nn.Module):
  """GELU MLP (GPT-2, tanh approximation), SwiGLU (LLaMA) or GeGLU (Gemma)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    cfg = self.cfg
    D, F = cfg.d_model, cfg.d_ff

    def dense(name, x, shape, axes):
      return _dense(self, name, x, '...i,io->...o', shape, axes, 1, cfg.use_bias)

    h_BxLxF = dense('wi', x_BxLxD, (D, F), ('embed', 'mlp'))
    if cfg.mlp in ('swiglu', 'geglu'):
      gate_BxLxF = dense('wg', x_BxLxD, (D, F), ('embed', 'mlp'))
      act = nn.silu if cfg.mlp == 'swiglu' else lambda g: nn.gelu(g, approximate=True)
      h_BxLxF = act(gate_BxLxF) * h_BxLxF
    else:
      h_BxLxF = nn.gelu(h_BxLxF, approximate=True)
    h_BxLxF = nn.with_logical_constraint(h_BxLxF, ('batch', 'length', 'mlp'))
    self.sow('importance', 'hidden', h_BxLxF)  # read by models/pruning.py only.
    return dense('wo', h_BxLxF, (F, D), ('mlp', 'embed'))


def _probe(module, name, x):
  """Identity; lets a coordinate check read x ('intermediates') and its gradient ('perturbations').
  Both collections are absent in training (and dropped inside nn.scan), so this costs nothing."""
  module.sow('intermediates', name, x)
  return module.perturb(name, x)


def _residual_add(cfg, x_BxLxD, f_BxLxD, branch):
  """x + f(x), or the parametrization's weighted sum (u-μP) for residual branch `branch`."""
  weights = parametrization.residual_weights(cfg, branch)
  if weights is None:
    return x_BxLxD + f_BxLxD
  skip, scale = (w.astype(x_BxLxD.dtype) for w in weights)
  return skip * x_BxLxD + scale * f_BxLxD


class Block(nn.Module):
  """Pre-norm residual block; the (carry, layer index) signature lets nn.scan stack it."""

  cfg: ModelConfig

  @nn.compact
  def __call__(
    self,
    x_BxLxD: jax.Array,
    layer: jax.Array,
    cache: KVCache | None = None,
    ctx: dict | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    cfg = self.cfg
    attn_BxLxD, cache = Attention(cfg, name='attn')(
      Norm(cfg, name='attn_norm')(x_BxLxD), cache, ctx
    )
    x_BxLxD = _residual_add(cfg, x_BxLxD, _probe(self, 'attn_out', attn_BxLxD), 2 * layer)
    mlp_BxLxD = Mlp(cfg, name='mlp')(Norm(cfg, name='mlp_norm')(x_BxLxD))
    x_BxLxD = _residual_add(cfg, x_BxLxD, _probe(self, 'mlp_out', mlp_BxLxD), 2 * layer + 1)
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ('batch', 'length', 'embed'))
    return _probe(self, 'residual', x_BxLxD), cache


def _unroll(cfg: ModelConfig) -> int:
  """Layers per scan iteration: model.scan_unroll, else the backend's choice. A remat run stays
  rolled: XLA:CPU schedules an unrolled stack's recomputation so that remat saves nothing
  (measured: 329 MB of temporaries with remat='full' unrolled, 101 MB rolled, 327 MB without)."""
  if cfg.scan_unroll:
    return cfg.scan_unroll
  return cfg.n_layers if backend.current().unroll_layers and cfg.remat == 'none' else 1


def decode_context(index: int | jax.Array, pads_B: jax.Array, length: int, cache_len: int) -> dict:
  """Positions and attention mask of `length` new tokens written at cache slot `index`, for rows
  left-padded by pads_B slots: a query at slot i sees slots pad..i of its row."""
  slots_L = index + jnp.arange(length)
  keys_S = jnp.arange(cache_len)
  mask_BxLxS = (keys_S[None, None, :] <= slots_L[None, :, None]) & (
    keys_S[None, None, :] >= pads_B[:, None, None]
  )
  return {
    'index': index,
    'positions_BxL': jnp.maximum(slots_L[None, :] - pads_B[:, None], 0),
    'mask_BxLxS': mask_BxLxS,
  }


def packed_context(segment_ids_BxL: jax.Array, positions_BxL: jax.Array) -> dict:
  """The ctx of rows packed with several examples: segment ids [B, L] (attention stays within a
  segment) and positions [B, L] (restarting at 0 in each segment, for rope or learned)."""
  return {'segment_ids_BxL': segment_ids_BxL, 'positions_BxL': positions_BxL}


def unembedding(cfg: ModelConfig, params: PyTree) -> jax.Array:
  """The output projection [D, V] (the embedding table's transpose when tied)."""
  return params['embed'].T if cfg.tie_embeddings else params['unembed']


def readout(cfg: ModelConfig, x_BxLxD: jax.Array, unembed_DxV: jax.Array) -> jax.Array:
  """float32 logits [B, L, V] from final features. The matmul accumulates in float32 whatever the
  compute dtype; with model.vocab_multiple > 1 it runs over the vocabulary padded with zero
  columns (aligned shapes on accelerators) and the padding is cut off again."""
  D, V = unembed_DxV.shape
  padded = -(-V // cfg.vocab_multiple) * cfg.vocab_multiple
  if padded > V:
    unembed_DxV = jnp.pad(unembed_DxV, ((0, 0), (0, padded - V)))
  (x_BxLxD,) = _f32_dot_inputs(x_BxLxD)
  logits_BxLxV = _matmul(
    cfg,
    'bld,dv->blv',
    x_BxLxD,
    unembed_DxV.astype(x_BxLxD.dtype),
    preferred_element_type=jnp.float32,
  )[..., :V]
  return parametrization.apply(
    logits_BxLxV, parametrization.scales(cfg, ('embed', 'vocab'), (D, V))
  )


class Transformer(nn.Module):
  """Token ids [B, L] -> float32 logits [B, L, V]; when decoding (cache: keys and values
  [N, B, S, K, Dh], ctx: `decode_context`) -> (logits, updated cache); packed rows pass ctx from
  `packed_context` and no cache; with head=False -> the final normed features [B, L, D] (for
  `readout` by chunks)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(
    self,
    tokens_BxL: jax.Array,
    cache: KVCache | None = None,
    ctx: dict | None = None,
    head: bool = True,
  ) -> jax.Array | tuple[jax.Array, KVCache]:
    cfg = self.cfg
    dtype = DTYPES[cfg.dtype]
    V, D = cfg.vocab_size, cfg.d_model
    embed_VxD = _param(self, 'embed', (V, D), ('vocab', 'embed'))
    x_BxLxD = jnp.take(embed_VxD, tokens_BxL, axis=0).astype(dtype)
    # μP's input multiplier α_in (a no-op at 1, as always under SP).
    x_BxLxD = parametrization.apply(
      x_BxLxD, parametrization.scales(cfg, ('vocab', 'embed'), (V, D))
    )
    if cfg.embed_scale:  # Gemma: x sqrt(d_model) rounded to the compute dtype, as HF does.
      x_BxLxD = x_BxLxD * jnp.asarray(D**0.5, dtype)
    if cfg.positions == 'learned':
      pos_PxD = _param(self, 'pos_embed', (cfg.max_len, D), ('position', 'embed'))
      if ctx is None:
        pos_BxLxD = pos_PxD[: tokens_BxL.shape[1]].astype(dtype)[None]
      else:
        pos_BxLxD = jnp.take(pos_PxD, ctx['positions_BxL'], axis=0).astype(dtype)
      pos_scales = parametrization.scales(cfg, ('position', 'embed'), (cfg.max_len, D))
      x_BxLxD = x_BxLxD + parametrization.apply(pos_BxLxD, pos_scales)
    x_BxLxD = _probe(
      self, 'embedding', nn.with_logical_constraint(x_BxLxD, ('batch', 'length', 'embed'))
    )
    layer_N = jnp.arange(cfg.n_layers, dtype=jnp.int32)

    block = Block
    if cfg.remat != 'none':
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      # One traced layer, params stacked on a leading 'layers' axis: compile time flat in depth.
      layers = nn.scan(
        block,
        variable_axes={'params': 0, resident_quant.COLLECTION: 0},
        split_rngs={'params': True, 'dropout': True},  # each layer its own LoRA dropout.
        in_axes=(0, 0, nn.broadcast),
        length=cfg.n_layers,
        unroll=_unroll(cfg),
        metadata_params={nn.PARTITION_NAME: 'layers'},
      )
      x_BxLxD, cache = layers(cfg, name='layers')(x_BxLxD, layer_N, cache, ctx)
    else:
      new = []
      for i in range(cfg.n_layers):
        layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
        x_BxLxD, layer_cache = block(cfg, name=f'layer_{i}')(x_BxLxD, layer_N[i], layer_cache, ctx)
        new.append(layer_cache)
      cache = None if cache is None else jax.tree.map(lambda *c: jnp.stack(c), *new)

    x_BxLxD = _probe(self, 'final', Norm(cfg, name='final_norm')(x_BxLxD))
    if (
      cfg.tie_embeddings
    ):  # the shared table keeps its embedding init and lr (mup's MuSharedReadout).
      unembed_DxV = embed_VxD.T
    else:
      unembed_DxV = _param(self, 'unembed', (D, V), ('embed', 'vocab'))
    if not head:  # the final features, for a loss that applies `readout` chunk by chunk.
      return x_BxLxD
    logits_BxLxV = readout(cfg, x_BxLxD, unembed_DxV)
    self.sow('intermediates', 'logits', logits_BxLxV)
    logits_BxLxV = nn.with_logical_constraint(logits_BxLxV, ('batch', 'length', 'vocab'))
    return logits_BxLxV if cache is None else (logits_BxLxV, cache)
