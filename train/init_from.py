"""Loading weights to start from: `config.init_from` ('hf:/dir', one of our workdirs, or
'peft:/dir', a PEFT LoRA adapter directory on the base its adapter_config.json names).

Also how every tool reads a model (train.tools.sample, train.tools.export, train.tools.harness,
distillation teachers). Params are placed straight onto the given shardings; a shape mismatch with
the target model config names the tensor. A run started from `config.init_from` logs one line: the
source, its checkpoint step, the params loaded and any left at init (a LoRA run's fresh adapters).

A LoRA run's checkpoints hold its adapters (and their optimizer state) only: their metadata's
`lora_base` record names the frozen base ('hf:/dir' or a workdir at a checkpoint step) with its
checksums, verified wherever the base is loaded again (a resume, a tool, an init_from). A LoRA
source for a run without LoRA gives its merged model (W + A·B·scale).
"""

import functools
import logging
import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import safetensors
import safetensors.numpy
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

import models
from models import hf, lora, parametrization, peft_adapter, quantize, resident_quant
from models.config import LORA_TARGETS, ModelConfig, PyTree
from train import checkpoint
from train import workdir as workdir_lib

if TYPE_CHECKING:
  from train.context import Run

PEFT = 'peft:'  # init_from='peft:/dir': a PEFT LoRA adapter directory (models/peft_adapter.py).


