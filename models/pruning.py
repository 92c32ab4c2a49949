"""Structured pruning on the param tree: a smaller model of the same family (fewer layers, kv
groups with their query heads, MLP neurons or embedding channels) made by keeping chosen indices,
and the activation importances that choose them (Minitron: Muralidharan et al. 2024).

Every param is sliced along each dim whose logical axis (the names the sharding rules and the
parametrization table use) is pruned; no per-module cases. One size per axis holds for all layers
(the layer scan stacks them), so the per-layer ("dynamic") variant is not expressible here.
"""

import functools
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from models import loss, transformer
from models.config import ModelConfig, PyTree, head_dim, kv_heads

# What a target shape names: layers, query heads (whole kv groups), MLP neurons, d_model.
AXES = ('layers', 'heads', 'mlp', 'embed')


def sizes(cfg: ModelConfig) -> dict:
  """The model's size along each prunable axis."""
  return {'layers': cfg.n_layers, 'heads': cfg.n_heads, 'mlp': cfg.d_ff, 'embed': cfg.d_model}


def check(cfg: ModelConfig, shape: dict) -> None:
  """ValueError (one line, naming the axis) for a target shape the model cannot be pruned to."""
  have = sizes(cfg)
  for axis, n in shape.items():
    if axis not in have:
      raise ValueError(f'--prune: unknown axis {axis!r}; prunable: {", ".join(AXES)}')
    if not 1 <= n <= have[axis]:
      raise ValueError(f'--prune: {axis}={n}, but the model has {have[axis]} (1..{have[axis]})')
  group = cfg.n_heads // kv_heads(cfg)
  if shape.get('heads', cfg.n_heads) % group:
    raise ValueError(
      f'--prune: heads={shape["heads"]} is not a whole number of kv groups of {group} query heads'
    )
  if cfg.parametrization == 'umup':
    raise ValueError('--prune: a u-μP model: its forward multipliers depend on fan-in (sp, mup)')
  if 'embed' in shape and cfg.qk_norm and head_dim(cfg) == cfg.d_model:
    raise ValueError('--prune: embed with qk_norm and head_dim == d_model is ambiguous')


def pruned_config(cfg: ModelConfig, shape: dict) -> ModelConfig:
  """The config of `cfg` pruned to `shape` (head_dim pinned: it never changes)."""
  check(cfg, shape)
  heads = shape.get('heads', cfg.n_heads)
  groups = heads // (cfg.n_heads // kv_heads(cfg))
  return cfg.replace(
    n_layers=shape.get('layers', cfg.n_layers),
    n_heads=heads,
    n_kv_heads=None if cfg.n_kv_heads is None else groups,
    head_dim=head_dim(cfg),
    d_ff=shape.get('mlp', cfg.d_ff),
    d_model=shape.get('embed', cfg.d_model),
  )


def _slices(cfg: ModelConfig, keep: dict) -> dict:
  """Indices kept per logical axis from `keep` ('layers', 'kv_heads' groups, 'mlp', 'embed')."""
  out = {k: np.sort(np.asarray(v)) for k, v in keep.items() if k != 'kv_heads'}
  if 'kv_heads' in keep:
    group = cfg.n_heads // kv_heads(cfg)
    groups = np.sort(np.asarray(keep['kv_heads']))
    out['kv_heads'] = groups
    out['heads'] = (groups[:, None] * group + np.arange(group)).reshape(-1)
  if 'embed' in out:
    out['norm'] = out['embed']  # norms over d_model (qk norms over head_dim are left alone).
  return out


def prune(cfg: ModelConfig, params: PyTree, axes: PyTree, keep: dict) -> tuple[ModelConfig, PyTree]:
  """(pruned config, params keeping indices `keep` per axis). `axes`: models.logical_axes(cfg);
  `keep`: {'layers': [...], 'kv_heads': [kv group indices], 'mlp': [...], 'embed': [...]}."""
  cut = _slices(cfg, keep)

  def leaf(spec: PartitionSpec, x: jax.Array) -> jax.Array:
    x = np.asarray(x)
    for dim, name in enumerate(tuple(spec)):
      if name in cut and not (name == 'norm' and x.shape[dim] != cfg.d_model):
        x = np.take(x, cut[name], axis=dim)
    return jnp.asarray(x)

  out = jax.tree.map(leaf, axes, params, is_leaf=lambda s: isinstance(s, PartitionSpec))
  if not cfg.scan_layers and 'layers' in cut:  # unscanned: modules layer_<i>, renumbered.
    blocks = {k: out.pop(k) for k in [k for k in out if k.startswith('layer_')]}
    out.update({f'layer_{j}': blocks[f'layer_{i}'] for j, i in enumerate(cut['layers'])})
  shape = {
    'layers': len(cut.get('layers', range(cfg.n_layers))),
    'heads': len(cut.get('heads', range(cfg.n_heads))),
    'mlp': len(cut.get('mlp', range(cfg.d_ff))),
    'embed': len(cut.get('embed', range(cfg.d_model))),
  }
  return pruned_config(cfg, shape), out


def top(scores: Sequence[float], n: int) -> np.ndarray:
  """Indices of the n largest scores, in their original order."""
  return np.sort(np.argsort(-np.asarray(scores), kind='stable')[:n])


