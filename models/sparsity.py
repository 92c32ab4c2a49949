"""Weight sparsity: magnitude masks (global or per-layer scope, unstructured or N:M), the cubic
schedule of Zhu & Gupta 2017 (arXiv 1710.01878), masking and density reports.

Masks are a pytree matching the params, a bool array per leaf: the magnitude mask on the
compressible kernels (models.compressible: the hidden / residual matmul kernels), all True on
every other leaf (embeddings, readout, norms, biases and LoRA adapters stay dense). Full trees
keep masks usable under jit, optax.tree_map_params (each mask takes its param's sharding) and
orbax. Counts are exact: a mask keeps round((1 - sparsity) * n) weights (ties: the earlier
index first), n per kernel and per layer of a layer-stacked kernel ('layer' scope) or over all
compressible weights together ('global').
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from models import logical_axes, parametrization
from models.config import ModelConfig, PyTree

SCOPES = ('global', 'layer')


def parse_pattern(pattern: str) -> tuple[int, int] | None:
  """None for 'unstructured', (N, M) for 'N:M' with 0 < N < M; ValueError otherwise."""
  if pattern == 'unstructured':
    return None
  try:
    n, m = (int(x) for x in pattern.split(':'))
  except ValueError:
    raise ValueError(f"sparsity pattern {pattern!r}: expected 'unstructured' or 'N:M'") from None
  if not 0 < n < m:
    raise ValueError(f'sparsity pattern {pattern!r}: N:M needs 0 < N < M')
  return n, m


def leaf_axes(cfg: ModelConfig) -> list[tuple[str, ...]]:
  """Logical axes of each param leaf, in jax.tree.leaves order."""
  is_spec = lambda x: isinstance(x, PartitionSpec)
  return [tuple(s) for s in jax.tree.leaves(logical_axes(cfg), is_leaf=is_spec)]


def cubic(
  step: jax.Array | int, begin: int, end: int, final: float, initial: float = 0.0
) -> jax.Array:
  """Zhu & Gupta's s_t = final + (initial - final)(1 - (t - begin) / (end - begin))^3 on
  [begin, end]; `initial` before, `final` after (begin == end: a jump at `end`)."""
  t = jnp.asarray(step, jnp.float32)
  if end == begin:
    frac = (t >= end).astype(jnp.float32)
  else:
    frac = jnp.clip((t - begin) / (end - begin), 0.0, 1.0)
  return final + (initial - final) * (1.0 - frac) ** 3


def _top(a: jax.Array, k: jax.Array | int) -> jax.Array:
  """True at the k largest entries of `a` along its last axis (ties: the earlier index)."""
  order = jnp.argsort(-a, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True) < k


def _keep(n: int, sparsity: jax.Array | float) -> jax.Array:
  return jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * n)


def _layer_mask(w: jax.Array, axes: tuple[str, ...], sparsity: jax.Array | float) -> jax.Array:
  """Unstructured mask with the same fraction in this kernel (in each layer if stacked)."""
  a = jnp.abs(w.astype(jnp.float32))
  if 'layers' not in axes:
    return _top(a.reshape(-1), _keep(a.size, sparsity)).reshape(w.shape)
  a = jnp.moveaxis(a, axes.index('layers'), 0)
  flat = a.reshape(a.shape[0], -1)
  mask = _top(flat, _keep(flat.shape[1], sparsity)).reshape(a.shape)
  return jnp.moveaxis(mask, 0, axes.index('layers'))


def _nm_mask(w: jax.Array, axes: tuple[str, ...], n: int, m: int) -> jax.Array:
  """The N largest |w| of every M consecutive entries along the (flattened) fan-in."""
  fan_in, _ = parametrization.split_axes(axes)
  fan_idx = [i for i, a in enumerate(axes) if a != 'layers'][: len(fan_in)]
  rest = [i for i in range(w.ndim) if i not in fan_idx]
  a = jnp.transpose(jnp.abs(w.astype(jnp.float32)), rest + fan_idx)
  f = math.prod(w.shape[i] for i in fan_idx)
  if f % m:
    raise ValueError(f'sparsity pattern {n}:{m}: fan-in {f} of a kernel {axes} is not a multiple')
  groups = a.reshape(a.shape[: len(rest)] + (f // m, m))
  mask = _top(groups, n).reshape(a.shape)
  return jnp.transpose(mask, np.argsort(rest + fan_idx))


def magnitude_masks(
  cfg: ModelConfig,
  params: PyTree,
  sparsity: jax.Array | float,
  scope: str = 'global',
  pattern: str = 'unstructured',
) -> PyTree:
  """Bool masks matching `params`: on the compressible kernels keep the largest |w| so that a
  fraction `sparsity` is pruned ('global': ranked all together; 'layer': per kernel and per
  layer), or with an 'N:M' pattern the N largest of every M along the fan-in (fraction 1 - N/M,
  `sparsity` unused); all True elsewhere. `sparsity` may be traced (jit-friendly)."""
  cfg = ModelConfig.expect(cfg)
  nm = parse_pattern(pattern)
  if scope not in SCOPES:
    raise ValueError(f'sparsity scope {scope!r}: expected one of {SCOPES}')
  leaves, treedef = jax.tree.flatten(params)
  axes = leaf_axes(cfg)
  comp = [parametrization.compressible(a) for a in axes]
  masks = [jnp.ones(jnp.shape(w), bool) for w in leaves]
  idx = [i for i, c in enumerate(comp) if c]
  if nm:
    for i in idx:
      masks[i] = _nm_mask(leaves[i], axes[i], *nm)
  elif scope == 'layer':
    for i in idx:
      masks[i] = _layer_mask(leaves[i], axes[i], sparsity)
  elif idx:
    flat = jnp.concatenate([jnp.abs(leaves[i].astype(jnp.float32)).reshape(-1) for i in idx])
    keep = _top(flat, _keep(flat.size, sparsity))
    splits = np.cumsum([leaves[i].size for i in idx])[:-1]
    for i, part in zip(idx, jnp.split(keep, splits)):
      masks[i] = part.reshape(leaves[i].shape)
  return treedef.unflatten(masks)


def apply(params: PyTree, masks: PyTree) -> PyTree:
  """Params with the pruned entries (mask False) set to exactly zero."""
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def density(cfg: ModelConfig, tree: PyTree) -> jax.Array:
  """Fraction of nonzero (kept) entries over the compressible kernels of params or masks."""
  pairs = [(x, a) for x, a in zip(jax.tree.leaves(tree), leaf_axes(cfg))]
  kept = [jnp.count_nonzero(x) for x, a in pairs if parametrization.compressible(a)]
  total = sum(x.size for x, a in pairs if parametrization.compressible(a))
  return sum(kept, jnp.zeros((), jnp.int32)).astype(jnp.float32) / max(total, 1)


def report(cfg: ModelConfig, tree: PyTree) -> dict[str, float]:
  """Density of each compressible kernel ('layers/attn/query'), per layer when stacked
  ('layers/attn/query[0]'), and over all of them ('total')."""
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  for (path, x), axes in zip(flat, leaf_axes(cfg)):
    if not parametrization.compressible(axes):
      continue
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    x = np.asarray(jax.device_get(x)) != 0
    if 'layers' in axes:
      x = np.moveaxis(x, axes.index('layers'), 0)
      out.update({f'{name}[{i}]': float(layer.mean()) for i, layer in enumerate(x)})
    else:
      out[name] = float(x.mean())
  out['total'] = float(density(cfg, tree))
  return out
