"""Model FLOPs per token for MFU, and the peak FLOP/s table per device kind.

Convention (PaLM, arXiv 2204.02311, App. B): training FLOPs per token =
6·N_matmul + 12·L·H·Q·T, where N_matmul counts the weights that take part in matmuls
(all block weights plus the V×D output projection, tied or not; not the input lookup
or the position table), L layers, H query heads, Q head dim, T sequence length. The
attention term counts the full T×T score matrix (PaLM), not the causal half (MaxText);
rematerialisation is not counted. MFU = tokens/s × flops_per_token / (devices × peak).
"""

import math

import jax

from models.config import ModelConfig, head_dim, kv_heads

# Dense bf16 peak FLOP/s per chip/GPU (vendor datasheets; H100/H200 without sparsity).
PEAK_FLOPS = {
  'TPU v4': 275e12,
  'TPU v5 lite': 197e12,  # v5e
  'TPU v5e': 197e12,
  'TPU v5p': 459e12,
  'TPU v5': 459e12,
  'TPU v6 lite': 918e12,  # v6e / Trillium
  'TPU v6e': 918e12,
  'H100': 989e12,
  'H200': 989e12,
  'A100': 312e12,
}


def peak_flops(device: jax.Device | None = None) -> float:
  """Peak FLOP/s of one device, or NaN when unknown (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if name.lower() in kind.lower():
      return flops
  return math.nan


def matmul_params(cfg: ModelConfig) -> int:
  """Weights used in matmuls per token: blocks (no norms/biases) + the output projection."""
  hd, kv = head_dim(cfg), kv_heads(cfg)
  attn = cfg.d_model * hd * (2 * cfg.n_heads + 2 * kv)
  mlp = cfg.d_model * cfg.d_ff * (3 if cfg.mlp in ('swiglu', 'geglu') else 2)
  return cfg.n_layers * (attn + mlp) + cfg.d_model * cfg.vocab_size


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """6·N_matmul + 12·L·H·Q·T (see module docstring)."""
  hd = head_dim(cfg)
  return 6 * matmul_params(cfg) + 12 * cfg.n_layers * cfg.n_heads * hd * seq_len
