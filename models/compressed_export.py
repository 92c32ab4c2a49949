"""compressed-tensors exports: the `quantization_config` and tensors that transformers (with the
compressed-tensors package) and vLLM load, written with numpy + safetensors in the layout of
compressed-tensors 0.20.1, from our packed quantized params (train/tools/quantized.py) as they are.

int8 / int4 / int3 kernels are 'pack-quantized': `weight_packed` int32 [out, ceil(in * bits / 32)]
(each value + 2^(bits-1) as unsigned bits, packed densely from the lowest bit of a row's first
word, as compressed-tensors' pack_to_int32), `weight_scale` float32 [out, in / group] (1 column
per channel), `weight_shape` int64 [out, in]; symmetric, so no zero point. fp8 kernels are
'naive-quantized': `weight` float8_e4m3fn and `weight_scale`. compressed-tensors dequantizes value
* scale, as qwix does, so the loaded weights are our dequantized ones. A model whose quantized
kernels keep at most 2 of every 4 weights along their fan-in (in_features) is marked 2:4 in
`sparsity_config` (format 'dense': compressed-tensors 0.20 dropped its sparse-24-bitmask
compressor, and transformers ignores the marking; vLLM reads it).

compressed-tensors compresses nn.Linear (and nn.Embedding) only: GPT-2's Conv1D projections are
refused, and so are AWQ's per-fan-in scales (weights deq(q) / s), which the format has no field for.
"""

import re

import jax
import numpy as np

from models import hf, parametrization, quantize, rtn
from models.config import ModelConfig, PyTree

VERSION = '0.20.1'  # the compressed-tensors release whose layout this writes.
PACKED, NAIVE = 'pack-quantized', 'naive-quantized'
FORMATS = {'int8': PACKED, 'int4': PACKED, 'int3': PACKED, 'fp8': NAIVE}
BITS = {'int8': 8, 'int4': 4, 'int3': 3, 'fp8': 8}


def check(cfg: ModelConfig, scheme: str | None, method: str = 'rtn') -> None:
  """One-line ValueError for what the format cannot hold: a GPT-2 (Conv1D), AWQ scales, or a
  scheme it has no format for (`scheme` None: a float model, only marked)."""
  if cfg.positions == 'learned':
    raise ValueError(
      '--format=compressed-tensors: GPT-2 keeps its projections in Conv1D layers, which '
      'compressed-tensors does not quantize (nn.Linear only); export with --format=dense'
    )
  if scheme is not None and scheme not in FORMATS:
    raise ValueError(f'--format=compressed-tensors: no format for {scheme!r} (has {list(FORMATS)})')
  if method == 'awq':
    raise ValueError(
      '--format=compressed-tensors: AWQ kernels dequantize as deq(q) / s with a scale s per '
      'fan-in entry, which compressed-tensors has no field for; export with --format=dense, '
      'or quantize with --method=rtn or gptq'
    )


