"""Parametrizations (SP, μP, u-μP): per-parameter init, forward multiplier and Adam lr/wd scales.

One table, keyed on a parameter's ROLE, which is read off its logical axis names (the same names
the sharding rules use), never off its module path:

  fan-out axes  the trailing ('heads' | 'kv_heads', 'head_dim' | 'v_head_dim') pair, else the last
  fan-in axes   the rest ('layers', the scan axis, is ignored)
  role          'vector'    no fan-in (norm scales, biases)
                'embedding' fan-in is 'vocab' (token table)      'position'  fan-in is 'position'
                'readout'   fan-out is 'vocab' (untied output)
                'residual'  width fan-in, fan-out 'embed' (writes into the residual stream)
                'hidden'    any other weight (width in, width out)
                'lora_a'    fan-out 'lora' (a LoRA down-projection)   'lora_b'  fan-in 'lora'
                'lora_m'    fan-in 'dora' (DoRA's magnitude [1, fan_out...] of a kernel)
                'act_calib' an 'act_calib' axis (W8A8's calibrated input absmax [1] and SmoothQuant
                            factors [1, fan_in...] of a kernel, models/act_quant.py): frozen

`w` is the width multiplier of a weight's fan-in against the base shape (model.base_d_model,
base_d_ff, base_head_dim); `n` its absolute fan-in. References: Yang et al. 2022 (μP, Tensor
Programs V, Adam column; microsoft/mup MuReadout / MuAdam), Blake et al. 2024 (u-μP,
graphcore-research/unit-scaling). SP is the GPT-2 scheme the model has always used.
"""

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from models.config import CHOICES, LORA_TARGETS, ModelConfig, head_dim, lora_target_names

PARAMETRIZATIONS = CHOICES['parametrization']
WIDTH_AXES = (
  'embed',
  'mlp',
  'heads',
  'kv_heads',
  'head_dim',
  'v_head_dim',
  'norm',
)  # the rest: 'vocab', 'position'.


@dataclasses.dataclass(frozen=True)
class Scales:
  init: float  # std of the normal init (None: the module's own init, ones/zeros for vectors).
  mult: float  # forward multiplier on the op's output (1: none).
  lr: float  # Adam learning-rate scale.
  wd: float  # weight-decay scale (on top of the lr scale: optax multiplies wd by the lr).
  bwd: float = None  # multiplier on the output's cotangent if not `mult` (unit scaling).


def _sp(c: ModelConfig, role: str, w: float, n: int) -> Scales:
  del w, n
  std = {
    'embedding': c.init_std,
    'position': c.init_std / 2,
    'hidden': c.init_std,
    'residual': c.init_std / (2 * c.n_layers) ** 0.5,
    'readout': c.init_std,
  }.get(role)
  return Scales(std, 1.0, 1.0, 1.0)


def _depth_mult(c: ModelConfig) -> float:
  """Depth-μP's branch multiplier (L / L_base)^-½ (1 at the base depth or base_n_layers=0)."""
  return (c.n_layers / (c.base_n_layers or c.n_layers)) ** -0.5


# Base-width values a parametrization uses for a key left at 0 (docs/mup.md, "Base-width search":
# α_out = 4 beat 1 by 0.12 nats at μP's base shape, 3x the seed spread).
TUNED = {'mup': {'mup_output_mult': 4.0}, 'umup': {'mup_output_mult': 1.0}}


def output_mult(c: ModelConfig) -> float:
  """α_out: model.mup_output_mult, or the parametrization's tuned value when it is 0."""
  m = c.mup_output_mult  # (a traced value in a member group that varies it: never 0 there)
  if isinstance(m, (int, float)) and m == 0:
    return TUNED.get(c.parametrization, {}).get('mup_output_mult', 1.0)
  return m


def _role_mult(c: ModelConfig, role: str) -> float:
  """The base-width forward multipliers α_in (embedding, position) and α_out (readout)."""
  return {'embedding': c.mup_input_mult, 'position': c.mup_input_mult}.get(
    role, output_mult(c) if role == 'readout' else 1.0
  )