def workdir_model_config(workdir: str) -> models.ModelConfig:
  """The model config a workdir of ours was trained with (from its saved config.json)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'{workdir!r} is neither hf:/path nor a workdir of ours (no config.json)')
  model = dict(workdir_lib.read_json(path)['model'])
  model.setdefault('mup_output_mult', 1.0)  # saved before the key existed: α_out was 1.
  return models.ModelConfig.make(model)


def source_model_config(src: str) -> models.ModelConfig:
  """The model config of `src` ('hf:/dir', 'peft:/dir' or our workdir) from its JSON alone."""
  if src.startswith(PEFT):
    base = lora.base_config(source_model_config(peft_base(src)))
    return base.replace(**peft_settings(src, base))
  if not src.startswith('hf:'):
    return workdir_model_config(src)
  if not os.path.exists(os.path.join(src[3:], 'config.json')):
    raise ValueError(f'{src}: no config.json in {src[3:]} (not an HF checkpoint directory)')
  return hf.read_config(src[3:])


def source_path(src: str) -> str:
  """The directory a source is ('hf:' / 'peft:' taken off)."""
  for prefix in ('hf:', PEFT):
    if src.startswith(prefix):
      return src[len(prefix) :]
  return src


_TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'tokenizer.model')


def source_tokenizer(src: str) -> str:
  """The tokenizer a source was trained with: our run's data.tokenizer, the hf: dir itself, or a
  PEFT adapter's own tokenizer files (else its base's)."""
  if src.startswith(PEFT):
    path = source_path(src)
    has_files = any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES)
    return path if has_files else source_tokenizer(peft_base(src))
  if src.startswith('hf:'):
    path = src[3:]
    if any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
      return path
    raise ValueError(
      f'{src}: no tokenizer files in {path}; pass --tokenizer=byte or a tokenizer directory'
    )
  path = os.path.join(src, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'{src!r} is neither hf:/path nor a workdir of ours (no config.json)')
  return workdir_lib.read_json(path)['data']['tokenizer']


def _flat_shapes(tree: PyTree) -> dict:
  return {
    jax.tree_util.keystr(p): tuple(x.shape)
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _check_shapes(src: str, expected: PyTree, found: PyTree) -> None:
  """ValueError naming the first tensor whose presence or shape differs."""
  want, have = _flat_shapes(expected), _flat_shapes(found)
  for key in sorted(set(want) | set(have)):
    if want.get(key) != have.get(key):
      raise ValueError(
        f'{src}: tensor {key} has shape {have.get(key, "(missing)")} but the '
        f'model config expects {want.get(key, "(none)")}'
      )


# a packed quantized workdir's params (train/tools/quantized.py)
QUANTIZED_FILE = 'quantized.safetensors'

# What the forward pass multiplies trained weights by: a change would silently re-mean them.
MEANING = (
  'parametrization',
  'base_d_model',
  'base_d_ff',
  'base_head_dim',
  'base_n_layers',
  'mup_input_mult',
  'mup_output_mult',
  'mup_attn_mult',
)


def _meaning(c: ModelConfig) -> dict:
  out = {k: getattr(c, k) for k in MEANING}
  return {**out, 'mup_output_mult': parametrization.output_mult(c)}  # 0 means the tuned value.


def load_params(
  src: str,
  model_config: models.ModelConfig | None = None,
  shardings: PyTree | None = None,
  step: int | None = None,
) -> tuple[models.ModelConfig, PyTree]:
  """(ModelConfig, params) from 'hf:/dir', 'peft:/dir' (its base + adapters), our workdir's
  latest checkpoint (or `step`; a LoRA run's adapters on its recorded base), or a packed quantized
  workdir of train/tools/quantized.py (dequantized to float32).

  With `model_config`, the checkpoint must fit it (ValueError naming the tensor otherwise; a LoRA
  source for a config without LoRA gives the merged model); with `shardings` (NamedShardings
  matching the params) arrays land sharded.
  """
  if src.startswith('hf:'):
    return hf.import_checkpoint(src[3:], model_config=model_config, shardings=shardings)
  if src.startswith(PEFT):
    return _peft_params(src, model_config, shardings)
  saved_cfg = workdir_model_config(src)
  cfg = model_config if model_config is not None else saved_cfg
  if _meaning(saved_cfg) != _meaning(cfg):
    raise ValueError(
      f'{src}: trained with parametrization/base shape/multipliers {_meaning(saved_cfg)}, the '
      f'model config has {_meaning(cfg)}; the weights would mean something else'
    )
  if saved_cfg.lora_rank and not cfg.lora_rank:  # a LoRA run for a model without adapters.
    return cfg, _merged(src, saved_cfg, cfg, shardings, step)
  saved = models.param_shapes(saved_cfg)
  _check_shapes(src, models.param_shapes(cfg), saved)
  # train/tools/quantized.py's packed workdir.
  if os.path.exists(os.path.join(src, QUANTIZED_FILE)):
    return cfg, _dequantized(src, saved_cfg, shardings)
  return cfg, _workdir_params(src, saved_cfg, shardings, step)


def _manager(src: str, step: int | None) -> tuple[ocp.CheckpointManager, int]:
  """The checkpoint manager of workdir `src` and the step to read (its latest unless `step`)."""
  mngr = ocp.CheckpointManager(
    os.path.join(os.path.abspath(src), 'checkpoints'), item_names=('state', 'meta')
  )
  steps = mngr.all_steps()
  if not steps:
    raise ValueError(f'{src}: no checkpoint under {src}/checkpoints')
  if step is not None and step not in steps:
    raise ValueError(f'{src}: no checkpoint step {step} any more (it keeps {sorted(steps)})')
  return mngr, max(steps) if step is None else step


def _device_shardings(tree: PyTree) -> PyTree:
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda _: device, tree)


def _workdir_params(src: str, saved_cfg: ModelConfig, shardings: PyTree | None, step: int | None):
  """Workdir `src`'s params at `step` (None: latest) on `shardings`: a LoRA run's adapters on the
  frozen base its checkpoint's metadata records (checksums verified), else the params saved."""
  mngr, step = _manager(src, step)
  saved = models.param_shapes(saved_cfg)
  shardings = _device_shardings(saved) if shardings is None else shardings
  record = _record(mngr, step)
  if record is None:
    return _restore(src, mngr, step, saved, shardings)
  base_shardings, adapter_shardings = lora.split(shardings)
  adapters = _restore(src, mngr, step, lora.split(saved)[1], adapter_shardings)
  where = os.path.join(src, 'checkpoints', str(step))
  return lora.combine(load_base(record, saved_cfg, base_shardings, where), adapters)


def _record(mngr: ocp.CheckpointManager, step: int) -> dict | None:
  """The LoRA base record in checkpoint `step`'s metadata (None: a whole checkpoint, or metadata
  that does not read: _restore says so)."""
  try:
    return checkpoint.restore_meta(mngr, step).get(checkpoint.LORA_BASE)
  except Exception:  # torn or garbled JSON: orbax/json raise many types.
    return None


def _restore(
  src: str, mngr: ocp.CheckpointManager, step: int, shapes: PyTree, shardings: PyTree
) -> PyTree:
  """The params (or the part `shapes` names) of checkpoint `step`, checked against the checksums
  saved with them; ValueError when they do not load or match."""
  target = {
    'params': jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
  }
  restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
  checkpoint.silence_abandoned_io()
  try:
    out = mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
        meta=ocp.args.JsonRestore(),
      ),
    )
    expected = (out['meta'] or {}).get('checksum')
    problem = None
    if expected:  # the params' entries of the checksums saved with the full train state.
      got = checkpoint.checksum(out['state']['params'])
      bad = [k for k, v in got.items() if expected.get('.params' + k) != v]
      problem = f'checksum mismatch in {len(bad)} array(s), e.g. {bad[0]}' if bad else None
  except Exception as e:  # torn files: orbax/TensorStore/json raise many types.
    problem = str(e).split('. ')[0][:160]
    _check_written_shapes(src, mngr.directory, step, shapes)  # or intact arrays of another model
  if problem:
    raise ValueError(
      f'{src}: checkpoint {step} is corrupt ({problem}); resume that run once '
      'to set it aside and fall back to its previous checkpoint'
    ) from None
  return out['state']['params']


