"""Exact parameter counts and FLOPs per token of a ModelConfig, under the named conventions (a
full config, a section or a dict: scaling/budget.py).

Parameter categories (all exact, from the config formula, and equal to the initialised pytree):
  token_embedding_params     V·d, the input embedding `embed` (tied: also the output head)
  position_embedding_params  P·d, the learned position table `pos_embed` (0 with rope)
  unembedding_params         d·V, the untied output head `unembed` (0 when tied)
  embedding_params           the sum of the three above: every vocabulary- or position-sized matrix
  non_embedding_params       everything else: attention, MLP, norms, biases, final norm
  params                     total = embedding_params + non_embedding_params (HF's count)

Kaplan et al. 2020 (arXiv 2001.08361) define N as the parameters "excluding all vocabulary and
positional embeddings"; we follow that and count an untied output head as a vocabulary embedding too
(it is a V×d matrix like the input one; with tied embeddings there is nothing extra), reporting it
separately as `unembedding_params`. For GPT-2 (tied) `non_embedding_params` is exactly the
"without wte/wpe" column of ../shared/reference/facts.md (85,056,000 for gpt2). Norm scales, norm
biases and linear biases are non-embedding parameters (Kaplan's N ≈ 12·n_layer·d² ignores them).

FLOPs per token (one token of training unless the name says forward):
  flops_per_token_6n                 6·params: C = 6·N·D with N the total count (Chinchilla's N).
  flops_per_token_6n_non_embedding   6·non_embedding_params: Kaplan's C ≈ 6·N·D.
  flops_per_token_kaplan_forward     2·N + 2·n_layer·n_ctx·d_attn, N non-embedding, d_attn = H·Dh,
                                     n_ctx = seq_len (Kaplan et al. 2020, Table 1).
  flops_per_token_kaplan             3 × the forward (backward = 2 × forward).
  flops_per_token_chinchilla_forward Hoffmann et al. 2022 (arXiv 2203.15556) Appendix F, forward, per
                                     token: embedding 2·V·d (counted as a one-hot matmul), per layer
                                     QKV 2·d·(H+2K)·Dh (K kv heads; = 2·3·d·H·Dh for MHA), logits
                                     2·S·H·Dh, softmax 3·H·S, softmax·V 2·S·H·Dh, output 2·H·Dh·d,
                                     MLP 2·n_mats·d·f (n_mats 2 for GELU, 3 for SwiGLU), and the output
                                     logits 2·d·V. Full (non-causal) S×S attention; norms, biases,
                                     nonlinearities other than softmax are not counted.
  flops_per_token_chinchilla         3 × the forward (backward = 2 × forward).
  flops_per_token_attn_head          6·(non_embedding_params + d·V) + 6·n_layer·n_ctx·d_attn: 3 × Kaplan's
                                     forward with the output head counted in N (Porian et al. 2024,
                                     arXiv 2406.19146, sec. 3: the head's FLOPs and attention matter at
                                     small scale); N there is `non_embedding_params_with_head`.
  flops_per_token_mfu                what the trainer logs for MFU (PaLM, arXiv 2204.02311, App. B):
                                     6·N_matmul + 12·L·H·Q·T, N_matmul the weights that take part
                                     in matmuls (all block weights plus the V×D output projection,
                                     tied or not; not the input lookup or the position table), the
                                     full (not causal-halved) T×T score matrix, no rematerialisation.
"""

import math

import jax

from models import param_shapes
from models.config import ModelConfig, head_dim, kv_heads

EMBEDDING_LEAVES = {
  'embed': 'token_embedding_params',
  'pos_embed': 'position_embedding_params',
  'unembed': 'unembedding_params',
}


def _seq_len(m: ModelConfig, seq_len: int | None) -> int:
  return int(m.max_len if seq_len is None else seq_len)


def _mlp_mats(m: ModelConfig) -> int:
  return 3 if m.mlp in ('swiglu', 'geglu') else 2


def param_counts(m: ModelConfig) -> dict:
  """Exact parameter counts by category (see module docstring) from the config formula."""
  m = ModelConfig.expect(m)
  d, v, f = m.d_model, m.vocab_size, m.d_ff
  h, k, dh = m.n_heads, kv_heads(m), head_dim(m)
  per_feature = 2 if (m.norm == 'layernorm' and m.use_bias) else 1  # norm scale (+ bias).
  norm = d * per_feature
  qkv_bias = (h + 2 * k) * dh if (m.use_bias or m.qkv_bias) else 0
  attn = (
    d * dh * (h + 2 * k)
    + qkv_bias
    + h * dh * d
    + (d if m.use_bias or m.out_bias else 0)
    + (2 * per_feature * dh if m.qk_norm else 0)
  )  # q/k norms over head_dim.
  n_mats = _mlp_mats(m)
  mlp = n_mats * d * f + ((n_mats - 1) * f + d if m.use_bias else 0)
  layer = 2 * norm + attn + mlp
  out = {
    'token_embedding_params': v * d,
    'position_embedding_params': m.max_len * d if m.positions == 'learned' else 0,
    'unembedding_params': 0 if m.tie_embeddings else d * v,
    'non_embedding_params': m.n_layers * layer + norm,
  }
  out['embedding_params'] = (
    out['token_embedding_params'] + out['position_embedding_params'] + out['unembedding_params']
  )
  out['params'] = out['embedding_params'] + out['non_embedding_params']
  return out