def _role_lr(c: ModelConfig, role: str) -> float:
  """The base-width Adam lr multipliers of the non-hidden roles, relative to the hidden weights."""
  return {
    'embedding': c.mup_lr_embedding,
    'position': c.mup_lr_embedding,
    'readout': c.mup_lr_readout,
    'vector': c.mup_lr_vector,
  }.get(role, 1.0)


def _readout_init(c: ModelConfig, default: float, n: int) -> float:
  """The readout's init std: the table's (`default`), 0 ('zero') or fan_in^-½ ('fan_in')."""
  return {'default': default, 'zero': 0.0, 'fan_in': n**-0.5}[c.mup_readout_init]


def _mup(c: ModelConfig, role: str, w: float, n: int) -> Scales:
  # Equal to SP at the base shape (w = 1). Hidden weights: variance and Adam lr ∝ 1/fan_in.
  # Readout: SP init, forward × α_out/w, lr 1 (MuReadout). Input weights and vectors: as SP, × α_in.
  # Weight decay stays coupled to the (scaled) lr, as in MuAdamW. Depth-μP (Yang et al. 2023,
  # Tensor Programs VI, arXiv 2310.02244, Depth-μP with Adam; CompleteP, Dey et al. 2025, Table 1
  # at α = ½): each residual branch × (L/L_base)^-½ (residual_weights) and the blocks' hidden
  # Adam lr × (L/L_base)^-½; residual init uses the base depth, the multiplier carries the rest.
  sp = _sp(c.replace(n_layers=c.base_n_layers or c.n_layers), role, w, n)
  if role in ('hidden', 'residual'):
    return Scales(sp.init / w**0.5, 1.0, _depth_mult(c) / w, 1.0)
  if role == 'readout':
    init = _readout_init(c, sp.init, n)
    return Scales(init, _role_mult(c, role) / w, _role_lr(c, role), 1.0)
  lr = _role_lr(c, role)
  if role in ('embedding', 'position'):  # the table's width is d_model's, not its fan-in's.
    lr *= axis_width_mults(c)['embed'] ** -c.mup_lr_embedding_width_exp
  return Scales(sp.init, _role_mult(c, role), lr, 1.0)


def _umup(c: ModelConfig, role: str, w: float, n: int) -> Scales:
  # Unit init everywhere; hidden ops × fan_in^-1/2, readout × 1/fan_in; Adam lr × fan_in^-1/2
  # for hidden weights and embeddings (u-μP's "fan_in" of an embedding is d_model), 1 for the
  # readout and vectors, all × depth^-1/2; weight decay independent of the lr scale. The μP
  # base hyperparameters (α_in, α_out, per-role lrs, readout init) multiply in as under μP.
  del w
  lr = (
    c.n_layers**-0.5
    * _role_lr(c, role)
    * {
      'embedding': c.d_model**-0.5,
      'position': c.d_model**-0.5,
      'hidden': n**-0.5,
      'residual': n**-0.5,
    }.get(role, 1.0)
  )
  mult = _role_mult(c, role) * {'hidden': n**-0.5, 'residual': n**-0.5, 'readout': 1.0 / n}.get(
    role, 1.0
  )
  # Readout backward: u-μP scales the cross-entropy gradient by V/sqrt(V-1) and the readout's
  # input gradient by 1/sqrt(V) (not 1/fan_in), so backward signals start near unit RMS. Their
  # product on the logits' cotangent is a uniform gradient scale n·sqrt(V/(V-1)) for every param.
  bwd = (c.vocab_size / (c.vocab_size - 1)) ** 0.5 if role == 'readout' else None
  init = None if role == 'vector' else _readout_init(c, 1.0, n) if role == 'readout' else 1.0
  return Scales(init, mult, lr, 1.0 / lr, bwd)


TABLE = {'sp': _sp, 'mup': _mup, 'umup': _umup}