# --- Importance -----------------------------------------------------------------------------


def unstack(cfg: ModelConfig, params: PyTree) -> tuple[ModelConfig, PyTree]:
  """The same model unscanned (modules layer_<i>), so its probes are readable per layer."""
  if not cfg.scan_layers:
    return cfg, params
  out = {k: v for k, v in params.items() if k != 'layers'}
  for i in range(cfg.n_layers):
    out[f'layer_{i}'] = jax.tree.map(lambda x, i=i: x[i], params['layers'])
  return cfg.replace(scan_layers=False), out


def _is_norm(module: nn.Module, method: str) -> bool:
  return isinstance(module, transformer.Norm) and method == '__call__'


@functools.partial(jax.jit, static_argnums=0)
def _activations(cfg: ModelConfig, params: PyTree, tokens_BxL: jax.Array) -> dict:
  """Per-batch importance sums: |head outputs|, |MLP hidden|, |norm outputs| per channel."""
  _, state = transformer.Transformer(cfg).apply(
    {'params': params},
    tokens_BxL[:, :-1],  # rows of inputs + targets, as the loss sees them.
    mutable=['intermediates', 'importance'],
    capture_intermediates=_is_norm,
  )
  inter, probes = state['intermediates'], state['importance']
  heads, mlp, embed = [], [], 0.0
  for i in range(cfg.n_layers):
    layer, probe = inter[f'layer_{i}'], probes[f'layer_{i}']
    o_BxLxHxDh = probe['attn']['heads'][0].astype(jnp.float32)
    heads.append(jnp.sqrt((o_BxLxHxDh**2).sum(-1)).mean((0, 1)))  # L2 over Dh, mean over B, L.
    mlp.append(jnp.abs(probe['mlp']['hidden'][0].astype(jnp.float32)).mean((0, 1)))
    for norm in ('attn_norm', 'mlp_norm'):
      embed = embed + jnp.abs(layer[norm]['__call__'][0].astype(jnp.float32)).mean((0, 1))
  return {'heads': jnp.stack(heads), 'mlp': jnp.stack(mlp), 'embed': embed}


@functools.partial(jax.jit, static_argnums=0)
def _loss(cfg: ModelConfig, params: PyTree, tokens_BxL: jax.Array) -> jax.Array:
  logits = transformer.Transformer(cfg).apply({'params': params}, tokens_BxL[:, :-1])
  nll_BxL, mask_BxL = loss.nll(logits, tokens_BxL[:, 1:])
  return nll_BxL.sum() / mask_BxL.sum()


def importance(cfg: ModelConfig, params: PyTree, batches: Iterator[np.ndarray]) -> dict:
  """Importance on calibration token batches [B, L]: per kv group (its query heads' mean output
  L2 norm, summed over layers), per MLP neuron and per embedding channel (mean |activation| over
  layers' norms), and per layer the loss increase when that layer alone is dropped."""
  ucfg, uparams = unstack(cfg, params)
  group = cfg.n_heads // kv_heads(cfg)
  sums, n, base, dropped = None, 0, 0.0, np.zeros(cfg.n_layers)
  for tokens_BxL in batches:
    tokens_BxL = jnp.asarray(tokens_BxL)
    acts = jax.device_get(_activations(ucfg, uparams, tokens_BxL))
    sums = acts if sums is None else jax.tree.map(np.add, sums, acts)
    base += float(_loss(cfg, params, tokens_BxL))
    for i in range(cfg.n_layers if cfg.n_layers > 1 else 0):
      dropped[i] += float(_loss(*drop_layer(cfg, params, i), tokens_BxL))
    n += 1
  if not n:
    raise ValueError('importance: no calibration batches')
  heads_NxH = sums['heads'] / n
  return {
    'heads': heads_NxH.reshape(cfg.n_layers, -1, group).sum((0, 2)),  # per kv group
    'mlp': (sums['mlp'] / n).sum(0),
    'embed': sums['embed'] / n,
    'layers': (dropped - base) / n,
    'loss': base / n,
  }


def drop_layer(cfg: ModelConfig, params: PyTree, i: int) -> tuple[ModelConfig, PyTree]:
  """The model without layer i (scanned or not)."""
  keep = np.array([j for j in range(cfg.n_layers) if j != i])
  if cfg.scan_layers:
    out = {**params, 'layers': jax.tree.map(lambda x: x[keep], params['layers'])}
  else:
    out = {k: v for k, v in params.items() if not k.startswith('layer_')}
    out.update({f'layer_{j}': params[f'layer_{int(k)}'] for j, k in enumerate(keep)})
  return cfg.replace(n_layers=cfg.n_layers - 1), out


def plan(cfg: ModelConfig, scores: dict, shape: dict) -> dict:
  """The `keep` of `prune` for a target shape: the most important units of each pruned axis."""
  check(cfg, shape)
  keep = {}
  if 'layers' in shape:
    keep['layers'] = top(scores['layers'], shape['layers'])
  if 'heads' in shape:
    keep['kv_heads'] = top(scores['heads'], shape['heads'] // (cfg.n_heads // kv_heads(cfg)))
  if 'mlp' in shape:
    keep['mlp'] = top(scores['mlp'], shape['mlp'])
  if 'embed' in shape:
    keep['embed'] = top(scores['embed'], shape['embed'])
  return keep
