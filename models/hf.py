"""HuggingFace interop: GPT-2 / LLaMA / Mistral / Qwen2 / Qwen3 / Gemma checkpoints <-> our params.

`import_checkpoint` reads config.json and safetensors weights (single file or sharded index) into
a ModelConfig and float32 params, optionally straight into sharded arrays where each device
reads only its own slice. `export_checkpoint` writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained` loads. Pickled `pytorch_model.bin`
checkpoints are refused, never unpickled. Shape suffixes as in models/transformer.py.
"""

import collections
import contextlib
import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

import models
from models.config import ROPE_FIELDS, ModelConfig, PyTree
from models.transformer import head_dim, kv_heads

if TYPE_CHECKING:
  import transformers

LLAMA_TYPES = ('llama', 'mistral', 'qwen2', 'qwen3', 'gemma')  # HF names as LLaMA's.
SUPPORTED_TYPES = ('gpt2',) + LLAMA_TYPES
ROPE_TYPES = {'default': 'none', 'linear': 'linear', 'dynamic': 'dynamic', 'llama3': 'llama3'}
# Families refused with their reason (any other unknown model_type gets the supported list).
_REFUSED_TYPES = {
  'gemma2': 'Gemma-2 (attention/final logit soft-capping, pre- and post-norms, alternating '
  'sliding window, query_pre_attn_scalar) is not implemented',
  'gemma3_text': 'Gemma-3 (as Gemma-2 without soft-capping, plus q/k norms and local/global '
  'rope) is not implemented',
}
SAFETENSORS_FILE = 'model.safetensors'
SAFETENSORS_INDEX = 'model.safetensors.index.json'
# Buffers some checkpoints carry that are not parameters (causal masks, rope caches).
_IGNORED_KEYS = re.compile(r'(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$')
# Fields that change the math but not the tensor shapes: an explicit model_config must agree.
_ARCH_FIELDS = (
  'positions',
  'norm',
  'mlp',
  'tie_embeddings',
  'use_bias',
  'qkv_bias',
  'out_bias',
  'n_heads',
  'n_kv_heads',
  'head_dim',
  'norm_eps',
  'norm_plus_one',
  'qk_norm',
  'embed_scale',
)


# --------------------------------------------------------------------------- configs


def _rope(hf: dict) -> dict:
  """ModelConfig rope fields from v5 `rope_parameters` or v4 `rope_theta`/`rope_scaling`."""
  rope = hf.get('rope_parameters') or hf.get('rope_scaling') or {}
  if any(isinstance(v, dict) for v in rope.values()):
    raise NotImplementedError(f'per-layer-type rope parameters ({sorted(rope)}) are not supported')
  rope_type = rope.get('rope_type', rope.get('type', 'default'))
  if rope_type not in ROPE_TYPES:
    raise NotImplementedError(
      f'rope scaling {rope_type!r} ({rope}) is not supported; supported '
      f'rope types: {sorted(ROPE_TYPES)}'
    )
  partial = rope.get('partial_rotary_factor', hf.get('partial_rotary_factor', 1.0))
  if partial != 1.0:
    raise NotImplementedError(f'partial_rotary_factor {partial}: rope on part of the head')
  out = dict(
    rope_theta=float(rope.get('rope_theta', hf.get('rope_theta', 10000.0))),
    rope_scaling=ROPE_TYPES[rope_type],
  )
  if rope_type != 'default':
    out['rope_factor'] = float(rope['factor'])
  if rope_type == 'dynamic':  # transformers rescales past max_position_embeddings.
    out['rope_original_max_len'] = hf['max_position_embeddings']
  if rope_type == 'llama3':
    out.update(
      rope_low_freq_factor=float(rope['low_freq_factor']),
      rope_high_freq_factor=float(rope['high_freq_factor']),
      rope_original_max_len=int(
        rope.get('original_max_position_embeddings', hf['max_position_embeddings'])
      ),
    )
  return out


def _gpt2_config(hf: dict) -> ModelConfig:
  act = hf.get('activation_function', 'gelu_new')
  if act not in ('gelu_new', 'gelu_pytorch_tanh', 'gelu_fast'):
    raise NotImplementedError(f'GPT-2 activation_function {act!r}: only tanh-approximate GELU')
  if not hf.get('scale_attn_weights', True) or hf.get('scale_attn_by_inverse_layer_idx', False):
    raise NotImplementedError('GPT-2 attention scaling other than 1/sqrt(head_dim) is unsupported')
  if hf.get('add_cross_attention', False):
    raise NotImplementedError('GPT-2 cross-attention is not supported')
  d = hf['n_embd']
  return ModelConfig(
    vocab_size=hf['vocab_size'],
    d_model=d,
    n_layers=hf['n_layer'],
    n_heads=hf['n_head'],
    d_ff=hf.get('n_inner') or 4 * d,
    max_len=hf['n_positions'],
    positions='learned',
    norm='layernorm',
    norm_eps=hf.get('layer_norm_epsilon', 1e-5),
    mlp='gelu',
    tie_embeddings=hf.get('tie_word_embeddings', True),
    use_bias=True,
    init_std=hf.get('initializer_range', 0.02),
  )


