"""LoRA adapters to and from PEFT's format (adapter_config.json + adapter_model.safetensors).

Our adapter of a kernel W (x·W, fan-in axes then fan-out axes) is A [fan_in..., r], B [r,
fan_out...], update (A·B)·scale. PEFT's of an HF module with weight [out, in] (Linear; GPT-2's
Conv1D stores [in, out] and PEFT then sets fan_in_fan_out) is lora_A [r, in], lora_B [out, r],
update (B·A)·scale: lora_A = A flattened to [in, r] and transposed, lora_B = B flattened to [r, out]
and transposed, the flattening the one models/hf.py uses for the kernel. A fused HF module (GPT-2's
c_attn = [q | k | v]) gets the rank-stack of its parts' adapters: lora_A their A's stacked, lora_B
block-diagonal at each part's offset, with PEFT's rank_pattern / alpha_pattern keeping the scale.
DoRA's m [1, fan_out...] is PEFT's lora_magnitude_vector [out] (use_dora); a fused module's parts
without an adapter get their base columns' norms there (a factor of 1). HF checkpoints are
standard-parametrized (models/hf.py), so are the adapters exported here.
"""

import collections
import json
import os

import jax
import numpy as np
import safetensors.numpy

import models
from models import hf, lora, parametrization, resident_quant
from models.config import LORA_TARGETS, ModelConfig, PyTree

CONFIG_FILE = 'adapter_config.json'
WEIGHTS_FILE = 'adapter_model.safetensors'
PREFIX = 'base_model.model.'


def _kernel_leaves(cfg: ModelConfig) -> tuple[list, str]:
  """([(hf.Leaf of each kernel LORA_TARGETS knows, its HF module's out width, its fan-out dims,
  whether cfg adapts it)], family)."""
  base, family = lora.base_config(cfg), _family(cfg)
  leaves = hf._leaves(base, family)
  shapes = hf.expected_shapes(leaves)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  flat = jax.tree_util.tree_flatten_with_path(models.logical_axes(base), is_leaf=is_spec)[0]
  axes = {hf._path(p): tuple(s) for p, s in flat}
  out = []
  for leaf in leaves:
    if tuple(a for a in axes[leaf.path] if a != 'layers') not in LORA_TARGETS:
      continue
    shape = shapes[leaf.keys()[0]]
    width = shape[0] if leaf.spec.transpose else shape[-1]  # HF [out, in]; Conv1D [in, out].
    n_out = len(parametrization.split_axes(axes[leaf.path])[1])
    out.append((leaf, width, n_out, parametrization.lora_target(cfg, axes[leaf.path])))
  return out, family


def _target_leaves(cfg: ModelConfig) -> tuple[list, str]:
  """([(hf.Leaf of each adapted kernel, its HF module's out width, its fan-out dims)], family)."""
  kernels, family = _kernel_leaves(cfg)
  return [k[:3] for k in kernels if k[3]], family


def _module(key: str) -> str:
  return key[: -len('.weight')]


def _node(tree: PyTree, path: tuple) -> PyTree:
  for name in path:
    tree = tree[name]
  return tree


def _pieces(cfg: ModelConfig, host: PyTree) -> tuple[dict, dict, dict]:
  """Per HF module: [(offset, A [in, r], B [r, w], m [w] or None)] of its adapted parts, its out
  width, and (DoRA) {offset: column norms [w]} of its parts without an adapter."""
  r = cfg.lora_rank
  parts, widths, norms = collections.defaultdict(list), {}, collections.defaultdict(dict)
  kernels, _ = _kernel_leaves(cfg)
  for leaf, width, n_out, adapted in kernels:
    if not (adapted or cfg.lora_dora):
      continue
    parent = _node(host, leaf.path[:-1])
    w = int(np.prod(leaf.shape[-n_out:]))
    x = {s: parent.get(leaf.path[-1] + s) for s in ('', *lora.SUFFIXES)}
    x = {k: None if v is None else np.asarray(v, np.float32) for k, v in x.items()}
    for j, key in enumerate(leaf.keys()):
      at = {k: v[j] if leaf.stacked and v is not None else v for k, v in x.items()}
      module, offset = _module(key), leaf.spec.offset
      if adapted:
        a, b, m = at['_lora_a'], at['_lora_b'], at['_lora_m']
        m = None if m is None else m.reshape(w)
        parts[module].append((offset, a.reshape(-1, r), b.reshape(r, -1), m))
        widths[module] = width
      elif cfg.lora_dora:  # the base's own column norms: DoRA's factor 1 on this part.
        norms[module][offset] = np.linalg.norm(at[''].reshape(-1, w), axis=0)
  return parts, widths, norms