def pytree_param_counts(m: ModelConfig) -> dict:
  """The same categories, counted from the shapes of the initialised pytree (models.param_shapes)."""
  shapes = param_shapes(ModelConfig.expect(m))
  out = {name: 0 for name in EMBEDDING_LEAVES.values()}
  out['non_embedding_params'] = 0
  for key, leaf in shapes.items():
    size = sum(math.prod(x.shape) for x in jax.tree.leaves(leaf))
    out[EMBEDDING_LEAVES.get(key, 'non_embedding_params')] += size
  out['embedding_params'] = sum(out[n] for n in EMBEDDING_LEAVES.values())
  out['params'] = out['embedding_params'] + out['non_embedding_params']
  return out


def checked_param_counts(m: ModelConfig) -> dict:
  """param_counts, after checking they equal the pytree's counts (raises AssertionError if not)."""
  formula, tree = param_counts(m), pytree_param_counts(m)
  if formula != tree:
    raise AssertionError(f'parameter count formula {formula} != initialised pytree {tree} for {m}')
  return formula


def matmul_params(m: ModelConfig) -> int:
  """Weights used in matmuls per token: blocks (no norms/biases) + the output projection."""
  m = ModelConfig.expect(m)
  attn = m.d_model * head_dim(m) * (2 * m.n_heads + 2 * kv_heads(m))
  mlp = m.d_model * m.d_ff * _mlp_mats(m)
  return m.n_layers * (attn + mlp) + m.d_model * m.vocab_size


def head_params(m: ModelConfig) -> int:
  """d·V, the output projection's weights: the untied `unembed`, or the tied embedding as the head."""
  m = ModelConfig.expect(m)
  return m.d_model * m.vocab_size


def train_flops_per_token(m: ModelConfig, seq_len: int, causal: bool = False) -> float:
  """PaLM's training FLOPs per token, the MFU convention: 6·N_matmul + 12·L·H·Q·T; `causal`:
  MaxText's, which counts only the causal half of the attention matrix (6·L·H·Q·T)."""
  m = ModelConfig.expect(m)
  return (
    6 * matmul_params(m) + (6 if causal else 12) * m.n_layers * m.n_heads * head_dim(m) * seq_len
  )


def flops_per_token_kaplan_forward(m: ModelConfig, seq_len: int | None = None) -> float:
  """Kaplan et al. 2020, Table 1: 2·N + 2·n_layer·n_ctx·d_attn with N non-embedding."""
  m = ModelConfig.expect(m)
  d_attn = m.n_heads * head_dim(m)
  n = param_counts(m)['non_embedding_params']
  return 2.0 * n + 2.0 * m.n_layers * _seq_len(m, seq_len) * d_attn


def flops_per_token_chinchilla_forward(m: ModelConfig, seq_len: int | None = None) -> float:
  """Hoffmann et al. 2022, Appendix F, forward FLOPs per token (see module docstring)."""
  m = ModelConfig.expect(m)
  s = _seq_len(m, seq_len)
  d, v, f = m.d_model, m.vocab_size, m.d_ff
  h, k, dh = m.n_heads, kv_heads(m), head_dim(m)
  per_layer = (
    2 * d * (h + 2 * k) * dh  # Q, K, V projections
    + 2 * s * h * dh  # QK^T logits
    + 3 * h * s  # softmax
    + 2 * s * h * dh  # softmax @ V
    + 2 * h * dh * d  # output projection
    + 2 * _mlp_mats(m) * d * f
  )  # MLP
  return float(2 * v * d + m.n_layers * per_layer + 2 * d * v)


def flop_counts(m: ModelConfig, seq_len: int | None = None) -> dict:
  """All FLOPs-per-token conventions (module docstring) for `m` at seq_len (default max_len)."""
  m = ModelConfig.expect(m)
  s = _seq_len(m, seq_len)
  p = param_counts(m)
  kaplan_fwd = flops_per_token_kaplan_forward(m, s)
  chin_fwd = flops_per_token_chinchilla_forward(m, s)
  with_head = p['non_embedding_params'] + head_params(m)
  return {
    'seq_len': s,
    'flops_per_token_6n': 6.0 * p['params'],
    'flops_per_token_6n_non_embedding': 6.0 * p['non_embedding_params'],
    'flops_per_token_kaplan_forward': kaplan_fwd,
    'flops_per_token_kaplan': 3.0 * kaplan_fwd,
    'flops_per_token_chinchilla_forward': chin_fwd,
    'flops_per_token_chinchilla': 3.0 * chin_fwd,
    'flops_per_token_attn_head': 3.0 * kaplan_fwd + 6.0 * head_params(m),
    'flops_per_token_mfu': float(train_flops_per_token(m, s)),
    'matmul_params': int(matmul_params(m)),
    'non_embedding_params_with_head': int(with_head),
  }