def pack_int32(v_OxI: np.ndarray, bits: int) -> np.ndarray:
  """compressed-tensors' pack_to_int32 of int values [O, I] (-2^(bits-1)..2^(bits-1)-1): value i of
  a row at bits i*bits.. of the row's words (little-endian), [O, ceil(I * bits / 32)] int32."""
  o, i = v_OxI.shape
  u = (v_OxI.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
  bits_OxIxB = np.unpackbits(u[..., None], axis=-1, bitorder='little')[..., :bits]
  flat = bits_OxIxB.reshape(o, i * bits)
  flat = np.pad(flat, ((0, 0), (0, -(i * bits) % 32)))
  words = np.packbits(flat, axis=-1, bitorder='little').view('<u4')
  return np.ascontiguousarray(words.view(np.int32))


def _kernel_trees(cfg: ModelConfig, packed: dict, scheme: str, dense: PyTree) -> tuple:
  """(values, scales): `dense` with each compressible kernel replaced by its quantized values, or
  by its scales repeated over their group, both in the kernel's own shape."""
  values, scales = [], []
  for name, x, axes in quantize.leaves(cfg, dense):
    if not parametrization.compressible(axes):
      values.append(np.asarray(x, np.float32))
      scales.append(values[-1])
      continue
    n, i, o = rtn.dims(axes, x.shape)
    v = np.asarray(rtn.decode(packed[name + ':q'], scheme, (n, i, o)))
    values.append((v if scheme == 'fp8' else v.astype(np.int8)).reshape(x.shape))
    s = np.asarray(packed[name + ':scale'], np.float32)
    scales.append(np.repeat(s, i // s.shape[1], axis=1).reshape(x.shape))
  tree = lambda leaves: jax.tree.unflatten(jax.tree.structure(dense), leaves)
  return tree(values), tree(scales)


def quantized_tensors(
  cfg: ModelConfig, packed: dict, scheme: str, group: int, dense: PyTree, keys: list[str]
) -> dict:
  """{HF name: array} of the quantized kernels in `packed` (quantize.quantize_tree's, of the model
  `cfg` whose dequantized params are `dense`; HF weight names `keys`), in the compressed-tensors
  layout (module doc)."""
  trees = _kernel_trees(cfg, packed, scheme, dense)
  values, scales = (hf.hf_tensors(cfg, t, None) for t in trees)
  out = {}
  for key in keys:
    v_OxI, s_OxI = values[key], scales[key]
    width = group or v_OxI.shape[1]
    s_OxG = np.ascontiguousarray(s_OxI[:, ::width])
    if not np.array_equal(np.repeat(s_OxG, width, axis=1), s_OxI):  # a layout not [out, in].
      raise ValueError(f'{key}: its HF layout does not put the fan-in last ([out, in])')
    module = key.rsplit('.', 1)[0]
    out[module + '.weight_scale'] = s_OxG
    if scheme == 'fp8':
      out[module + '.weight'] = v_OxI
    else:
      out[module + '.weight_packed'] = pack_int32(v_OxI, BITS[scheme])
      out[module + '.weight_shape'] = np.asarray(v_OxI.shape, np.int64)
  return out


def two_four(tensors: dict, modules: list[str]) -> float | None:
  """The fraction of zeros over the `modules`' weights when each keeps at most 2 of every 4 along
  in_features (the 2:4 that sparse tensor cores use), else None."""
  zeros = total = 0
  for m in modules:
    w = tensors[m + '.weight']
    if w.shape[1] % 4 or np.any((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) > 2):
      return None
    zeros, total = zeros + int(np.sum(w == 0)), total + w.size
  return zeros / total


def targets(modules: list[str]) -> list[str]:
  """The modules as compressed-tensors targets: one regex per module name, its layer generalized."""
  return sorted({'re:' + re.sub(r'\\\.\d+\\\.', r'\.\\d+\.', re.escape(m)) + '$' for m in modules})


def config(scheme: str | None, group: int, modules: list[str], sparsity: float | None) -> dict:
  """The `quantization_config` for config.json: weight-only symmetric `scheme` (None: float
  weights) on `modules`, per `group` fan-in entries (0: per channel), 2:4 marked when `sparsity`."""
  out = {'quant_method': 'compressed-tensors', 'version': VERSION, 'format': 'dense'}
  out.update(quantization_status='compressed', ignore=[], sparsity_config={}, config_groups={})
  if scheme is not None:
    weights = {'num_bits': BITS[scheme], 'type': 'float' if scheme == 'fp8' else 'int'}
    weights.update(symmetric=True, dynamic=False, strategy='group' if group else 'channel')
    weights['group_size'] = group or None
    out['format'] = FORMATS[scheme]
    out['config_groups'] = {
      'group_0': {
        'targets': targets(modules),
        'weights': weights,
        'input_activations': None,
        'output_activations': None,
        'format': FORMATS[scheme],
      }
    }
  if sparsity is not None:
    out['sparsity_config'] = {
      'format': 'dense',
      'sparsity_structure': '2:4',
      'global_sparsity': round(sparsity, 6),
      'targets': targets(modules),
      'ignore': [],
    }
  return out


def export(
  cfg: ModelConfig,
  params: PyTree,
  path: str,
  token_ids: dict[str, int] | None = None,
  quantized: tuple[dict, str, int] | None = None,
) -> dict:
  """Write the compressed-tensors HF checkpoint of the model `cfg` with (dequantized) `params` to
  `path`; `quantized`: (packed params, scheme, group) of a packed quantized workdir. Returns its
  quantization_config; ValueError when there is nothing to mark (float weights, not 2:4)."""
  scheme, group = (quantized[1], quantized[2]) if quantized else (None, 0)
  check(cfg, scheme)
  dense = jax.device_get(params)
  keys = _compressible_keys(cfg, dense)
  stored = quantized_tensors(cfg, quantized[0], scheme, group, dense, keys) if quantized else {}
  modules = sorted(k.rsplit('.', 1)[0] for k in keys)
  sparsity = two_four(hf.hf_tensors(cfg, dense), modules)
  if not quantized and sparsity is None:
    raise ValueError(
      '--format=compressed-tensors: the model is neither quantized (train.tools.compress --quantize) '
      'nor 2:4 sparse, so there is nothing to mark; export with --format=dense'
    )
  qc = config(scheme, group, modules, sparsity)
  hf.export_checkpoint(cfg, dense, path, token_ids, (qc, stored))
  return qc


def _compressible_keys(cfg: ModelConfig, dense: PyTree) -> list[str]:
  """The HF weight names of the compressible kernels of `dense` (model `cfg`)."""
  flags = [
    np.ones(x.shape, np.int8) if parametrization.compressible(axes) else x
    for _, x, axes in quantize.leaves(cfg, dense)
  ]
  tree = jax.tree.unflatten(jax.tree.structure(dense), flags)
  return [k for k, v in hf.hf_tensors(cfg, tree, None).items() if v.dtype == np.int8]