def _llama_config(hf: dict) -> ModelConfig:
  """LLaMA, Mistral, Qwen2, Qwen3 and Gemma: rmsnorm, rope, gated MLP, GQA. Qwen3 adds q/k norms;
  Gemma has (1 + w) norms, GeGLU and embeddings x sqrt(d_model)."""
  model_type = hf['model_type']
  gemma = model_type == 'gemma'
  act = hf.get('hidden_act', 'gelu_pytorch_tanh' if gemma else 'silu')
  acts = ('gelu', 'gelu_pytorch_tanh', 'gelu_new', 'gelu_fast') if gemma else ('silu',)
  if act not in acts:  # Gemma's legacy 'gelu' means the tanh approximation (as in transformers).
    raise NotImplementedError(f'{model_type} hidden_act {act!r}: only {" / ".join(acts)}')
  if hf.get('use_bidirectional_attention'):
    raise NotImplementedError(f'{model_type} use_bidirectional_attention: only causal attention')
  attention_bias, mlp_bias = hf.get('attention_bias', False), hf.get('mlp_bias', False)
  if model_type == 'qwen2':  # q/k/v biases only.
    use_bias, qkv_bias, out_bias = False, True, False
  elif attention_bias and mlp_bias:
    use_bias, qkv_bias, out_bias = True, False, False
  elif mlp_bias:
    raise NotImplementedError(
      'mlp_bias=True with attention_bias=False: MLP biases come only '
      'with attention biases (use_bias)'
    )
  else:  # attention_bias alone: q/k/v and out-projection biases.
    use_bias, qkv_bias, out_bias = False, attention_bias, attention_bias
  d, h = hf['hidden_size'], hf['num_attention_heads']
  head_dim_default = {'qwen3': 128, 'gemma': 256}.get(model_type)  # the config classes' defaults.
  return ModelConfig(
    vocab_size=hf['vocab_size'],
    d_model=d,
    n_layers=hf['num_hidden_layers'],
    n_heads=h,
    n_kv_heads=hf.get('num_key_value_heads') or h,
    head_dim=hf.get('head_dim', head_dim_default) or d // h,
    d_ff=hf['intermediate_size'],
    max_len=hf['max_position_embeddings'],
    positions='rope',
    **_rope(hf),
    norm='rmsnorm',
    norm_eps=hf.get('rms_norm_eps', 1e-6),
    norm_plus_one=gemma,
    qk_norm=model_type == 'qwen3',
    mlp='geglu' if gemma else 'swiglu',
    embed_scale=gemma,
    tie_embeddings=hf.get('tie_word_embeddings', gemma),
    use_bias=use_bias,
    qkv_bias=qkv_bias,
    out_bias=out_bias,
    init_std=hf.get('initializer_range', 0.02),
  )


def config_from_hf(hf: dict) -> ModelConfig:
  """ModelConfig from a transformers config dict (config.json)."""
  model_type = hf.get('model_type')
  if model_type == 'gpt2':
    return _gpt2_config(hf)
  if model_type in LLAMA_TYPES:
    return _llama_config(hf)
  if model_type in _REFUSED_TYPES:
    raise NotImplementedError(f'model_type {model_type!r}: {_REFUSED_TYPES[model_type]}')
  raise NotImplementedError(f'model_type {model_type!r}: supported are {SUPPORTED_TYPES}')


def _sliding_window(hf: dict):
  """The sliding attention window the checkpoint uses on some layer, or None."""
  window = hf.get('sliding_window')
  if hf.get('model_type') in ('qwen2', 'qwen3'):
    layer_types = hf.get('layer_types') or ()
    uses = hf.get('use_sliding_window', False) or 'sliding_attention' in layer_types
    return window if uses else None
  return window if hf.get('model_type') == 'mistral' else None


def _check_window(hf: dict, cfg: ModelConfig):
  """Full causal attention equals sliding-window attention only on sequences within the window."""
  window = _sliding_window(hf)
  if window is not None and window < cfg.max_len:
    raise NotImplementedError(
      f'sliding-window attention (window {window}) is not implemented and max_len {cfg.max_len} '
      f'exceeds the window; pass model_config with max_len <= {window}'
    )


