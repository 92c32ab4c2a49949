"""Frozen, hashable model config built from the `config.model` section."""
import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 257
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: Optional[int] = None
  head_dim: Optional[int] = None
  d_ff: int = 1024
  max_len: int = 256
  positions: str = 'learned'
  rope_theta: float = 10000.0
  norm: str = 'layernorm'
  norm_eps: float = 1e-5
  mlp: str = 'gelu'
  tie_embeddings: bool = True
  use_bias: bool = True
  qkv_bias: bool = False
  init_std: float = 0.02
  dtype: str = 'float32'
  fp8: bool = False
  remat: str = 'none'
  scan_layers: bool = True
  attention_impl: str = 'xla'
  parametrization: str = 'sp'
  base_d_model: int = 0
  base_d_ff: int = 0
  base_head_dim: int = 0

  @classmethod
  def make(cls, cfg) -> 'ModelConfig':
    """From a ModelConfig, a ConfigDict or a dict; unknown keys are an error."""
    if isinstance(cfg, cls):
      return cfg
    d = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'config.model has unknown keys {unknown}; known: {sorted(names)}')
    return cls(**d)

  def replace(self, **kw) -> 'ModelConfig':
    return dataclasses.replace(self, **kw)