def _check_written_shapes(src: str, directory: str, step: int, saved: PyTree) -> None:
  """ValueError when checkpoint `step`'s arrays, intact, have other shapes than `src`/config.json
  gives (an edited or copied config.json: not a corrupt checkpoint)."""
  written = checkpoint.array_shapes(directory, step) or {}
  for key, there, now in checkpoint.other_shapes({'params': saved}, written)[:1]:
    raise ValueError(
      f'{src}/config.json disagrees with checkpoint {step}: {key} is {there} in the '
      f'checkpoint, {now} by its config.json (edited or copied from another run?)'
    )


def _dequantized(src: str, saved_cfg: ModelConfig, shardings: PyTree | None) -> PyTree:
  """The float32 params of a packed quantized workdir (train/tools/quantized.py), on `shardings`."""
  scheme = workdir_lib.read_json(os.path.join(src, 'config.json'))['quantized']['scheme']
  packed = safetensors.numpy.load_file(os.path.join(src, QUANTIZED_FILE))
  params = quantize.dequantize_tree(saved_cfg, packed, scheme)
  return jax.device_put(params, shardings) if shardings is not None else jax.device_put(params)


def is_quantized_workdir(src: str) -> bool:
  """Whether `src` is a packed quantized workdir (train.tools.compress --quantize)."""
  return not src.startswith(('hf:', PEFT)) and os.path.exists(os.path.join(src, QUANTIZED_FILE))


def held_bytes(src: str) -> int:
  """Bytes of a packed quantized workdir's compressible kernels as stored ('<name>:q' values and
  their scales): what QLoRA holds on every device (replicated) besides its params."""
  size = {'U8': 1, 'I8': 1, 'F16': 2, 'BF16': 2, 'F32': 4}  # the dtypes quantize_tree writes.
  with safetensors.safe_open(os.path.join(src, QUANTIZED_FILE), 'numpy') as f:
    slices = [f.get_slice(k) for k in f.keys() if ':' in k]  # headers only: nothing read.
    return sum(size[x.get_dtype()] * int(np.prod(x.get_shape())) for x in slices)


def load_resident(src: str) -> tuple[ModelConfig, PyTree]:
  """(ModelConfig, params) of a packed quantized workdir with its kernels kept quantized in memory
  (models/resident_quant.py: dequantized per matmul in the forward)."""
  if not is_quantized_workdir(src):
    raise ValueError(
      f'{src}: not a quantized workdir (train.tools.compress --quantize); use --resident=float'
    )
  cfg = workdir_model_config(src)
  return cfg, jax.device_put(_resident_params(src, cfg))


def _resident_params(src: str, cfg: ModelConfig) -> PyTree:
  """resident_params of quantized workdir `src` (its model config `cfg`), on the host."""
  scheme = workdir_lib.read_json(os.path.join(src, 'config.json'))['quantized']['scheme']
  packed = safetensors.numpy.load_file(os.path.join(src, QUANTIZED_FILE))
  return resident_params(cfg, packed, scheme)