def _check_dynamic_rope(cfg: ModelConfig):
  """Dynamic NTK rope equals plain rope only on sequences within max_position_embeddings."""
  if cfg.rope_scaling == 'dynamic' and cfg.max_len > cfg.rope_original_max_len:
    raise NotImplementedError(
      f'dynamic NTK rope: max_len {cfg.max_len} exceeds max_position_embeddings '
      f'{cfg.rope_original_max_len}, past which transformers rescales rope_theta with each '
      "call's length (and keeps it across calls), which fixed shapes cannot reproduce; "
      f'pass model_config with max_len <= {cfg.rope_original_max_len}'
    )


def _check_arch(cfg: ModelConfig, target: ModelConfig):
  """A given model_config must agree with the checkpoint on everything the shapes don't show."""
  norm = lambda c: c.replace(n_kv_heads=kv_heads(c), head_dim=head_dim(c))
  got, want = norm(cfg), norm(target)
  fields = _ARCH_FIELDS
  if cfg.positions == 'rope':
    fields += ('rope_theta', 'rope_scaling') + ROPE_FIELDS[cfg.rope_scaling]
  bad = [
    f'{f}: checkpoint {getattr(got, f)!r}, model_config {getattr(want, f)!r}'
    for f in fields
    if getattr(got, f) != getattr(want, f)
  ]
  if bad:
    raise ValueError('model_config disagrees with the checkpoint config: ' + '; '.join(bad))


def _check_sp(cfg: ModelConfig, what: str):
  """HF checkpoints hold standard-parametrized weights: μP / u-μP multipliers would be lost."""
  if cfg.parametrization != 'sp':
    raise ValueError(
      f'{what}: HuggingFace checkpoints are standard-parametrized, but '
      f"config.model.parametrization={cfg.parametrization!r}; use 'sp'"
    )


def to_hf_config(
  model_config: ModelConfig, token_ids: dict[str, int] | None = None
) -> 'transformers.PreTrainedConfig':
  """transformers GPT2Config / LlamaConfig / Qwen2Config / Qwen3Config / GemmaConfig for it, with
  `token_ids` (e.g. {'bos_token_id': 256, 'eos_token_id': 256}) over the family's defaults.

  ValueError for configs no HF family expresses (e.g. learned positions with rmsnorm).
  """
  import transformers  # Heavy: only needed to export.

  cfg = ModelConfig.expect(model_config)
  if cfg.positions == 'learned':
    _check_gpt2_export(cfg)
    family, kwargs = 'GPT2', _gpt2_fields(cfg)
  else:
    _check_rope_export(cfg)
    family, own = _rope_family(cfg)
    kwargs = {**own, **_rope_fields(cfg)}
  hf = getattr(transformers, f'{family}Config')(**{**kwargs, **(token_ids or {})})
  hf.architectures = [_ARCHITECTURES[family]]
  return hf


_ARCHITECTURES = {
  'GPT2': 'GPT2LMHeadModel',
  'Gemma': 'GemmaForCausalLM',
  'Qwen3': 'Qwen3ForCausalLM',
  'Qwen2': 'Qwen2ForCausalLM',
  'Llama': 'LlamaForCausalLM',
}


def _check_gpt2_export(cfg: ModelConfig) -> None:
  """Learned positions export as GPT-2: ValueError for what GPT-2 cannot express."""
  d, h, k, dh = cfg.d_model, cfg.n_heads, kv_heads(cfg), head_dim(cfg)
  extras = [f for f in ('norm_plus_one', 'qk_norm', 'embed_scale') if getattr(cfg, f)]
  if (cfg.norm, cfg.mlp, cfg.use_bias, k, h * dh) != ('layernorm', 'gelu', True, h, d) or extras:
    raise ValueError(
      'learned positions export as GPT-2, which needs norm=layernorm, mlp=gelu, use_bias=True, '
      f'n_kv_heads=n_heads and n_heads*head_dim=d_model; got norm={cfg.norm}, mlp={cfg.mlp}, '
      f'use_bias={cfg.use_bias}, n_kv_heads={k}, n_heads={h}, head_dim={dh}, d_model={d}'
      + ''.join(f', {f}=True' for f in extras)
      + (
        '; a GPT-2 with heads pruned keeps its width: HF GPT-2 cannot hold it' if h * dh < d else ''
      )
    )


