"""Packed quantized workdirs (issue 26): a workdir's compressible kernels rounded to int8 / int4 /
int3 / fp8 (models/quantize.py: RTN, GPTQ or AWQ), written as OUT/config.json +
OUT/quantized.safetensors.

config.json is the source's, its model section unchanged, plus "quantized": {scheme, group,
source, method}. Every loader reads such a workdir through `init_from.load_params` (dequantized to
float32): init_from, train.tools.export, train.tools.sample, train.tools.harness, distillation
teachers.
"""

import os

import jax
import numpy as np
import safetensors.numpy

from models import act_quant, calibrated_quant, quantize
from models.config import ModelConfig, PyTree
from train import init_from
from train import workdir as workdir_lib


def write(
  out: str,
  config: dict,
  cfg: ModelConfig,
  params: PyTree,
  scheme: str,
  group: int,
  source: str,
  method: str = 'rtn',
  stats: dict | None = None,
  act: dict | None = None,
) -> dict:
  """Quantize `params` (model `cfg`, from `source`; by `method`, GPTQ / AWQ from calibration
  `stats`) into the new workdir `out`, beside the run `config` (a dict, its model section `cfg`'s);
  returns {'bytes_quantized': the safetensors file's size, 'bytes_float32': the same params' size
  in float32}. With `act` ({'quant', 'scale', 'smooth'}) the dense inputs are quantized too
  (W8A8, models/act_quant.py): the model section gets its act_* fields, the params their frozen
  static scales / SmoothQuant factors (float32 entries of the same file)."""
  path = os.path.join(out, init_from.QUANTIZED_FILE)
  if os.path.exists(path):
    raise ValueError(f'{out}: already holds {init_from.QUANTIZED_FILE}; choose a new --out')
  quantize.check(cfg, scheme, group)
  params = jax.device_get(params)
  kernels = None
  if method != 'rtn':
    kernels = calibrated_quant.quantize_kernels(cfg, params, scheme, group, method, stats or {})
  quant = {'scheme': scheme, 'group': group, 'source': source, 'method': method}
  if act:  # W8A8: the model's activation quantization and its frozen params.
    cfg, params, kernels = calibrated_quant.w8a8(cfg, params, scheme, group, act, stats, kernels)
    config = {**config, 'model': {**config['model'], **act_quant.fields(cfg)}}
    quant.update(activations=act['quant'], act_scale=act['scale'], smooth=act['smooth'])
  packed = quantize.quantize_tree(cfg, params, scheme, group, kernels=kernels)
  config = {**config, 'quantized': quant}
  os.makedirs(out, exist_ok=True)
  safetensors.numpy.save_file(packed, path + '.tmp', metadata={'scheme': scheme})
  os.replace(path + '.tmp', path)
  workdir_lib.write_json(os.path.join(out, 'config.json'), config)
  float_bytes = sum(4 * np.size(x) for x in jax.tree.leaves(params))
  return {'bytes_quantized': os.path.getsize(path), 'bytes_float32': int(float_bytes)}


def read(src: str) -> tuple[ModelConfig, PyTree]:
  """(ModelConfig, float32 params) of a packed quantized workdir."""
  if not os.path.exists(os.path.join(src, init_from.QUANTIZED_FILE)):
    raise ValueError(f'{src}: no {init_from.QUANTIZED_FILE} (not a quantized workdir)')
  return init_from.load_params(src)
