"""The model schema: one frozen, hashable dataclass that is both the `config.model` section's
definition (configs/base.py builds its ConfigDict from it) and the config the model code reads."""

import dataclasses
from typing import Any, Optional

import ml_collections

# A pytree of arrays (or of ShapeDtypeStructs, shardings, specs) such as the model params.
PyTree = Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder-only transformer covering GPT-2, LLaMA, Mistral, Qwen and Gemma styles."""

  vocab_size: int = 257  # byte tokenizer: 256 bytes + EOS.
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int | None = None  # None: = n_heads (MHA).
  head_dim: int | None = None  # None: d_model // n_heads.
  d_ff: int = 1024
  max_len: int = 256  # context length (size of learned position table / rope cache).
  positions: str = 'learned'  # 'learned' | 'rope'
  rope_theta: float = 10000.0
  rope_scaling: str = 'none'  # HF rope_type: 'none' | 'linear' | 'dynamic' | 'llama3'
  rope_factor: float = 1.0  # linear, dynamic, llama3: the scaling factor.
  rope_low_freq_factor: float = 1.0  # llama3.
  rope_high_freq_factor: float = 4.0  # llama3.
  rope_original_max_len: int = (
    0  # llama3: HF original_max_position_embeddings; dynamic: max_len cap.
  )
  norm: str = 'layernorm'  # 'layernorm' | 'rmsnorm'
  norm_eps: float = 1e-5
  norm_plus_one: bool = False  # norms multiply by (1 + scale), scale zero-init (Gemma).
  qk_norm: bool = False  # queries and keys normed per head over head_dim, before rope (Qwen3).
  mlp: str = 'gelu'  # 'gelu' | 'swiglu' | 'geglu' (gated, tanh GELU: Gemma)
  embed_scale: bool = False  # token embeddings x sqrt(d_model) in the compute dtype (Gemma).
  tie_embeddings: bool = True
  use_bias: bool = True
  qkv_bias: bool = False  # q/k/v projection biases even when use_bias is False (Qwen2).
  out_bias: bool = False  # attention out-projection bias even when use_bias is False.
  init_std: float = 0.02
  dtype: str = 'float32'  # compute dtype: 'float32' | 'bfloat16' | 'float16'. Params stay float32.
  fp8: bool = False  # simulate fp8: dense-layer matmul inputs rounded to float8_e4m3fn.
  # Weight quantization (models/quantize.py): the hidden/residual kernels go through round-to-
  # nearest absmax quantize-dequantize before their matmul, a straight-through gradient behind it
  # (QAT; on float params, the PTQ model). 'none' | 'int8' | 'int4' | 'fp8' (float8_e4m3fn).
  weight_quant: str = 'none'
  weight_group: int = 0  # a scale per this many consecutive fan-in entries; 0: per channel.
  # Activation quantization (models/act_quant.py, W8A8): the compressible kernels' inputs go
  # through quantize-dequantize before their matmul, straight-through behind it (QAT; written by
  # train.tools.compress --activations). 'none' | 'int8' | 'fp8' (float8_e4m3fn).
  act_quant: str = 'none'
  # The inputs' absmax: 'static' (calibrated, a frozen '<kernel>_act_amax' param per kernel and
  # layer) | 'tensor' (the whole input's, dynamic) | 'token' (each token's, dynamic).
  act_scale: str = 'token'
  # SmoothQuant: x / s and s·W per fan-in entry, s a frozen '<kernel>_act_smooth' param.
  act_smooth: bool = False
  remat: str = 'none'  # 'none' | 'full' | 'dots' | 'dots_no_batch'
  scan_layers: bool = True
  # Layers per iteration of the layer scan (0: per backend, models/backend.py: all on CPU, 1
  # elsewhere). Compute only: params stay stacked on the 'layers' axis either way.
  scan_unroll: int = 0
  # 'auto' | 'xla' | 'blockwise' | 'cudnn' | 'splash' (models/attention.py); 'auto' picks per
  # backend: blockwise on CPU, cuDNN flash on GPU (bf16/fp16), splash on TPU.
  attention_impl: str = 'auto'
  attention_block: int = 64  # 'blockwise': queries per block.
  # Cross-entropy over chunks of this many positions (0: whole rows), so float32 logits
  # [B, L, V] are never materialised (the backward recomputes each chunk's).
  loss_chunk: int = 0
  vocab_multiple: int = 1  # compute pads the vocabulary to a multiple (128 on GPU/TPU).
  # Per-parameter init, multipliers and Adam lr/wd scales (models/parametrization.py):
  # 'sp' (standard, GPT-2 init) | 'mup' (μP, relative to the base shape) | 'umup' (u-μP).
  parametrization: str = 'sp'
  base_d_model: int = 0  # μP base shape; 0: this model's own (width multiplier 1).
  base_d_ff: int = 0  # 0: d_ff * base_d_model / d_model.
  base_head_dim: int = 0  # 0: this model's head dim.
  # μP depth base (depth-μP: residual branches × (n_layers/base)^-½, hidden lr likewise); 0: own.
  base_n_layers: int = 0
  # μP / u-μP base hyperparameters (models/parametrization.py; 'sp' refuses them), 1 = as before:
  mup_input_mult: float = 1.0  # α_in: token (and position) embedding outputs ×.
  # α_out: logits × (on top of μP's 1/w, u-μP's 1/fan_in); 0: the parametrization's tuned value
  # (models/parametrization.py TUNED: μP 4, from docs/mup.md's base-width search; 1 = as before).
  mup_output_mult: float = 0.0
  mup_attn_mult: float = 1.0  # attention logits × (on top of μP's √(base Dh)/Dh, u-μP's 1/Dh).
  mup_lr_embedding: float = 1.0  # Adam lr of the embedding tables, relative to the hidden weights.
  mup_lr_readout: float = 1.0  # of an untied readout.
  mup_lr_vector: float = 1.0  # of norm scales and biases.
  # μP only: the embedding tables' Adam lr × (d_model / base_d_model)^-exp. 0: microsoft/mup's
  # constant embedding lr, the default (its lr optimum stays put over 16x; with 1, ∝ 1/width, an
  # earlier default, it drifts 2x by 16x and the logits' update vanishes: docs/mup.md).
  mup_lr_embedding_width_exp: float = 0.0
  mup_readout_init: str = 'default'  # untied readout: 'default' | 'zero' | 'fan_in' (std n^-½).
  # Weight decay independent of the lr (Wortsman et al. 2023): each step decays by
  # weight_decay · lr(t)/peak lr, whatever the per-leaf lr scale; any parametrization.
  independent_wd: bool = False
  # LoRA (Hu et al. 2021): rank 0 is off. Adapters on the dense kernels whose logical axes name a
  # target in lora_targets (models/parametrization.py LORA_TARGETS); every other param is frozen.
  lora_rank: int = 0
  lora_alpha: float = 0.0  # the update x·A·B is × alpha / rank (rsLoRA: / √rank); 0: alpha = rank.
  # Names in LORA_TARGETS' values ('key_value': both 'key' and 'value', LORA_TARGET_GROUPS).
  lora_targets: tuple = ('query', 'key_value', 'attn_out', 'mlp_in', 'mlp_out')
  lora_rslora: bool = False  # Kalajdzievski 2023: alpha / √rank, stable across ranks.
  lora_lr_ratio: float = 1.0  # LoRA+ (Hayou et al. 2024): B's (and DoRA's m) Adam lr over A's.
  lora_dropout: float = 0.0  # dropout on the adapters' input x (training steps only), as PEFT's.
  # DoRA (Liu et al. 2024): W' = m · (W + A·B·scale) / ||W + A·B·scale||, norms per output column
  # (held constant in the backward, as in PEFT); m [fan_out] starts at the base's column norms.
  lora_dora: bool = False
  # QLoRA (Dettmers et al. 2023): 'quantized' holds the frozen base's compressible kernels as the
  # quantized workdir config.init_from names has them (int4 two per byte, models/resident_quant.py),
  # dequantized per matmul, the adapters float on top; 'float': the base as float32 params.
  lora_base_resident: str = 'float'

  @classmethod
  def make(cls, cfg: 'ModelConfigLike') -> 'ModelConfig':
    """From a ModelConfig, a ConfigDict or a dict; unknown keys are an error."""
    if isinstance(cfg, cls):
      return cfg
    d = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'config.model has unknown keys {unknown}; known: {sorted(names)}')
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

  @classmethod
  def expect(cls, cfg: Any) -> 'ModelConfig':
    """`cfg`, which the model API takes parsed: a dict or ConfigDict is a TypeError (it is parsed
    once where it enters, with ModelConfig.make)."""
    if not isinstance(cfg, cls):
      raise TypeError(
        f'the model API takes a ModelConfig, got {type(cfg).__name__}: parse it once with '
        'ModelConfig.make(...)'
      )
    return cfg

  def replace(self, **kw: Any) -> 'ModelConfig':
    return dataclasses.replace(self, **kw)


# What ModelConfig.make parses: a model section where it enters (schema, HF config.json, tests).
ModelConfigLike = ModelConfig | ml_collections.ConfigDict | dict


def head_dim(cfg: ModelConfig | ml_collections.ConfigDict) -> int:
  """Per-head width: model.head_dim, or d_model // n_heads when unset (ModelConfig or ConfigDict)."""
  return cfg.head_dim or cfg.d_model // cfg.n_heads