def _gpt2_fields(cfg: ModelConfig) -> dict:
  """GPT2Config's arguments (no dropout; GPT-2's BOS/EOS ids only where its vocabulary fits)."""
  tokens = {} if cfg.vocab_size > 50256 else {'bos_token_id': None, 'eos_token_id': None}
  return dict(
    vocab_size=cfg.vocab_size,
    n_positions=cfg.max_len,
    n_embd=cfg.d_model,
    n_layer=cfg.n_layers,
    n_head=cfg.n_heads,
    n_inner=cfg.d_ff,
    activation_function='gelu_new',
    layer_norm_epsilon=cfg.norm_eps,
    initializer_range=cfg.init_std,
    tie_word_embeddings=cfg.tie_embeddings,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    dtype='float32',
    **tokens,
  )


def _check_rope_export(cfg: ModelConfig) -> None:
  """ValueError unless a LLaMA / Qwen2 / Qwen3 / Gemma config expresses this rope model."""
  gemma = (cfg.norm_plus_one, cfg.embed_scale, cfg.mlp == 'geglu')
  if cfg.positions != 'rope' or cfg.norm != 'rmsnorm' or cfg.mlp == 'gelu' or len(set(gemma)) > 1:
    raise ValueError(
      'HF export supports GPT-2 (learned, layernorm, gelu), LLaMA/Qwen2/Qwen3 (rope, rmsnorm, '
      'swiglu) and Gemma (rope, rmsnorm with norm_plus_one, geglu, embed_scale); got '
      f'positions={cfg.positions}, norm={cfg.norm}, mlp={cfg.mlp}, '
      f'norm_plus_one={cfg.norm_plus_one}, embed_scale={cfg.embed_scale}'
    )
  if (cfg.qk_norm or all(gemma)) and (cfg.use_bias or cfg.qkv_bias != cfg.out_bias):
    raise ValueError(
      'Qwen3 and Gemma have no MLP biases and q/k/v biases only with an '
      f'out-projection bias; got use_bias={cfg.use_bias}, '
      f'qkv_bias={cfg.qkv_bias}, out_bias={cfg.out_bias}'
    )
  if cfg.qk_norm and all(gemma):
    raise ValueError('qk_norm with Gemma norms/MLP (Gemma-3) has no HF export here')
  if cfg.out_bias and not cfg.qkv_bias and not cfg.use_bias:
    raise ValueError('out_bias without qkv_bias has no HF family')


def _rope_family(cfg: ModelConfig) -> tuple[str, dict]:
  """The HF family of a (checked) rope model and the arguments only its config class takes."""
  attention_bias = cfg.qkv_bias and cfg.out_bias and not cfg.use_bias  # q/k/v/o biases only.
  if cfg.norm_plus_one:  # (checked: with embed_scale and geglu, i.e. Gemma)
    return 'Gemma', dict(hidden_act='gelu_pytorch_tanh', attention_bias=attention_bias)
  if cfg.qk_norm:
    return 'Qwen3', dict(hidden_act='silu', attention_bias=attention_bias, use_sliding_window=False)
  if cfg.qkv_bias and not cfg.out_bias and not cfg.use_bias:
    return 'Qwen2', dict(hidden_act='silu', use_sliding_window=False)
  return 'Llama', dict(
    hidden_act='silu', attention_bias=cfg.use_bias or attention_bias, mlp_bias=cfg.use_bias
  )


def _rope_fields(cfg: ModelConfig) -> dict:
  """The arguments the LLaMA-like config classes share, rope_parameters included."""
  rope = {
    'rope_type': {'none': 'default'}.get(cfg.rope_scaling, cfg.rope_scaling),
    'rope_theta': cfg.rope_theta,
  }
  max_len = cfg.max_len
  if cfg.rope_scaling != 'none':
    rope['factor'] = cfg.rope_factor
  if cfg.rope_scaling == 'dynamic':  # transformers rescales past max_position_embeddings.
    max_len = cfg.rope_original_max_len
  if cfg.rope_scaling == 'llama3':
    rope.update(
      low_freq_factor=cfg.rope_low_freq_factor,
      high_freq_factor=cfg.rope_high_freq_factor,
      original_max_position_embeddings=cfg.rope_original_max_len,
    )
  return dict(
    vocab_size=cfg.vocab_size,
    hidden_size=cfg.d_model,
    intermediate_size=cfg.d_ff,
    num_hidden_layers=cfg.n_layers,
    num_attention_heads=cfg.n_heads,
    num_key_value_heads=kv_heads(cfg),
    head_dim=head_dim(cfg),
    max_position_embeddings=max_len,
    rms_norm_eps=cfg.norm_eps,
    rope_parameters=rope,
    tie_word_embeddings=cfg.tie_embeddings,
    initializer_range=cfg.init_std,
    dtype='float32',
  )