def export_adapter(
  model_config: ModelConfig, params: PyTree, path: str, base_model: str = ''
) -> None:
  """Write `params`' adapters as a PEFT LoRA adapter directory for the HF export of the base
  (models/hf.py export_checkpoint of lora.split(params)[0], or the hf: source it came from);
  `base_model` is recorded as its base_model_name_or_path."""
  cfg = ModelConfig.expect(model_config)
  hf._check_sp(cfg, f'exporting the adapter to {path}')
  if not cfg.lora_rank:
    raise ValueError(f'exporting the adapter to {path}: config.model.lora_rank is 0 (no adapters)')
  if resident_quant.holds(params):  # QLoRA: the base's kernels as a merge sees them (DoRA's norms)
    params = resident_quant.dequantized(params, models.param_shapes(lora.base_config(cfg)))
  cfg = cfg.replace(scan_layers='layers' in params)
  r, scale = cfg.lora_rank, parametrization.lora_scale(cfg)
  parts, widths, norms = _pieces(cfg, jax.device_get(params))
  tensors, ranks = {}, {}
  for module, pieces in parts.items():
    pieces.sort(key=lambda p: p[0])
    rank = r * len(pieces)
    lora_b = np.zeros((widths[module], rank), np.float32)
    for k, (offset, _, b, _) in enumerate(pieces):
      lora_b[offset : offset + b.shape[1], k * r : (k + 1) * r] = b.T
    name = f'{PREFIX}{module}'
    tensors[f'{name}.lora_A.weight'] = np.ascontiguousarray(
      np.concatenate([p[1].T for p in pieces], axis=0)
    )
    tensors[f'{name}.lora_B.weight'] = lora_b
    if cfg.lora_dora:
      magnitude = np.zeros(widths[module], np.float32)
      spans = [*norms[module].items(), *((p[0], p[3]) for p in pieces)]
      for offset, m in spans:
        magnitude[offset : offset + len(m)] = m
      tensors[f'{name}.lora_magnitude_vector'] = magnitude
    ranks['.'.join(module.split('.')[-2:])] = rank
  # PEFT's scale is lora_alpha / r (rsLoRA: / √r) per module; a fused module's rank is larger.
  alpha_of = lambda rank: scale * (rank**0.5 if cfg.lora_rslora else rank)
  config = {
    'peft_type': 'LORA',
    'task_type': 'CAUSAL_LM',
    'base_model_name_or_path': base_model,
    'r': r,
    'lora_alpha': alpha_of(r),
    'use_rslora': cfg.lora_rslora,
    'use_dora': cfg.lora_dora,
    'target_modules': sorted(ranks),
    'rank_pattern': {m: k for m, k in ranks.items() if k != r},
    'alpha_pattern': {m: alpha_of(k) for m, k in ranks.items() if k != r},
    'fan_in_fan_out': _family(cfg) == 'gpt2',
    'lora_dropout': cfg.lora_dropout,
    'bias': 'none',
    'inference_mode': True,
  }
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG_FILE), 'w') as f:
    json.dump(config, f, indent=2)
  safetensors.numpy.save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={'format': 'pt'})


def _family(cfg: ModelConfig) -> str:
  return 'gpt2' if hf.to_hf_config(lora.base_config(cfg)).model_type == 'gpt2' else 'llama'


