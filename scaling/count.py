"""Exact parameter counts and FLOPs per token for any model config, under the named conventions.

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
  flops_per_token_mfu                what the trainer logs for MFU (train/flops.py, PaLM App. B):
                                     6·matmul_params + 12·L·H·Dh·S.

  python -m scaling.count --config=configs/gpt2.py:124m [--config.model.n_layers=6]
"""

import json
import math

import jax
from absl import app, flags
from ml_collections import config_flags

import models
from models.config import ModelConfig
from train import flops as train_flops
from train import validation

EMBEDDING_LEAVES = {
  'embed': 'token_embedding_params',
  'pos_embed': 'position_embedding_params',
  'unembed': 'unembedding_params',
}


def _model_config(config) -> ModelConfig:
  """A ModelConfig from a full config (with .model), a model section, a dict or a ModelConfig."""
  if isinstance(config, ModelConfig):
    return config
  if hasattr(config, 'model') or (isinstance(config, dict) and 'model' in config):
    config = config['model']
  return ModelConfig.make(config)


def _seq_len(config, seq_len):
  if seq_len is not None:
    return int(seq_len)
  try:
    return int(config['data']['seq_len'])
  except (KeyError, TypeError, AttributeError):
    return int(_model_config(config).max_len)


def param_counts(config) -> dict:
  """Exact parameter counts by category (see module docstring) from the config formula."""
  m = _model_config(config)
  d, v, f = m.d_model, m.vocab_size, m.d_ff
  h, k, dh = m.n_heads, models.kv_heads(m), models.head_dim(m)
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
  n_mats = 3 if m.mlp in ('swiglu', 'geglu') else 2
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


def pytree_param_counts(config) -> dict:
  """The same categories, counted from the shapes of the initialised pytree (models.param_shapes)."""
  m = _model_config(config)
  shapes = models.param_shapes(m)
  out = {name: 0 for name in EMBEDDING_LEAVES.values()}
  out['non_embedding_params'] = 0
  for key, leaf in shapes.items():
    size = _tree_size(leaf)
    out[EMBEDDING_LEAVES.get(key, 'non_embedding_params')] += size
  out['embedding_params'] = sum(out[n] for n in EMBEDDING_LEAVES.values())
  out['params'] = out['embedding_params'] + out['non_embedding_params']
  return out


def _tree_size(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def checked_param_counts(config) -> dict:
  """param_counts, after checking they equal the pytree's counts (raises AssertionError if not)."""
  formula, tree = param_counts(config), pytree_param_counts(config)
  if formula != tree:
    raise AssertionError(
      f'parameter count formula {formula} != initialised pytree {tree} for {_model_config(config)}'
    )
  return formula


def flops_per_token_kaplan_forward(config, seq_len=None) -> float:
  """Kaplan et al. 2020, Table 1: 2·N + 2·n_layer·n_ctx·d_attn with N non-embedding."""
  m = _model_config(config)
  d_attn = m.n_heads * models.head_dim(m)
  n = param_counts(m)['non_embedding_params']
  return 2.0 * n + 2.0 * m.n_layers * _seq_len(config, seq_len) * d_attn


def flops_per_token_chinchilla_forward(config, seq_len=None) -> float:
  """Hoffmann et al. 2022, Appendix F, forward FLOPs per token (see module docstring)."""
  m = _model_config(config)
  s = _seq_len(config, seq_len)
  d, v, f = m.d_model, m.vocab_size, m.d_ff
  h, k, dh = m.n_heads, models.kv_heads(m), models.head_dim(m)
  n_mats = 3 if m.mlp in ('swiglu', 'geglu') else 2
  per_layer = (
    2 * d * (h + 2 * k) * dh  # Q, K, V projections
    + 2 * s * h * dh  # QK^T logits
    + 3 * h * s  # softmax
    + 2 * s * h * dh  # softmax @ V
    + 2 * h * dh * d  # output projection
    + 2 * n_mats * d * f
  )  # MLP
  return float(2 * v * d + m.n_layers * per_layer + 2 * d * v)


def flop_counts(config, seq_len=None) -> dict:
  """All FLOPs-per-token conventions (module docstring) for config at seq_len (default data.seq_len)."""
  m = _model_config(config)
  s = _seq_len(config, seq_len)
  p = param_counts(m)
  kaplan_fwd = flops_per_token_kaplan_forward(m, s)
  chin_fwd = flops_per_token_chinchilla_forward(m, s)
  return {
    'seq_len': s,
    'flops_per_token_6n': 6.0 * p['params'],
    'flops_per_token_6n_non_embedding': 6.0 * p['non_embedding_params'],
    'flops_per_token_kaplan_forward': kaplan_fwd,
    'flops_per_token_kaplan': 3.0 * kaplan_fwd,
    'flops_per_token_chinchilla_forward': chin_fwd,
    'flops_per_token_chinchilla': 3.0 * chin_fwd,
    'flops_per_token_mfu': float(train_flops.train_flops_per_token(m, s)),
    'matmul_params': int(train_flops.matmul_params(m)),
  }


def training_tokens(config) -> int:
  """Tokens a config trains on: num_steps (or total_tokens rounded down to whole steps) × B·T."""
  return int(validation.steps_for(config) * config.train.global_batch_size * config.data.seq_len)


def count(config, seq_len=None, check=True) -> dict:
  """Parameter counts (checked against the pytree unless check=False) and FLOPs per token."""
  out = dict(checked_param_counts(config) if check else param_counts(config))
  out['tied_embeddings'] = bool(_model_config(config).tie_embeddings)
  out.update(flop_counts(config, seq_len))
  if hasattr(config, 'train') and hasattr(config, 'data'):
    tokens = training_tokens(config)
    out['train_tokens'] = tokens
    out['train_flops_6n'] = out['flops_per_token_6n'] * tokens
    out['train_flops_chinchilla'] = out['flops_per_token_chinchilla'] * tokens
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  out = count(config, check=not _NO_CHECK.value)
  out['pytree_checked'] = not _NO_CHECK.value
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).')
  _NO_CHECK = flags.DEFINE_bool('no_check', False, 'Skip the pytree cross-check (formula only).')
  flags.mark_flags_as_required(['config'])
  app.run(main)