# --------------------------------------------------------------------------- name mapping


@dataclasses.dataclass(frozen=True)
class Spec:
  """Where one of our (per-layer) params lives in the HF state dict.

  The HF tensor, transposed if `transpose` (nn.Linear stores [out, in]) and cut at `offset` on
  its last axis (GPT-2's packed c_attn), is our param with `groups[j]` of our dims merged into
  its dim j: query [D, H, Dh] <- q_proj.weight.T [D, H*Dh] has groups (1, 2). () means 1:1.
  """

  key: str
  groups: tuple = ()
  transpose: bool = False
  offset: int = 0


def _gpt2_specs(cfg: ModelConfig) -> tuple[dict, dict]:
  h = 'transformer.h.{i}.'
  width = cfg.n_heads * head_dim(cfg)
  top = {
    ('embed',): Spec('transformer.wte.weight'),
    ('pos_embed',): Spec('transformer.wpe.weight'),
    ('final_norm', 'scale'): Spec('transformer.ln_f.weight'),
    ('final_norm', 'bias'): Spec('transformer.ln_f.bias'),
    ('unembed',): Spec('lm_head.weight', transpose=True),
  }
  layer = {
    ('attn_norm', 'scale'): Spec(h + 'ln_1.weight'),
    ('attn_norm', 'bias'): Spec(h + 'ln_1.bias'),
    ('mlp_norm', 'scale'): Spec(h + 'ln_2.weight'),
    ('mlp_norm', 'bias'): Spec(h + 'ln_2.bias'),
    ('attn', 'out'): Spec(h + 'attn.c_proj.weight', (2, 1)),
    ('attn', 'out_bias'): Spec(h + 'attn.c_proj.bias'),
    ('mlp', 'wi'): Spec(h + 'mlp.c_fc.weight'),
    ('mlp', 'wi_bias'): Spec(h + 'mlp.c_fc.bias'),
    ('mlp', 'wo'): Spec(h + 'mlp.c_proj.weight'),
    ('mlp', 'wo_bias'): Spec(h + 'mlp.c_proj.bias'),
  }
  for j, name in enumerate(('query', 'key', 'value')):  # c_attn: Conv1D [D, 3D] = [q | k | v].
    layer['attn', name] = Spec(h + 'attn.c_attn.weight', (1, 2), offset=j * width)
    layer['attn', name + '_bias'] = Spec(h + 'attn.c_attn.bias', (2,), offset=j * width)
  return top, layer


