"""LoRA adapters to and from PEFT's format (adapter_config.json + adapter_model.safetensors).

Our adapter of a kernel W (x·W, fan-in axes then fan-out axes) is A [fan_in..., r], B [r,
fan_out...], update (A·B)·scale. PEFT's of an HF module with weight [out, in] (Linear; GPT-2's
Conv1D stores [in, out] and PEFT then sets fan_in_fan_out) is lora_A [r, in], lora_B [out, r],
update (B·A)·scale: lora_A = A flattened to [in, r] and transposed, lora_B = B flattened to [r, out]
and transposed, the flattening the one models/hf.py uses for the kernel. A fused HF module (GPT-2's
c_attn = [q | k | v]) gets the rank-stack of its parts' adapters: lora_A their A's stacked, lora_B
block-diagonal at each part's offset, with PEFT's rank_pattern / alpha_pattern keeping the scale.
HF checkpoints are standard-parametrized (models/hf.py), so are the adapters exported here.
"""

import collections
import json
import os

import jax
import numpy as np
import safetensors.numpy

import models
from models import hf, lora, parametrization
from models.config import ModelConfig, ModelConfigLike, PyTree

CONFIG_FILE = 'adapter_config.json'
WEIGHTS_FILE = 'adapter_model.safetensors'
PREFIX = 'base_model.model.'


def _target_leaves(cfg: ModelConfig) -> tuple[list, str]:
  """([(hf.Leaf of each adapted kernel, its HF module's out width, its fan-out dims)], family)."""
  base = lora.base_config(cfg)
  family = 'gpt2' if hf.to_hf_config(base).model_type == 'gpt2' else 'llama'
  leaves = hf._leaves(base, family)
  shapes = hf.expected_shapes(leaves)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  flat = jax.tree_util.tree_flatten_with_path(models.logical_axes(base), is_leaf=is_spec)[0]
  axes = {hf._path(p): tuple(s) for p, s in flat}
  out = []
  for leaf in leaves:
    if not parametrization.lora_target(cfg, axes[leaf.path]):
      continue
    shape = shapes[leaf.keys()[0]]
    width = shape[0] if leaf.spec.transpose else shape[-1]  # HF [out, in]; Conv1D [in, out].
    out.append((leaf, width, len(parametrization.split_axes(axes[leaf.path])[1])))
  return out, family


def _module(key: str) -> str:
  return key[: -len('.weight')]


def export_adapter(
  model_config: ModelConfigLike, params: PyTree, path: str, base_model: str = ''
) -> None:
  """Write `params`' adapters as a PEFT LoRA adapter directory for the HF export of the base
  (models/hf.py export_checkpoint of lora.split(params)[0], or the hf: source it came from)."""
  cfg = ModelConfig.make(model_config)
  hf._check_sp(cfg, f'exporting the adapter to {path}')
  if not cfg.lora_rank:
    raise ValueError(f'exporting the adapter to {path}: config.model.lora_rank is 0 (no adapters)')
  cfg = cfg.replace(scan_layers='layers' in params)
  host = jax.device_get(params)
  r, scale = cfg.lora_rank, parametrization.lora_scale(cfg)
  targets, family = _target_leaves(cfg)
  parts = collections.defaultdict(list)  # module -> [(offset, A [in, r], B [r, w])]
  widths = {}
  for leaf, width, _ in targets:
    node = host
    for name in leaf.path[:-1]:
      node = node[name]
    a, b = (np.asarray(node[leaf.path[-1] + s], np.float32) for s in lora.SUFFIXES)
    for j, key in enumerate(leaf.keys()):
      aj, bj = (a[j], b[j]) if leaf.stacked else (a, b)
      parts[_module(key)].append((leaf.spec.offset, aj.reshape(-1, r), bj.reshape(r, -1)))
      widths[_module(key)] = width
  tensors, ranks = {}, {}
  for module, pieces in parts.items():
    pieces.sort(key=lambda p: p[0])
    rank = r * len(pieces)
    lora_b = np.zeros((widths[module], rank), np.float32)
    for k, (offset, _, b) in enumerate(pieces):
      lora_b[offset : offset + b.shape[1], k * r : (k + 1) * r] = b.T
    tensors[f'{PREFIX}{module}.lora_A.weight'] = np.ascontiguousarray(
      np.concatenate([a.T for _, a, _ in pieces], axis=0)
    )
    tensors[f'{PREFIX}{module}.lora_B.weight'] = lora_b
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
    'target_modules': sorted(ranks),
    'rank_pattern': {m: k for m, k in ranks.items() if k != r},
    'alpha_pattern': {m: alpha_of(k) for m, k in ranks.items() if k != r},
    'fan_in_fan_out': family == 'gpt2',
    'lora_dropout': 0.0,
    'bias': 'none',
    'inference_mode': True,
  }
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG_FILE), 'w') as f:
    json.dump(config, f, indent=2)
  safetensors.numpy.save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={'format': 'pt'})


def _part(a: np.ndarray, b: np.ndarray, r: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  """One part's rank-r adapter (a [in, r], b [r, w]) of a fused module's rank-R one (a [in, R],
  b [R, w]): the rank components its block of B uses (our export's block-diagonal B) padded with
  unused ones; ValueError when it uses more than r."""
  used = np.flatnonzero(np.abs(b).sum(1) > 0)
  if len(used) > r:
    raise ValueError(f'{what}: uses rank {len(used)}, config.model.lora_rank is {r}')
  idx = np.concatenate([used, np.setdiff1d(np.arange(a.shape[1]), used)])[:r]
  return a[:, idx], b[idx]


def import_adapter(path: str, model_config: ModelConfigLike) -> PyTree:
  """The adapter params (lora.split's second tree) of a PEFT LoRA adapter directory, for
  `model_config` (its lora_rank and targets; PEFT's own alpha / rsLoRA scale is folded into B).
  A module the targets name but the adapter lacks, or a rank above lora_rank: ValueError."""
  cfg = ModelConfig.make(model_config)
  try:
    with open(os.path.join(path, CONFIG_FILE)) as f:
      config = json.load(f)
    tensors = safetensors.numpy.load_file(os.path.join(path, WEIGHTS_FILE))
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: not a PEFT adapter directory ({e})') from None
  if config.get('peft_type') != 'LORA':
    raise ValueError(f'{path}: peft_type {config.get("peft_type")!r}, expected LORA')
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
      per_layer.append(
        (a.reshape(*leaf.shape[:-n_out], r), (b * theirs / ours).reshape(r, *leaf.shape[-n_out:]))
      )
    node = out
    for name in leaf.path[:-1]:
      node = node.setdefault(name, {})
    for k, suffix in enumerate(lora.SUFFIXES):
      xs = [p[k] for p in per_layer]
      node[leaf.path[-1] + suffix] = np.stack(xs) if leaf.stacked else xs[0]
  return out