def resident_params(cfg: ModelConfig, packed: dict, scheme: str) -> PyTree:
  """The params of models/quantize.py `quantize_tree`'s output `packed` (numpy) for `cfg`: the
  compressible kernels held quantized (resident_quant.Held), every other param float32."""
  out = []
  for name, s, axes in quantize.leaves(cfg, quantize.shapes(cfg)):
    if parametrization.compressible(axes):
      out.append(resident_quant.hold(packed, name, quantize.rtn.dims(axes, s.shape), scheme))
    else:
      out.append(np.asarray(packed[name], np.float32).reshape(s.shape))
  return jax.tree.unflatten(jax.tree.structure(quantize.shapes(cfg)), out)


# ------------------------------------------------------------------------ QLoRA: a quantized base


def check_quantized_base(src: str) -> None:
  """One ValueError line unless `src` (config.init_from of a QLoRA run) is a quantized workdir or
  a QLoRA workdir (its adapters trained on, on its base)."""
  ours = bool(src) and not src.startswith(('hf:', PEFT))
  if ours and os.path.exists(os.path.join(src, 'config.json')):
    if is_quantized_workdir(src) or workdir_model_config(src).lora_base_resident != 'float':
      return
  raise ValueError(
    f"config.init_from={src!r}: model.lora_base_resident='quantized' (QLoRA) trains on a "
    'quantized workdir (python -m train.tools.compress --workdir=W --out=Q --quantize=int4)'
  )


def _resident_base(src: str, cfg: ModelConfig, shardings: PyTree | None) -> PyTree:
  """QLoRA model `cfg`'s frozen base from quantized workdir `src`: the compressible kernels held
  quantized (resident_quant.Held, replicated), every other param float32 on its sharding in
  `shardings` (which may name the float kernels too: they are not used)."""
  saved_cfg = workdir_model_config(src)
  if _meaning(saved_cfg) != _meaning(cfg):
    raise ValueError(
      f'{src}: trained with parametrization/base shape/multipliers {_meaning(saved_cfg)}, the '
      f'model config has {_meaning(cfg)}; the weights would mean something else'
    )
  want = models.param_shapes(lora.base_config(cfg))
  _check_shapes(src, want, models.param_shapes(saved_cfg))
  rest, held = resident_quant.split(_resident_params(src, saved_cfg))
  if shardings is None:
    return jax.device_put(resident_quant.join(rest, held))
  flat = traverse_util.flatten_dict(shardings)
  placed = {k: jax.device_put(v, flat[k]) for k, v in traverse_util.flatten_dict(rest).items()}
  held = jax.device_put(held, _replicated(shardings))
  return resident_quant.join(traverse_util.unflatten_dict(placed), held)


def _replicated(shardings: PyTree) -> jax.sharding.Sharding:
  """A sharding that replicates over the mesh (or the device) of `shardings`' first leaf."""
  leaf = jax.tree.leaves(shardings)[0]
  return NamedSharding(leaf.mesh, PartitionSpec()) if isinstance(leaf, NamedSharding) else leaf


def _fresh_adapters(cfg: ModelConfig, base: PyTree, shardings: PyTree | None, seed: int) -> PyTree:
  """Fresh adapters of QLoRA model `cfg` on `base`: float LoRA's of `seed` (B = 0); DoRA's m made
  by the model reading the held kernels (their dequantized column norms)."""
  rest, held = resident_quant.split(base)
  tokens = jnp.zeros((1, min(cfg.max_len, 8)), jnp.int32)

  def init(key: jax.Array, rest: PyTree, held: PyTree) -> PyTree:
    adapters = lora.split(models.init(cfg.replace(lora_base_resident='float'), key))[1]
    if not cfg.lora_dora:
      return adapters
    flat = traverse_util.flatten_dict(adapters)
    ab = traverse_util.unflatten_dict({k: v for k, v in flat.items() if 'lora_m' not in k[-1]})
    variables = {'params': lora.combine(rest, ab), resident_quant.COLLECTION: held}
    _, made = models.Transformer(cfg).apply(
      variables, tokens, rngs={'params': key}, mutable=['params']
    )
    return lora.split(nn.unbox(made['params']))[1]

  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed), rest, held)


# ------------------------------------------------------------------------ LoRA bases and sources


def _is_lora_workdir(src: str) -> bool:
  return not src.startswith(('hf:', PEFT)) and bool(workdir_model_config(src).lora_rank)