def _llama_specs(cfg: ModelConfig) -> tuple[dict, dict]:
  del cfg
  h = 'model.layers.{i}.'
  top = {
    ('embed',): Spec('model.embed_tokens.weight'),
    ('final_norm', 'scale'): Spec('model.norm.weight'),
    ('unembed',): Spec('lm_head.weight', transpose=True),
  }
  layer = {
    ('attn_norm', 'scale'): Spec(h + 'input_layernorm.weight'),
    ('mlp_norm', 'scale'): Spec(h + 'post_attention_layernorm.weight'),
    ('attn', 'out'): Spec(h + 'self_attn.o_proj.weight', (2, 1), transpose=True),
    ('attn', 'out_bias'): Spec(h + 'self_attn.o_proj.bias'),
  }
  for ours, theirs in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
    layer['attn', ours] = Spec(f'{h}self_attn.{theirs}.weight', (1, 2), transpose=True)
    layer['attn', ours + '_bias'] = Spec(f'{h}self_attn.{theirs}.bias', (2,))
  for ours, theirs in (('wi', 'up_proj'), ('wg', 'gate_proj'), ('wo', 'down_proj')):
    layer['mlp', ours] = Spec(f'{h}mlp.{theirs}.weight', transpose=True)
    layer['mlp', ours + '_bias'] = Spec(f'{h}mlp.{theirs}.bias')
  layer['attn', 'query_norm', 'scale'] = Spec(h + 'self_attn.q_norm.weight')  # Qwen3.
  layer['attn', 'key_norm', 'scale'] = Spec(h + 'self_attn.k_norm.weight')
  return top, layer


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One of our params: its path, HF spec, per-layer shape and layers (None: not a layer param)."""

  path: tuple
  spec: Spec
  shape: tuple
  layers: tuple = None
  stacked: bool = False

  @property
  def full_shape(self) -> tuple:
    return (len(self.layers),) + self.shape if self.stacked else self.shape

  def keys(self) -> list[str]:
    if self.layers is None:
      return [self.spec.key]
    return [self.spec.key.format(i=i) for i in self.layers]


def _path(key_path: Sequence) -> tuple:
  return tuple(getattr(k, 'key', getattr(k, 'name', k)) for k in key_path)


def _leaves(cfg: ModelConfig, family: str):
  """Leaf for every param `models.init(cfg)` makes, in tree-flatten order."""
  top, layer = (_gpt2_specs if family == 'gpt2' else _llama_specs)(cfg)
  out = []
  for key_path, x in jax.tree_util.tree_flatten_with_path(models.param_shapes(cfg))[0]:
    path = _path(key_path)
    if path[0] == 'layers':
      out.append(Leaf(path, layer[path[1:]], tuple(x.shape[1:]), tuple(range(x.shape[0])), True))
    elif re.fullmatch(r'layer_\d+', path[0]):
      out.append(Leaf(path, layer[path[1:]], tuple(x.shape), (int(path[0][6:]),)))
    else:
      out.append(Leaf(path, top[path], tuple(x.shape)))
  return out


def _view_shape(spec: Spec, shape: Sequence[int]) -> list:
  """Our per-layer shape with `spec.groups` merged: the HF shape before transpose/packing."""
  out, k = [], 0
  for g in spec.groups or (1,) * len(shape):
    out.append(math.prod(shape[k : k + g]))
    k += g
  return out


def expected_shapes(leaves: Sequence[Leaf]) -> dict:
  """HF tensor name -> shape the leaves need (packed tensors: the span of all their parts)."""
  shapes = {}
  for leaf in leaves:
    view = _view_shape(leaf.spec, leaf.shape)
    view[-1] += leaf.spec.offset
    for key in leaf.keys():
      old = shapes.get(key, view)
      shapes[key] = old[:-1] + [max(old[-1], view[-1])]
  transposed = {k for leaf in leaves if leaf.spec.transpose for k in leaf.keys()}
  return {k: tuple(s[::-1] if k in transposed else s) for k, s in shapes.items()}


def check_shapes(expected: dict, found: dict, ignore: Sequence[str] = ()) -> None:
  """ValueError naming each HF tensor that is missing, unexpected or of an unexpected shape."""
  errors = [
    f'{k}: checkpoint has shape {tuple(found[k])}, model_config expects {tuple(s)}'
    for k, s in expected.items()
    if k in found and tuple(found[k]) != tuple(s)
  ]
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(
    k for k in set(found) - set(expected) if k not in ignore and not _IGNORED_KEYS.search(k)
  )
  if missing:
    errors.append(f'missing tensors {missing[:8]}' + (' ...' if len(missing) > 8 else ''))
  if unexpected:
    errors.append(f'unexpected tensors {unexpected[:8]}' + (' ...' if len(unexpected) > 8 else ''))
  if errors:
    raise ValueError('HF checkpoint does not match the model config: ' + '; '.join(errors))


# --------------------------------------------------------------------------- reading


class _Checkpoint:
  """The safetensors files of a checkpoint directory: tensor names, shapes and lazy slices."""

  def __init__(self, path: str, stack: contextlib.ExitStack):
    single, index = os.path.join(path, SAFETENSORS_FILE), os.path.join(path, SAFETENSORS_INDEX)
    self._stack, self._handles = stack, {}
    if os.path.exists(single):
      self.files = {k: single for k in self._open(single, 'numpy').keys()}
    elif os.path.exists(index):
      weight_map = _load_json(index).get('weight_map', {})
      self.files = {k: os.path.join(path, v) for k, v in weight_map.items()}
    else:
      _refuse_non_safetensors(path)
    self.rename = {}

  def _open(self, filename: str, framework: str) -> Any:
    if (filename, framework) not in self._handles:
      try:
        handle = safetensors.safe_open(filename, framework=framework)
      except safetensors.SafetensorError as e:  # truncated, emptied or a damaged header.
        raise ValueError(f'{filename}: not a readable safetensors file ({e})') from None
      self._handles[filename, framework] = self._stack.enter_context(handle)
    return self._handles[filename, framework]

  def shapes(self) -> dict:
    return {
      k: tuple(self._open(f, 'numpy').get_slice(k).get_shape()) for k, f in self.files.items()
    }

  def read(self, key: str, box: tuple) -> np.ndarray:
    """float32 copy of tensor[box] (box: tuple of slices), reading only that part of the file."""
    filename = self.files[key]
    tensor = self._open(filename, 'numpy').get_slice(key)
    if tensor.get_dtype() == 'BF16':  # numpy has no bfloat16: read through JAX, on the host CPU.
      with jax.default_device(jax.devices('cpu')[0]):
        return np.asarray(self._open(filename, 'flax').get_slice(key)[box], np.float32)
    return np.asarray(tensor[box], np.float32)


def _refuse_non_safetensors(path: str):
  if os.path.exists(os.path.join(path, 'pytorch_model.bin')) or os.path.exists(
    os.path.join(path, 'pytorch_model.bin.index.json')
  ):
    raise ValueError(
      f'{path} has only pytorch_model.bin (pickle), which is never loaded here because '
      'unpickling can run arbitrary code. Convert it once with transformers: '
      'AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)'
    )
  raise ValueError(f'{path} has no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}')


def _read_layer(
  ckpt: _Checkpoint, key: str, leaf: Leaf, index: Sequence[tuple[int, int]]
) -> np.ndarray:
  """Our per-layer param restricted to `index` ((start, stop) per dim), reading only its HF box."""
  spec, shape = leaf.spec, leaf.shape
  box, post, grouped, k = [], [], [], 0
  for g in spec.groups or (1,) * len(shape):
    # Row-major merge: a range of the outermost dim of the group is a contiguous HF range;
    # ranges of the inner dims are cut after reading.
    (start, stop), inner = index[k], math.prod(shape[k + 1 : k + g])
    box.append(slice(start * inner, stop * inner))
    grouped += [stop - start] + list(shape[k + 1 : k + g])
    post += [slice(None)] + [slice(*index[j]) for j in range(k + 1, k + g)]
    k += g
  box[-1] = slice(box[-1].start + spec.offset, box[-1].stop + spec.offset)
  x = ckpt.read(key, tuple(box[::-1] if spec.transpose else box))
  return (x.T if spec.transpose else x).reshape(grouped)[tuple(post)]


def _build(ckpt: _Checkpoint, leaf: Leaf, sharding: jax.sharding.Sharding | None) -> jax.Array:
  """One param as a jax.Array: whole, or built shard by shard from lazily read slices."""
  shape = leaf.full_shape
  cache = {}

  def read(index: tuple[slice, ...]) -> np.ndarray:
    index = tuple((s.indices(n)[0], s.indices(n)[1]) for s, n in zip(index, shape))
    if index not in cache:  # replicated shards ask for the same slice several times.
      keys = [ckpt.rename.get(k, k) for k in leaf.keys()]
      if not leaf.stacked:
        cache[index] = _read_layer(ckpt, keys[0], leaf, index)
      else:
        (start, stop), rest = index[0], index[1:]
        cache[index] = np.stack([_read_layer(ckpt, k, leaf, rest) for k in keys[start:stop]])
    return cache[index]

  if sharding is None:
    return jnp.asarray(read(tuple(slice(None) for _ in shape)))
  return jax.make_array_from_callback(shape, sharding, read)


def _load_json(path: str) -> dict:
  """A JSON object file; ValueError naming the path when it does not parse (e.g. half written)."""
  with open(path) as f:
    try:
      obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from None
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: expected a JSON object, found {type(obj).__name__}')
  return obj


def _check_layers(path: str, n_layers: int, found: dict) -> None:
  """The checkpoint's config.json and its weights must agree on the number of layers."""
  layers = {int(m.group(1)) for k in found if (m := re.match(r'[\w.]*?\.(?:h|layers)\.(\d+)\.', k))}
  if layers and len(layers) != n_layers:
    raise ValueError(
      f'{os.path.join(path, "config.json")} says {n_layers} layers but the weights in {path} '
      f'hold {len(layers)}'
    )


