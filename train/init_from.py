"""Loading weights to start from: `config.init_from` ('hf:/dir' or one of our workdirs).

Also used by the distillation trainer to load teachers. Params are placed straight onto
the given shardings; a shape mismatch with the target model config names the tensor. A run
started from `config.init_from` logs one line: the source, its checkpoint step, the params loaded
and any left at init (a LoRA run's adapters).
"""

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import ml_collections
import orbax.checkpoint as ocp
import safetensors.numpy

import models
from models import hf, lora, parametrization, quantize
from models.config import ModelConfig, PyTree
from train import checkpoint
from train import workdir as workdir_lib

if TYPE_CHECKING:
  from train.context import Run


def workdir_model_config(workdir: str) -> models.ModelConfig:
  """The model config a workdir of ours was trained with (from its saved config.json)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'{workdir!r} is neither hf:/path nor a workdir of ours (no config.json)')
  model = dict(workdir_lib.read_json(path)['model'])
  model.setdefault('mup_output_mult', 1.0)  # saved before the key existed: α_out was 1.
  return models.ModelConfig.make(model)


def source_model_config(src: str) -> models.ModelConfig:
  """The model config of `src` ('hf:/dir' or our workdir) from its config.json alone."""
  if not src.startswith('hf:'):
    return workdir_model_config(src)
  if not os.path.exists(os.path.join(src[3:], 'config.json')):
    raise ValueError(f'{src}: no config.json in {src[3:]} (not an HF checkpoint directory)')
  return hf.read_config(src[3:])


def source_tokenizer(src: str) -> str:
  """The tokenizer a source was trained with: our run's data.tokenizer, or the hf: dir itself."""
  if src.startswith('hf:'):
    path = src[3:]
    files = ('tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'tokenizer.model')
    if any(os.path.exists(os.path.join(path, f)) for f in files):
      return path
    raise ValueError(
      f'{src}: no tokenizer files in {path}; pass --tokenizer=byte or a tokenizer directory'
    )
  path = os.path.join(src, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'{src!r} is neither hf:/path nor a workdir of ours (no config.json)')
  return workdir_lib.read_json(path)['data']['tokenizer']


def _check_shapes(src: str, expected: PyTree, found: PyTree) -> None:
  """ValueError naming the first tensor whose presence or shape differs."""
  flat = lambda tree: {
    jax.tree_util.keystr(p): tuple(x.shape)
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  want, have = flat(expected), flat(found)
  for key in sorted(set(want) | set(have)):
    if want.get(key) != have.get(key):
      raise ValueError(
        f'{src}: tensor {key} has shape {have.get(key, "(missing)")} but the '
        f'model config expects {want.get(key, "(none)")}'
      )


QUANTIZED_FILE = 'quantized.safetensors'  # a packed quantized workdir's params (train/quantized.py)

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
  src: str, model_config: models.ModelConfig | None = None, shardings: PyTree | None = None
) -> tuple[models.ModelConfig, PyTree]:
  """(ModelConfig, params) from 'hf:/dir', our workdir's latest checkpoint, or a packed quantized
  workdir of train/quantized.py (dequantized to float32).

  With `model_config`, the checkpoint must fit it (ValueError naming the tensor otherwise);
  with `shardings` (NamedShardings matching the params) arrays land sharded.
  """
  if src.startswith('hf:'):
    return hf.import_checkpoint(src[3:], model_config=model_config, shardings=shardings)
  saved_cfg = workdir_model_config(src)
  cfg = model_config if model_config is not None else saved_cfg
  if _meaning(saved_cfg) != _meaning(cfg):
    raise ValueError(
      f'{src}: trained with parametrization/base shape/multipliers {_meaning(saved_cfg)}, the '
      f'model config has {_meaning(cfg)}; the weights would mean something else'
    )
  saved = models.param_shapes(saved_cfg)
  _check_shapes(src, models.param_shapes(cfg), saved)
  if os.path.exists(os.path.join(src, QUANTIZED_FILE)):  # train/quantized.py's packed workdir.
    return cfg, _dequantized(src, saved_cfg, shardings)
  mngr = ocp.CheckpointManager(
    os.path.join(os.path.abspath(src), 'checkpoints'), item_names=('state', 'meta')
  )
  step = mngr.latest_step()
  if step is None:
    raise ValueError(f'{src}: no checkpoint under {src}/checkpoints')
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, saved)
  target = {
    'params': jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), saved, shardings
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
    _check_written_shapes(src, mngr.directory, step, saved)  # or intact arrays of another model
  if problem:
    raise ValueError(
      f'{src}: checkpoint {step} is corrupt ({problem}); resume that run once '
      'to set it aside and fall back to its previous checkpoint'
    ) from None
  return cfg, out['state']['params']


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
  """The float32 params of a packed quantized workdir (train/quantized.py), on `shardings`."""
  scheme = workdir_lib.read_json(os.path.join(src, 'config.json'))['quantized']['scheme']
  packed = safetensors.numpy.load_file(os.path.join(src, QUANTIZED_FILE))
  params = quantize.dequantize_tree(saved_cfg, packed, scheme)
  return jax.device_put(params, shardings) if shardings is not None else jax.device_put(params)


def params_fn(config: ml_collections.ConfigDict) -> Callable[['Run'], PyTree] | None:
  """None for random init, else Run -> params from `config.init_from` on the run's shardings."""
  src = config.init_from
  if not src:
    return None

  def load(run: 'Run') -> PyTree:
    cfg = run.derived.model
    if not cfg.lora_rank:
      params = load_params(src, cfg, run.state_shardings.params)[1]
      logging.info('%s', loaded_line(src, params))
      return params
    # LoRA: the base from the source; the adapters as initialised (B = 0: the base's function).
    base_shardings, adapter_shardings = lora.split(run.state_shardings.params)
    _, base = load_params(src, lora.base_config(cfg), base_shardings)
    init_adapters = jax.jit(
      lambda key: lora.split(models.init(cfg, key))[1], out_shardings=adapter_shardings
    )
    adapters = init_adapters(jax.random.key(config.seed))
    logging.info('%s', loaded_line(src, base, adapters, 'LoRA adapters'))
    return lora.combine(base, adapters)

  return load


def _size(tree: PyTree) -> tuple[int, int]:
  leaves = jax.tree.leaves(tree)
  return int(sum(x.size for x in leaves)), len(leaves)


def source_step(src: str) -> str:
  """Where in its source's life `src`'s weights come from, in words (e.g. 'checkpoint step 400')."""
  if src.startswith('hf:'):
    return 'HF checkpoint'
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