def recorded_base(workdir: str) -> dict | None:
  """The `lora_base` record of a LoRA workdir's latest checkpoint (its base's source, step and
  checksums), or None (no LoRA, or a checkpoint that holds its base)."""
  mngr, step = _manager(workdir, None)
  return _record(mngr, step)


def base_record(src: str, cfg: ModelConfig) -> dict | None:
  """Where a LoRA run (`cfg`) started from `src` gets its frozen base: {'init_from': src, 'base':
  'hf:/abs/dir' or an absolute workdir, 'step': that workdir's checkpoint or None} (a LoRA
  workdir's own record, checksums included); None without LoRA or without `src`."""
  if not cfg.lora_rank or not src:
    return None
  if src.startswith(PEFT):
    base = peft_base(src)
  elif src.startswith('hf:'):
    base = 'hf:' + os.path.abspath(src[3:])
  else:
    base = os.path.abspath(src)
    saved = recorded_base(base) if _is_lora_workdir(base) else None
    if saved:  # its base, not its adapters (those are the new run's start).
      return {**saved, 'init_from': src}
  quantized = os.path.exists(os.path.join(base, QUANTIZED_FILE))
  step = None if base.startswith('hf:') or quantized else workdir_lib.latest_checkpoint_step(base)
  return {'init_from': src, 'base': base, 'step': step}


def load_base(record: dict, cfg: ModelConfig, shardings: PyTree | None, where: str) -> PyTree:
  """The frozen base of LoRA model `cfg` that `record` (base_record's) names, on `shardings`,
  verified against the record's checksums: one ValueError line naming the base, the tensor and
  `where` the record is (a checkpoint of the run) when it does not load or has changed."""
  src, step = record['base'], record.get('step')
  try:
    if cfg.lora_base_resident == 'quantized':  # QLoRA: the kernels stay quantized.
      base = _resident_base(src, cfg, shardings)
    elif _is_lora_workdir(src):  # a LoRA workdir holding its base (written before these records).
      full = _with_adapter_shardings(workdir_model_config(src), shardings)
      base = lora.split(load_params(src, None, full, step)[1])[0]
    else:
      base = load_params(src, lora.base_config(cfg), shardings, step)[1]
  except ValueError as e:
    raise ValueError(f'{where}: its LoRA base does not load: {e}') from None
  want = record.get('checksum')
  if want:
    got = checkpoint.checksum(base)
    bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    if bad:
      raise ValueError(
        f'{src}: not the LoRA base {where} was trained on: tensor {bad[0]} ({len(bad)} in all) '
        f'differs from its checksum in {where}/meta (lora_base.checksum); put that base back, '
        'or point config.init_from at a copy of it'
      )
  return base


def resume_base(
  src: str, cfg: ModelConfig, record: dict, shardings: PyTree, where: str
) -> tuple[PyTree, dict]:
  """(base, record) for a LoRA checkpoint (`where`) being resumed: its recorded base, or the one
  config.init_from (`src`) names now if that changed (a moved base), checked against the
  recorded checksums either way."""
  if src and src != record.get('init_from'):
    now = base_record(src, cfg)
    record = {**record, **{k: now[k] for k in ('init_from', 'base', 'step')}}
  return load_base(record, cfg, shardings, where), record


def _with_adapter_shardings(lora_cfg: ModelConfig, base_shardings: PyTree | None) -> PyTree | None:
  """Shardings of `lora_cfg`'s params: the base's as given, its adapters replicated (small)."""
  if base_shardings is None:
    return None
  rep = _replicated(base_shardings)
  adapters = jax.tree.map(lambda _: rep, lora.split(models.param_shapes(lora_cfg))[1])
  return lora.combine(base_shardings, adapters)


def _merged(
  src: str, lora_cfg: ModelConfig, cfg: ModelConfig, shardings: PyTree | None, step: int | None
) -> PyTree:
  """A LoRA source's (LoRA workdir, PEFT adapter) base + A·B·scale for `cfg` (no LoRA)."""
  _check_shapes(src, models.param_shapes(cfg), models.param_shapes(lora.base_config(lora_cfg)))
  full = _with_adapter_shardings(lora_cfg, shardings)
  if src.startswith(PEFT):
    params = _peft_combined(src, lora_cfg, full)
  else:
    params = _workdir_params(src, lora_cfg, full, step)
  return jax.jit(functools.partial(lora.merge, lora_cfg), out_shardings=shardings)(params)