def kv_heads(cfg: ModelConfig | ml_collections.ConfigDict) -> int:
  """Key/value heads: model.n_kv_heads, or n_heads (multi-head attention) when unset."""
  return cfg.n_kv_heads or cfg.n_heads


# LoRA targets (model.lora_targets) by the kernel's logical axes ('layers' aside), the names the
# sharding rules use: adapters go where these axes are, never by module path. Key and value differ
# in their head width's name: 'head_dim' is the query-key width (scores contract over it),
# 'v_head_dim' the value width the out projection reads (DeepSeek's v_head_dim; equal here).
LORA_TARGETS = {
  ('embed', 'heads', 'head_dim'): 'query',
  ('embed', 'kv_heads', 'head_dim'): 'key',
  ('embed', 'kv_heads', 'v_head_dim'): 'value',
  ('heads', 'v_head_dim', 'embed'): 'attn_out',
  ('embed', 'mlp'): 'mlp_in',
  ('mlp', 'embed'): 'mlp_out',
}
# Names model.lora_targets also takes for several targets at once.
LORA_TARGET_GROUPS = {'key_value': ('key', 'value')}


def lora_target_names(targets: tuple) -> tuple:
  """model.lora_targets with its groups spelled out (LORA_TARGETS' values only)."""
  return tuple(n for t in targets for n in LORA_TARGET_GROUPS.get(t, (t,)))