def _part(a: np.ndarray, b: np.ndarray, r: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  """One part's rank-r adapter (a [in, r], b [r, w]) of a fused module's rank-R one (a [in, R],
  b [R, w]): the rank components its block of B uses (our export's block-diagonal B) padded with
  unused ones; ValueError when it uses more than r."""
  used = np.flatnonzero(np.abs(b).sum(1) > 0)
  if len(used) > r:
    raise ValueError(f'{what}: uses rank {len(used)}, config.model.lora_rank is {r}')
  idx = np.concatenate([used, np.setdiff1d(np.arange(a.shape[1]), used)])[:r]
  return a[:, idx], b[idx]


def import_adapter(path: str, model_config: ModelConfig) -> PyTree:
  """The adapter params (lora.split's second tree) of a PEFT LoRA adapter directory, for
  `model_config` (its lora_rank and targets; PEFT's own alpha / rsLoRA scale is folded into B;
  with model.lora_dora, m from lora_magnitude_vector). A module the targets name but the adapter
  lacks, a rank above lora_rank, or use_dora other than model.lora_dora: ValueError."""
  cfg = ModelConfig.expect(model_config)
  try:
    with open(os.path.join(path, CONFIG_FILE)) as f:
      config = json.load(f)
    tensors = safetensors.numpy.load_file(os.path.join(path, WEIGHTS_FILE))
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: not a PEFT adapter directory ({e})') from None
  if config.get('peft_type') != 'LORA':
    raise ValueError(f'{path}: peft_type {config.get("peft_type")!r}, expected LORA')
  if bool(config.get('use_dora')) != cfg.lora_dora:
    raise ValueError(
      f'{path}: use_dora is {bool(config.get("use_dora"))}, config.model.lora_dora '
      f'{cfg.lora_dora}; set config.model.lora_dora={bool(config.get("use_dora"))}'
    )
  r, ours = cfg.lora_rank, parametrization.lora_scale(cfg)
  targets, _ = _target_leaves(cfg)
  out = {}
  for leaf, _, n_out in targets:
    per_layer = []
    for key in leaf.keys():
      module = _module(key)
      short = '.'.join(module.split('.')[-2:])
      names = [f'{PREFIX}{module}.lora_{x}.weight' for x in 'AB']
      if names[0] not in tensors:
        raise ValueError(f'{path}: no adapter for {module} (config.model.lora_targets has it)')
      lora_a, lora_b = (tensors[n].astype(np.float32) for n in names)
      rank = lora_a.shape[0]
      alpha = config.get('alpha_pattern', {}).get(short, config['lora_alpha'])
      theirs = alpha / (rank**0.5 if config.get('use_rslora') else rank)
      w = int(np.prod(leaf.shape[-n_out:]))
      a, b = lora_a.T, lora_b[leaf.spec.offset : leaf.spec.offset + w].T
      if rank != r:
        a, b = _part(a, b, r, f'{path}: {module}')
      fan_out = leaf.shape[-n_out:]
      layer = [a.reshape(*leaf.shape[:-n_out], r), (b * theirs / ours).reshape(r, *fan_out)]
      if cfg.lora_dora:
        m = _magnitude(tensors, f'{PREFIX}{module}', f'{path}: {module}')
        layer.append(m[leaf.spec.offset : leaf.spec.offset + w].reshape(1, *fan_out))
      per_layer.append(layer)
    node = out
    for name in leaf.path[:-1]:
      node = node.setdefault(name, {})
    for k, suffix in enumerate(lora.SUFFIXES[: 3 if cfg.lora_dora else 2]):
      xs = [p[k] for p in per_layer]
      node[leaf.path[-1] + suffix] = np.stack(xs) if leaf.stacked else xs[0]
  return out


def _magnitude(tensors: dict, name: str, what: str) -> np.ndarray:
  """A module's DoRA lora_magnitude_vector [out] (PEFT's key, or its older '.weight' form)."""
  for key in (f'{name}.lora_magnitude_vector', f'{name}.lora_magnitude_vector.weight'):
    if key in tensors:
      return tensors[key].astype(np.float32)
  raise ValueError(f'{what}: no lora_magnitude_vector (use_dora is set)')