# ------------------------------------------------------------------------ PEFT adapter directories


def _peft_config(src: str) -> dict:
  path = os.path.join(source_path(src), peft_adapter.CONFIG_FILE)
  if not os.path.exists(path):
    raise ValueError(f'{src}: no {peft_adapter.CONFIG_FILE} (not a PEFT adapter directory)')
  config = workdir_lib.read_json(path)
  if config.get('peft_type') != 'LORA':
    raise ValueError(f'{path}: peft_type {config.get("peft_type")!r}; LoRA adapters load here')
  return config


def peft_base(src: str) -> str:
  """The base model of PEFT adapter `src` as a source ('hf:/abs/dir' or our workdir): its
  base_model_name_or_path, a directory (relative: from here, else from the adapter's)."""
  path = source_path(src)
  name = _peft_config(src).get('base_model_name_or_path') or ''
  config_file = os.path.join(path, peft_adapter.CONFIG_FILE)
  if not name:
    raise ValueError(
      f'{config_file}: base_model_name_or_path is empty; set it to the base model (an HF '
      'checkpoint directory or one of our workdirs)'
    )
  name = source_path(name)
  for d in (name, os.path.join(path, name)):
    if os.path.isfile(os.path.join(d, 'config.json')):
      d = os.path.abspath(d)
      return d if 'model' in workdir_lib.read_json(os.path.join(d, 'config.json')) else f'hf:{d}'
  raise ValueError(
    f'{config_file}: base_model_name_or_path {name!r} is no directory here (an HF checkpoint or '
    'one of our workdirs); download the base and set its path there'
  )


def peft_settings(src: str, base_cfg: ModelConfig) -> dict:
  """The model.lora_* settings PEFT adapter `src` was trained with on `base_cfg` (the targets
  from the modules its weights adapt; DoRA from use_dora where the model has it)."""
  config = _peft_config(src)
  r = int(config['r'])
  settings = {
    'lora_rank': r,
    'lora_alpha': float(config.get('lora_alpha') or r),
    'lora_rslora': bool(config.get('use_rslora')),
    'lora_dora': bool(config.get('use_dora')),
    'lora_targets': _peft_targets(src, base_cfg),
  }
  return {k: v for k, v in settings.items() if k in ModelConfig.__dataclass_fields__}


def _adapted_modules(names: list) -> set:
  """HF module names of an adapter file's tensors ('...q_proj.lora_A.weight' -> '...q_proj')."""
  return {n.removeprefix(peft_adapter.PREFIX).split('.lora_')[0] for n in names}


@functools.lru_cache(maxsize=16)
def _module_targets(base_cfg: ModelConfig) -> dict:
  """{HF module: the LoRA targets exported onto it} for `base_cfg`: one export by
  peft_adapter.export_adapter of adapters on every target, target i's B all i + 1, read back."""
  names = tuple(dict.fromkeys(LORA_TARGETS.values()))
  cfg = lora.base_config(base_cfg).replace(lora_rank=1, lora_targets=names)
  axes = traverse_util.flatten_dict(models.logical_axes(cfg))

  def marked(path: tuple, shape: jax.ShapeDtypeStruct) -> np.ndarray:
    kernel = tuple(axes[path[:-1] + (str(path[-1]).rsplit('_lora_', 1)[0],)])
    i = next(
      i
      for i, t in enumerate(names)
      if parametrization.lora_target(cfg.replace(lora_targets=(t,)), kernel)
    )
    return np.full(shape.shape, i + 1.0 if str(path[-1]).endswith('_lora_b') else 1.0, np.float32)

  adapters = traverse_util.flatten_dict(lora.split(models.param_shapes(cfg))[1])
  filled = traverse_util.unflatten_dict({k: marked(k, s) for k, s in adapters.items()})
  with tempfile.TemporaryDirectory() as d:
    peft_adapter.export_adapter(cfg, filled, d)
    tensors = safetensors.numpy.load_file(os.path.join(d, peft_adapter.WEIGHTS_FILE))
  return {
    module: frozenset(names[int(v) - 1] for v in np.unique(tensors[k]) if v)
    for k in tensors
    if k.endswith('.lora_B.weight')
    for module in _adapted_modules([k])
  }