def _check_float(path: str, quant: dict | None) -> None:
  """Float weights only: a quantized checkpoint (e.g. train.tools.export
  --format=compressed-tensors, except its format 'dense', a 2:4 marking) is refused in one line."""
  if quant and (quant.get('quant_method'), quant.get('format')) != ('compressed-tensors', 'dense'):
    raise ValueError(
      f'{path}: quantized weights ({quant.get("quant_method")}, format {quant.get("format")}) are '
      'not imported here; use a float checkpoint (e.g. train.tools.export --format=dense)'
    )


def read_config(path: str) -> ModelConfig:
  """ModelConfig of the HF checkpoint directory `path` (from its config.json)."""
  return config_from_hf(_load_json(os.path.join(path, 'config.json')))


def import_checkpoint(
  path: str, model_config: ModelConfig | None = None, shardings: PyTree | None = None
) -> tuple[ModelConfig, PyTree]:
  """(ModelConfig, float32 params) from an HF checkpoint directory (safetensors only).

  model_config: target config (runtime fields such as scan_layers, dtype, max_len for rope are
  taken from it); ValueError if it disagrees with the checkpoint, naming the tensor or field.
  shardings: NamedShardings matching the params (the trainer derives them from
  `models.logical_axes`); each device then reads only its own slice.
  """
  hf = _load_json(os.path.join(path, 'config.json'))
  _check_float(path, hf.get('quantization_config'))
  cfg = config_from_hf(hf)
  if model_config is not None:
    target = ModelConfig.expect(model_config)
    _check_sp(target, f'importing {path}')
    _check_arch(cfg, target)
    cfg = target
  _check_window(hf, cfg)
  _check_dynamic_rope(cfg)
  by_path = (
    None
    if shardings is None
    else {_path(p): s for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
  )
  leaves = _leaves(cfg, 'gpt2' if hf['model_type'] == 'gpt2' else 'llama')

  with contextlib.ExitStack() as stack:
    ckpt = _Checkpoint(path, stack)
    found = ckpt.shapes()
    prefix = 'transformer.' if hf['model_type'] == 'gpt2' else 'model.'
    if not any(k.startswith(prefix) for k in found):  # Saved from the base model class.
      ckpt.rename = {prefix + k: k for k in found if not k.startswith('lm_head.')}
      found = {prefix + k if prefix + k in ckpt.rename else k: s for k, s in found.items()}
    _check_layers(path, config_from_hf(hf).n_layers, found)
    ignore = ('lm_head.weight',) if cfg.tie_embeddings else ()
    check_shapes(expected_shapes(leaves), found, ignore)
    params = {}
    for leaf in leaves:
      node = params
      for name in leaf.path[:-1]:
        node = node.setdefault(name, {})
      node[leaf.path[-1]] = _build(ckpt, leaf, None if by_path is None else by_path[leaf.path])
  return cfg, params


# --------------------------------------------------------------------------- writing


def hf_tensors(model_config: ModelConfig, params: PyTree, dtype: Any = np.float32) -> dict:
  """{HF name: array in HF layout} of our `params` (model `model_config`), each as `dtype` (None:
  its own: int values and their scales map through the same names and layouts as the weights)."""
  cfg = ModelConfig.expect(model_config).replace(scan_layers='layers' in params)  # their layout.
  family = 'gpt2' if cfg.positions == 'learned' else 'llama'
  host = jax.device_get(params)
  parts = collections.defaultdict(list)
  transpose = {}
  for leaf in _leaves(cfg, family):
    x = host
    for name in leaf.path:
      x = x[name]
    x = np.asarray(x, dtype)
    for j, key in enumerate(leaf.keys()):
      layer_x = x[j] if leaf.stacked else x
      parts[key].append((leaf.spec.offset, layer_x.reshape(_view_shape(leaf.spec, leaf.shape))))
      transpose[key] = leaf.spec.transpose
  tensors = {}
  for key, pieces in parts.items():
    pieces = [v for _, v in sorted(pieces, key=lambda p: p[0])]
    x = np.concatenate(pieces, axis=-1) if len(pieces) > 1 else pieces[0]
    tensors[key] = np.ascontiguousarray(x.T if transpose[key] else x)
  return tensors


def export_checkpoint(
  model_config: ModelConfig,
  params: PyTree,
  path: str,
  token_ids: dict[str, int] | None = None,
  quantized: tuple[dict, dict] | None = None,
) -> None:
  """Write config.json and model.safetensors (float32, HF names) for `from_pretrained(path)`;
  with `token_ids` ({'bos_token_id', 'eos_token_id', 'pad_token_id'}) also generation_config.json
  (all three; config.json takes BOS and EOS: a pad id there would freeze that embedding row).
  `quantized`: (quantization_config, {HF name: array}) of a compressed-tensors export
  (models/compressed_export.py): config.json carries the config, and the arrays are written in
  place of their modules' float32 `.weight`."""
  cfg = ModelConfig.expect(model_config)
  _check_sp(cfg, f'exporting to {path}')
  ids = {k: v for k, v in (token_ids or {}).items() if k != 'pad_token_id'}
  hf = to_hf_config(cfg, ids)
  tensors = hf_tensors(cfg, params)
  if quantized is not None:
    hf.quantization_config, stored = quantized
    for module in {k.rsplit('.', 1)[0] for k in stored}:
      tensors.pop(module + '.weight')
    tensors.update(stored)
  os.makedirs(path, exist_ok=True)
  hf.save_pretrained(path)
  if token_ids:
    import transformers

    transformers.GenerationConfig(**token_ids).save_pretrained(path)
  safetensors.numpy.save_file(
    tensors, os.path.join(path, SAFETENSORS_FILE), metadata={'format': 'pt'}
  )