# Allowed values of the string fields (validated in train/validation.py).
CHOICES = {
  'positions': ('learned', 'rope'),
  'norm': ('layernorm', 'rmsnorm'),
  'rope_scaling': ('none', 'linear', 'dynamic', 'llama3'),
  'mlp': ('gelu', 'swiglu', 'geglu'),
  'dtype': ('float32', 'bfloat16', 'float16'),
  'remat': ('none', 'full', 'dots', 'dots_no_batch'),
  'attention_impl': ('auto', 'xla', 'blockwise', 'cudnn', 'splash'),
  'parametrization': ('sp', 'mup', 'umup'),
  'mup_readout_init': ('default', 'zero', 'fan_in'),
  'weight_quant': ('none', 'int8', 'int4', 'fp8'),
  'act_quant': ('none', 'int8', 'fp8'),
  'act_scale': ('static', 'tensor', 'token'),
  'lora_base_resident': ('float', 'quantized'),
}
# The rope fields each rope_scaling reads (the others must keep their defaults).
ROPE_FIELDS = {
  'none': (),
  'linear': ('rope_factor',),
  'dynamic': ('rope_factor', 'rope_original_max_len'),
  'llama3': (
    'rope_factor',
    'rope_low_freq_factor',
    'rope_high_freq_factor',
    'rope_original_max_len',
  ),
}


def config_dict() -> ml_collections.ConfigDict:
  """The `config.model` section with every field at its default (Optional fields typed)."""
  m = ml_collections.ConfigDict()
  for f in dataclasses.fields(ModelConfig):
    if f.type == Optional[int]:  # noqa: UP045 (the dataclass field's runtime type)
      m[f.name] = ml_collections.FieldReference(f.default, field_type=int)
    else:
      m[f.name] = f.default
  return m