def _peft_targets(src: str, base_cfg: ModelConfig) -> tuple:
  """Our LoRA targets whose modules adapter `src` adapts; ValueError when it adapts one that no
  target here covers (it would be dropped)."""
  path = os.path.join(source_path(src), peft_adapter.WEIGHTS_FILE)
  try:
    with safetensors.safe_open(path, 'np') as f:
      have = _adapted_modules(list(f.keys()))
  except Exception as e:  # missing or torn file: safetensors raises several types.
    raise ValueError(f'{path}: does not read ({str(e)[:160]})') from None
  try:
    by_module = _module_targets(lora.base_config(base_cfg))
  except ValueError as e:
    raise ValueError(f'{src}: {e}') from None
  modules = {t: {m for m, ts in by_module.items() if t in ts} for t in LORA_TARGETS.values()}
  found = tuple(t for t, m in modules.items() if m and m <= have)
  left = sorted(have - set().union(*(modules[t] for t in found)))
  if left:
    raise ValueError(f'{path}: adapts {left[0]}, which no LoRA target here covers')
  return found


def _adapter_paths(cfg: ModelConfig) -> set:
  return set(traverse_util.flatten_dict(lora.split(models.param_shapes(cfg))[1]))


def check_peft_config(src: str, cfg: ModelConfig) -> None:
  """ValueError naming the field when `cfg`'s LoRA settings build other adapters, or another
  update scale, than PEFT adapter `src` (its adapter_config.json) has."""
  path = os.path.join(source_path(src), peft_adapter.CONFIG_FILE)
  settings = peft_settings(src, lora.base_config(cfg))
  theirs = cfg.replace(**settings)
  for key in ('lora_rank', 'lora_dora'):
    if key in settings and getattr(cfg, key) != settings[key]:
      raise ValueError(
        f'config.model.{key}={getattr(cfg, key)}, but {path} has {settings[key]}: set '
        f'config.model.{key}={settings[key]}'
      )
  if _adapter_paths(cfg) != _adapter_paths(theirs):
    raise ValueError(
      f'config.model.lora_targets={tuple(cfg.lora_targets)}, but the modules {path} adapts '
      f'are {theirs.lora_targets}: set config.model.lora_targets={theirs.lora_targets}'
    )
  ours, want = parametrization.lora_scale(cfg), parametrization.lora_scale(theirs)
  if not np.isclose(ours, want, rtol=1e-6):
    raise ValueError(
      f'config.model.lora_alpha={cfg.lora_alpha}, lora_rslora={cfg.lora_rslora} scale the update '
      f'by {ours:.4g}, {path} (lora_alpha={theirs.lora_alpha}, use_rslora={theirs.lora_rslora}) '
      f'by {want:.4g}: set config.model.lora_alpha={theirs.lora_alpha}, '
      f'lora_rslora={theirs.lora_rslora}'
    )


def _peft_adapters(src: str, cfg: ModelConfig, shardings: PyTree | None) -> PyTree:
  """PEFT adapter `src` as our adapter params for `cfg` (checked: check_peft_config)."""
  check_peft_config(src, cfg)
  adapters = peft_adapter.import_adapter(source_path(src), cfg)
  return jax.device_put(adapters, shardings) if shardings is not None else jax.device_put(adapters)


def _peft_combined(src: str, cfg: ModelConfig, shardings: PyTree | None) -> PyTree:
  """PEFT adapter `src`'s base + adapters as the params of LoRA model `cfg`."""
  base_sh, adapter_sh = lora.split(shardings) if shardings is not None else (None, None)
  _, base = load_params(peft_base(src), lora.base_config(cfg), base_sh)
  return lora.combine(base, _peft_adapters(src, cfg, adapter_sh))


def _peft_params(
  src: str, model_config: ModelConfig | None, shardings: PyTree | None
) -> tuple[ModelConfig, PyTree]:
  """load_params of 'peft:/dir': base + adapters, or merged for a config without LoRA."""
  lora_cfg = source_model_config(src)
  cfg = model_config if model_config is not None else lora_cfg
  if not cfg.lora_rank:
    return cfg, _merged(src, lora_cfg, cfg, shardings, None)
  return cfg, _peft_combined(src, cfg, shardings)


# ------------------------------------------------------------------------ config.init_from


