"""Structured pruning on the param tree: a smaller model of the same family (fewer layers, kv
groups with their query heads, MLP neurons or embedding channels) made by keeping chosen indices,
and the activation importances that choose them (Minitron: Muralidharan et al. 2024).

Every param is sliced along each dim whose logical axis (the names the sharding rules and the
parametrization table use) is pruned; no per-module cases. One size per axis holds for all layers
(the layer scan stacks them), so the per-layer ("dynamic") variant is not expressible here.
A user steers the choice with forced units (`plan`'s `forced`), importances of their own
(`given_importance`), or depth as one contiguous block scored by the loss (`block_scores`).
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
# Each axis with the units `prune` keeps along it (heads: kv groups of query heads).
UNITS = (('layers', 'layers'), ('heads', 'kv_heads'), ('mlp', 'mlp'), ('embed', 'embed'))


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


def top(scores: Sequence[float], n: int, forced: Sequence[int] = ()) -> np.ndarray:
  """Indices of the n largest scores, in their original order; `forced` indices first."""
  s = np.array(scores, dtype=np.float64)
  s[np.asarray(forced, dtype=int)] = np.inf
  return np.sort(np.argsort(-s, kind='stable')[:n])


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


def importance(
  cfg: ModelConfig, params: PyTree, batches: Iterator[np.ndarray], layers: bool = True
) -> dict:
  """Importance on calibration token batches [B, L]: per kv group (its query heads' mean output
  L2 norm, summed over layers), per MLP neuron and per embedding channel (mean |activation| over
  layers' norms), and (`layers`) per layer the loss increase when that layer alone is dropped."""
  ucfg, uparams = unstack(cfg, params)
  group = cfg.n_heads // kv_heads(cfg)
  sums, n, base, dropped = None, 0, 0.0, np.zeros(cfg.n_layers)
  for tokens_BxL in batches:
    tokens_BxL = jnp.asarray(tokens_BxL)
    acts = jax.device_get(_activations(ucfg, uparams, tokens_BxL))
    sums = acts if sums is None else jax.tree.map(np.add, sums, acts)
    base += float(_loss(cfg, params, tokens_BxL))
    for i in range(cfg.n_layers if layers and cfg.n_layers > 1 else 0):
      dropped[i] += float(_loss(*drop_layers(cfg, params, [i]), tokens_BxL))
    n += 1
  if not n:
    raise ValueError('importance: no calibration batches')
  heads_NxH = sums['heads'] / n
  out = {
    'heads': heads_NxH.reshape(cfg.n_layers, -1, group).sum((0, 2)),  # per kv group
    'mlp': (sums['mlp'] / n).sum(0),
    'embed': sums['embed'] / n,
    'layers': (dropped - base) / n,
    'loss': base / n,
  }
  return out if layers else {k: v for k, v in out.items() if k != 'layers'}


def drop_layers(
  cfg: ModelConfig, params: PyTree, drop: Sequence[int]
) -> tuple[ModelConfig, PyTree]:
  """The model without the layers `drop` (scanned or not), the others in order."""
  keep = np.setdiff1d(np.arange(cfg.n_layers), np.asarray(list(drop), dtype=int))
  if cfg.scan_layers:
    out = {**params, 'layers': jax.tree.map(lambda x: x[keep], params['layers'])}
  else:
    out = {k: v for k, v in params.items() if not k.startswith('layer_')}
    out.update({f'layer_{j}': params[f'layer_{int(k)}'] for j, k in enumerate(keep)})
  return cfg.replace(n_layers=len(keep)), out


def block_scores(
  cfg: ModelConfig, params: PyTree, batches: Sequence[np.ndarray], n_drop: int
) -> np.ndarray:
  """Minitron's depth pruning by blocks: per start s, the mean calibration loss increase when the
  contiguous layers s..s+n_drop-1 are dropped together (all candidates share one compile)."""
  if not batches:
    raise ValueError('block_scores: no calibration batches')
  starts = range(cfg.n_layers - n_drop + 1)
  out = np.zeros(len(starts))
  for tokens_BxL in batches:
    tokens_BxL = jnp.asarray(tokens_BxL)
    base = float(_loss(cfg, params, tokens_BxL))
    for s in starts:
      out[s] += float(_loss(*drop_layers(cfg, params, range(s, s + n_drop)), tokens_BxL)) - base
  return out / len(batches)


def block_keep(
  scores: Sequence[float], n_layers: int, n_drop: int, forced: Sequence[int] = ()
) -> np.ndarray:
  """The layers kept when the block with the smallest score that holds no forced layer goes."""
  ok = [s for s in range(len(scores)) if not set(forced) & set(range(s, s + n_drop))]
  best = min(ok, key=lambda s: (scores[s], s))
  return np.array([i for i in range(n_layers) if not best <= i < best + n_drop])


def forced_units(cfg: ModelConfig, forced: dict) -> dict:
  """`forced` ({axis: indices}, heads as query heads) in `prune`'s keys: a query head keeps its
  whole kv group."""
  out = {k: np.unique(np.asarray(v, dtype=int)) for k, v in forced.items() if k != 'heads'}
  if 'heads' in forced:
    group = cfg.n_heads // kv_heads(cfg)
    out['kv_heads'] = np.unique(np.asarray(forced['heads'], dtype=int) // group)
  return out


def check_forced(cfg: ModelConfig, shape: dict, forced: dict, depth: str = 'layer') -> None:
  """ValueError (one line, naming --keep or --depth) for forced units that do not exist, more
  than the target keeps, on an axis the target does not cut, or a depth block that cannot
  avoid them."""
  have, group = sizes(cfg), cfg.n_heads // kv_heads(cfg)
  for axis, idx in forced.items():
    if axis not in have:
      raise ValueError(f'--keep: unknown axis {axis!r}; prunable: {", ".join(AXES)}')
    if axis not in shape:
      raise ValueError(
        f'--keep: {axis} is not cut by --prune (add {axis}:N; N = {len(set(idx))} keeps '
        'exactly these)'
      )
    bad = [int(i) for i in idx if not 0 <= int(i) < have[axis]]
    if bad:
      raise ValueError(
        f'--keep: {axis} {bad[0]} does not exist (the model has {have[axis]}: 0..{have[axis] - 1})'
      )
  units = forced_units(cfg, forced)
  for axis, key in UNITS:
    per = group if axis == 'heads' else 1
    n = len(units.get(key, ())) * per
    if axis in shape and n > shape[axis]:
      whole = f' (whole kv groups of {group})' if per > 1 else ''
      raise ValueError(f'--keep: {n} {axis}{whole} kept, more than --prune={axis}:{shape[axis]}')
  if depth == 'block':
    if 'layers' not in shape:
      raise ValueError('--depth=block: give the layers to keep (--prune=layers:K)')
    n_drop = cfg.n_layers - shape['layers']
    fixed = {int(i) for i in units.get('layers', ())}
    if not any(not fixed & set(range(s, s + n_drop)) for s in range(cfg.n_layers - n_drop + 1)):
      raise ValueError(
        f'--depth=block: no {n_drop} contiguous layers avoid the kept layers {sorted(fixed)}'
      )


def scored_axes(cfg: ModelConfig, shape: dict, forced: dict, depth: str = 'layer') -> set:
  """The axes of `shape` whose kept units importance chooses: not all forced, not a depth block."""
  units, group = forced_units(cfg, forced), cfg.n_heads // kv_heads(cfg)
  out = set()
  for axis, key in UNITS:
    per = group if axis == 'heads' else 1
    if axis in shape and len(units.get(key, ())) * per < shape[axis]:
      out.add(axis)
  return out - ({'layers'} if depth == 'block' else set())


def given_importance(cfg: ModelConfig, scores: dict) -> dict:
  """A user's importances ({axis: one score per unit}; heads per query head or per kv group),
  checked against the model (ValueError naming --importance) and in `importance`'s form."""
  have, kv = sizes(cfg), kv_heads(cfg)
  out = {}
  for axis, v in scores.items():
    if axis not in have:
      raise ValueError(f'--importance: unknown axis {axis!r}; prunable: {", ".join(AXES)}')
    x = np.asarray(v, dtype=object)
    number = lambda a: isinstance(a, (int, float)) and not isinstance(a, bool) and np.isfinite(a)
    if x.ndim != 1 or not all(number(a) for a in x):
      raise ValueError(f'--importance: {axis} must be a flat list of finite numbers, one per unit')
    ok = (have[axis], kv) if axis == 'heads' else (have[axis],)
    if len(x) not in ok:
      want = ' or '.join(str(n) for n in sorted(set(ok)))
      raise ValueError(f'--importance: {axis} has {len(x)} scores; the model has {want}')
    x = x.astype(np.float64)
    out[axis] = x.reshape(kv, -1).sum(1) if axis == 'heads' else x
  return out


def plan(
  cfg: ModelConfig, scores: dict, shape: dict, forced: dict | None = None, depth: str = 'layer'
) -> dict:
  """The `keep` of `prune` for a target shape: the `forced` units ({axis: indices}, heads as query
  heads), then the most important others of each pruned axis; depth='block': the layers outside
  the contiguous block whose removal scored lowest (scores['blocks'], one per start)."""
  check(cfg, shape)  # (forced: every axis one that `shape` cuts)
  forced = forced or {}
  check_forced(cfg, shape, forced, depth)
  units, have = forced_units(cfg, forced), sizes(cfg)
  group = cfg.n_heads // kv_heads(cfg)
  keep = {}
  for axis, key in UNITS:
    per = group if axis == 'heads' else 1
    if axis not in shape:
      continue
    if axis == 'layers' and depth == 'block':
      n_drop = cfg.n_layers - shape['layers']
      keep['layers'] = block_keep(scores['blocks'], cfg.n_layers, n_drop, units.get('layers', ()))
      continue
    s = scores.get(axis, np.zeros(have[axis] // per))  # (absent only when all are forced)
    keep[key] = top(s, shape[axis] // per, units.get(key, ()))
  return keep