def axis_width_mults(c: ModelConfig) -> dict:
  """Width multiplier of each logical axis against the base shape (fixed axes: 1).

  Heads are assumed to scale as d_model / head_dim (the usual width ladder)."""
  d0 = c.base_d_model or c.d_model
  f0 = c.base_d_ff or c.d_ff * d0 / c.d_model
  hd = head_dim(c)
  h0 = c.base_head_dim or hd
  embed, hdim = c.d_model / d0, hd / h0
  return {
    'embed': embed,
    'norm': embed,
    'mlp': c.d_ff / f0,
    'head_dim': hdim,
    'v_head_dim': hdim,
    'heads': embed / hdim,
    'kv_heads': embed / hdim,
  }


HEAD_DIMS = ('head_dim', 'v_head_dim')


def split_axes(axes: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(fan_in axes, fan_out axes) of a parameter's logical axes; 'layers' dropped."""
  axes = tuple(a for a in axes if a != 'layers')
  heads = len(axes) >= 2 and axes[-1] in HEAD_DIMS and axes[-2] in ('heads', 'kv_heads')
  k = 2 if heads else 1
  return axes[:-k], axes[-k:]


def role(axes: Sequence[str]) -> str:
  fan_in, fan_out = split_axes(axes)
  if 'act_calib' in fan_in + fan_out:
    return 'act_calib'
  if 'dora' in fan_in:
    return 'lora_m'
  if 'lora' in fan_out or 'lora' in fan_in:
    return 'lora_a' if fan_out == ('lora',) else 'lora_b'
  if not fan_in:
    return 'vector'
  if fan_in == ('vocab',):
    return 'embedding'
  if fan_in == ('position',):
    return 'position'
  if fan_out == ('vocab',):
    return 'readout'
  unknown = [a for a in fan_in + fan_out if a not in WIDTH_AXES]
  if unknown:
    raise ValueError(f'parametrization: no role for logical axes {axes} ({unknown} unknown)')
  return 'residual' if fan_out == ('embed',) else 'hidden'


def scales(c: ModelConfig, axes: Sequence[str], shape: Sequence[int]) -> Scales:
  """The table's entry for one parameter of model config `c` (logical `axes`, its `shape`)."""
  fan_in, _ = split_axes(axes)
  dims = dict(zip(tuple(axes), tuple(shape)))
  mults = axis_width_mults(c)
  n = math.prod(dims[a] for a in fan_in)
  w = math.prod(mults.get(a, 1.0) for a in fan_in)
  r = role(axes)
  if r in FROZEN_ROLES:  # set by train.tools.compress; never initialized by std, scaled or updated.
    return Scales(None, 1.0, 0.0, 0.0)
  if r in LORA_ROLES:  # A ~ N(0, 1/fan_in), B = 0 (the update starts at 0); LoRA+ on B's lr
    # and, as PEFT's loraplus puts its 1-D params with B, on DoRA's m (set from W by the model).
    init = {'lora_a': n**-0.5, 'lora_b': 0.0}.get(r)
    return Scales(init, 1.0, 1.0 if r == 'lora_a' else c.lora_lr_ratio, 1.0)
  return TABLE[c.parametrization](c, r, w, n)


LORA_ROLES = ('lora_a', 'lora_b', 'lora_m')
FROZEN_ROLES = ('act_calib',)  # params that never train, whatever the config.


def lora_target(c: ModelConfig, axes: Sequence[str]) -> bool:
  """Whether the kernel with these logical axes gets a LoRA adapter under `c`."""
  name = LORA_TARGETS.get(tuple(a for a in axes if a != 'layers'))
  return c.lora_rank > 0 and name in lora_target_names(c.lora_targets)


def trainable(c: ModelConfig, axes: Sequence[str]) -> bool:
  """Whether a parameter trains: all but the frozen roles, or with LoRA only the adapters."""
  r = role(axes)
  return r not in FROZEN_ROLES and (not c.lora_rank or r in LORA_ROLES)


def has_frozen(c: ModelConfig) -> bool:
  """Whether some param of `c` does not train (`trainable` False): with LoRA the base, with
  static activation scales or SmoothQuant (models/act_quant.py) the 'act_calib' params."""
  static = c.act_quant != 'none' and c.act_scale == 'static'
  return bool(c.lora_rank) or static or bool(c.act_smooth)


# Roles whose weights compression acts on (sparsity masks, weight quantization): the kernels
# between hidden widths. Embeddings, the readout, vectors and LoRA adapters stay dense and float.
COMPRESSIBLE_ROLES = ('hidden', 'residual')


def compressible(axes: Sequence[str]) -> bool:
  """Whether sparsity and weight quantization apply to a parameter with these logical axes."""
  return role(axes) in COMPRESSIBLE_ROLES


def held_quantized(c: ModelConfig, axes: Sequence[str]) -> bool:
  """QLoRA (model.lora_base_resident 'quantized'): whether a kernel is no param but comes held
  quantized, frozen, in the apply's 'quantized' collection (models/resident_quant.py)."""
  return bool(c.lora_rank) and c.lora_base_resident == 'quantized' and compressible(axes)


def lora_scale(c: ModelConfig) -> float:
  """alpha / rank, or alpha / √rank (rsLoRA); alpha 0 means alpha = rank."""
  alpha = c.lora_alpha or c.lora_rank
  return alpha / (c.lora_rank**0.5 if c.lora_rslora else c.lora_rank)


def attention_scale(c: ModelConfig) -> float | None:
  """Query-key logit scale: None (SP: 1/sqrt(Dh)); μP sqrt(base Dh)/Dh; u-μP 1/Dh."""
  hd = head_dim(c)
  if c.parametrization == 'mup':
    return c.mup_attn_mult * (c.base_head_dim or hd) ** 0.5 / hd
  if c.parametrization == 'umup':
    return c.mup_attn_mult / hd
  return None


def residual_weights(c: ModelConfig, branch: jax.Array) -> tuple[jax.Array, jax.Array] | None:
  """(skip, branch) multipliers of residual add number `branch` (0 .. 2L-1), or None (plain sum).

  u-μP: x <- (x + tau f(x)) / sqrt(1 + tau^2), tau = 1/sqrt(L + branch), so the stream stays at
  unit variance and embedding, attention and MLP contribute equally at the output. μP with a
  base depth (base_n_layers): x <- x + (L/L_base)^-1/2 f(x) (depth-μP; see _mup)."""
  if c.parametrization == 'mup' and _depth_mult(c) != 1.0:
    return jnp.ones((), jnp.float32), jnp.asarray(_depth_mult(c), jnp.float32)
  if c.parametrization != 'umup':
    return None
  tau = jax.lax.rsqrt(c.n_layers + branch.astype(jnp.float32))
  norm = jax.lax.rsqrt(1.0 + tau * tau)
  return norm, tau * norm


def apply(y: jax.Array, s: Scales) -> jax.Array:
  """y times the forward multiplier (a no-op at 1), with the backward override if any."""
  if s.bwd is not None:
    return scale_fwd_bwd(y, s.mult, s.bwd)
  if isinstance(s.mult, (int, float)) and s.mult == 1.0:
    return y
  return y * jnp.asarray(s.mult, y.dtype)


@jax.custom_vjp
def scale_fwd_bwd(x: jax.Array, fwd: float, bwd: float) -> jax.Array:
  """x * fwd in the forward pass; the cotangent is multiplied by bwd (unit scaling's split scales).
  fwd and bwd get no gradient (they may be traced: a member group's per-member multipliers)."""
  return x * jnp.asarray(fwd, x.dtype)


def _scale_fwd(x, fwd, bwd):
  return scale_fwd_bwd(x, fwd, bwd), (fwd, bwd)


def _scale_bwd(res, g):
  fwd, bwd = res
  return g * jnp.asarray(bwd, g.dtype), jnp.zeros_like(fwd), jnp.zeros_like(bwd)


scale_fwd_bwd.defvjp(_scale_fwd, _scale_bwd)