def params_fn(config: ml_collections.ConfigDict) -> Callable[['Run'], PyTree] | None:
  """None for random init, else Run -> params from `config.init_from` on the run's shardings.
  With LoRA: the base from the source (base_record / load_base) and the adapters a PEFT adapter
  or a LoRA workdir trained (trained on), else fresh (B = 0: the base's function)."""
  src = config.init_from
  if not src:
    return None

  def load(run: 'Run') -> PyTree:
    cfg, shardings = run.derived.model, run.state_shardings.params
    if not cfg.lora_rank:
      params = load_params(src, cfg, shardings)[1]
      logging.info('%s', loaded_line(src, params))
      return params
    base_shardings, adapter_shardings = lora.split(shardings)
    adapters = _trained_adapters(src, cfg, adapter_shardings)  # (settings checked first)
    base = load_base(base_record(src, cfg), cfg, base_shardings, f'init_from={src}')
    if adapters is not None:
      logging.info('%s', loaded_line(src, lora.combine(base, adapters)))
      return lora.combine(base, adapters)
    if cfg.lora_base_resident == 'quantized':
      adapters = _fresh_adapters(cfg, base, adapter_shardings, config.seed)
      logging.info('%s', loaded_line(src, base, adapters, 'LoRA adapters'))
      return lora.combine(base, adapters)
    init_adapters = jax.jit(
      lambda key: lora.split(models.init(cfg, key))[1], out_shardings=adapter_shardings
    )
    adapters = init_adapters(jax.random.key(config.seed))
    logging.info('%s', loaded_line(src, base, adapters, 'LoRA adapters'))
    return lora.init_magnitudes(cfg, lora.combine(base, adapters))  # DoRA's m: the base's norms.

  return load


def _trained_adapters(src: str, cfg: ModelConfig, shardings: PyTree) -> PyTree | None:
  """The adapters a LoRA source (PEFT adapter, LoRA workdir) holds, to train on; None for a
  source without adapters. Its LoRA settings must be `cfg`'s (ValueError naming the field)."""
  if src.startswith(PEFT):
    return _peft_adapters(src, cfg, shardings)
  if not _is_lora_workdir(src):
    return None
  saved = workdir_model_config(src)
  shapes = lora.split(models.param_shapes(saved))[1]
  same = _flat_shapes(shapes) == _flat_shapes(lora.split(models.param_shapes(cfg))[1])
  if not same or parametrization.lora_scale(saved) != parametrization.lora_scale(cfg):
    raise ValueError(
      f'{src}: its adapters are rank {saved.lora_rank} on {tuple(saved.lora_targets)} (alpha '
      f'{saved.lora_alpha}, rslora {saved.lora_rslora}); set config.model.lora_rank, lora_targets, '
      'lora_alpha and lora_rslora as there to train them on, or lora_rank=0 for its merged model'
    )
  mngr, step = _manager(src, None)
  return _restore(src, mngr, step, shapes, shardings)


def _size(tree: PyTree) -> tuple[int, int]:
  leaves = jax.tree.leaves(tree, is_leaf=resident_quant.is_held)
  return int(sum(map(resident_quant.values, leaves))), len(leaves)


def source_step(src: str) -> str:
  """Where in its source's life `src`'s weights come from, in words (e.g. 'checkpoint step 400')."""
  if src.startswith('hf:'):
    return 'HF checkpoint'
  if src.startswith(PEFT):
    return f'PEFT adapter on {peft_base(src)}, {source_step(peft_base(src))}'
  if os.path.exists(os.path.join(src, QUANTIZED_FILE)):
    quantized = workdir_lib.read_json(os.path.join(src, 'config.json')).get('quantized', {})
    return f'{quantized.get("scheme", "?")}-quantized workdir'
  step = workdir_lib.latest_checkpoint_step(src)
  return f'checkpoint step {step}' if step is not None else 'no checkpoint'


def loaded_line(src: str, loaded: PyTree, left: PyTree | None = None, left_what: str = '') -> str:
  """The one line init_from logs: the source, its step, the params loaded and those left at init."""
  n, k = _size(loaded)
  line = f'init_from: loaded {n:,} params ({k} tensors) from {src} ({source_step(src)})'
  if left is not None:
    n_left, k_left = _size(left)
    line += f'; left at init: {n_left:,} params ({k_left} tensors) of the {left_what}'
  return line
