"""Compress a trained model (one of our workdirs or an `hf:/dir` checkpoint): structured pruning,
one-shot sparsity or weight quantization, written as a new workdir of ours that every loader
accepts (init_from, distillation, export, sampling, lm-eval); a few lines summarise it (params,
size and eval loss before -> after) and the full record is kept in OUT/compress.json; the last
line printed is that record as JSON, without its per-unit importance, kept and block lists.

  python -m train.tools.compress --workdir=W --out=W2 --prune=layers:2           # depth
  python -m train.tools.compress --workdir=W --out=W2 --prune=heads:4,mlp:224    # width
  python -m train.tools.compress --workdir=W --out=W2 --prune=layers:3,mlp:224 --keep=layers:0 \
      --keep=mlp:0-15 --importance=scores.json
  python -m train.tools.compress --workdir=W --out=W2 --prune=layers:4 --depth=block
  python -m train.tools.compress --workdir=W --out=W2 --sparsity=0.5 --scope=layer
  python -m train.tools.compress --workdir=W --out=W2 --sparsity=0.5 --pattern=2:4
  python -m train.tools.compress --workdir=W --out=W2 --quantize=int4 --group=64
  python -m train.tools.compress --workdir=W --out=W2 --quantize=int4 --method=gptq   # or awq
  python -m train.tools.compress --workdir=W --out=W2 --quantize=int8 --activations=int8 --smooth=0.5
  python -m train.tools.compress --workdir=hf:/path/to/llama --out=W2 --prune=layers:12 \
      --config=configs/default.py --config.data.seq_len=1024

--prune names target sizes (layers, heads: query heads in whole kv groups, mlp, embed); the units
kept are the most important on --calib_batches training batches (models/pruning.py: Minitron's
activation importance for heads, neurons and channels; the loss increase of dropping each layer
for depth). Recover a pruned model by distillation from W (configs/recover.py). Every target
is checked against W's config.json (an hf: directory's config.json) before any weight is loaded.

Steering: --keep=AXIS:INDICES (repeatable, or 'layers:0,1;heads:0,3'; ranges as 0-15) forces
units of an axis --prune cuts to stay, the rest chosen by importance up to its size (as many as
its size: exactly those; a query head keeps its whole kv group); --importance=FILE replaces the
computed importances ({axis: [one score per unit]}, or a compress.json's); --depth=block drops one
contiguous block of layers, the one whose removal raises the calibration loss least (Minitron).
Sizes are one per axis for all layers (the layer scan stacks them): per-layer sizes are refused.

W8A8: --activations=int8|fp8 quantizes the input of every quantized kernel too (models/
act_quant.py), with --act_scale=static (default: one absmax per kernel and layer from
--calib_batches training batches, stored with the weights), token or tensor (dynamic, per token or
per input); --smooth=α (SmoothQuant, e.g. 0.5; RTN weights) first moves the inputs' outlier
channels into the weights.

Calibration and evaluation data, and OUT/config.json apart from its model, come from a run
config: W's own config.json, or --config (a config file with overrides, e.g. another data mix);
for an hf: source --config defaults to configs/default.py with the hf: directory's tokenizer
(--tokenizer=byte or a tokenizer directory where it has none).
"""

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from models import act_quant, calibrated_quant, pruning, sparsity
from models import quantize as quantize_lib
from models.config import ModelConfig, PyTree
from train import checkpoint, cli, context, evaluators, init_from, sharding, validation
from train import workdir as workdir_lib
from train.tools import quantized

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'one of our trained workdirs, or hf:/dir', flag_values=FLAGS)
flags.DEFINE_string(
  'out', None, 'the new workdir (absent or empty; written whole, then renamed)', flag_values=FLAGS
)
flags.DEFINE_string('prune', '', 'target sizes, e.g. layers:2,heads:4,mlp:224', flag_values=FLAGS)
flags.DEFINE_multi_string(
  'keep', [], 'units that stay, AXIS:INDICES, e.g. layers:0,1 or mlp:0-15 (repeatable)',
  flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_string(
  'importance', '', 'JSON {axis: [score per unit]} replacing the computed', flag_values=FLAGS
)
flags.DEFINE_enum(
  'depth', 'layer', ['layer', 'block'], 'drop the least important layers, or the best contiguous '
  'block by loss', flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_float('sparsity', 0.0, 'fraction of compressible weights zeroed', flag_values=FLAGS)
flags.DEFINE_string('pattern', 'unstructured', "'unstructured' or 'N:M' (2:4)", flag_values=FLAGS)
flags.DEFINE_enum('scope', 'global', ['global', 'layer'], 'magnitude ranking', flag_values=FLAGS)
flags.DEFINE_string('quantize', '', 'int8 | int4 | int3 | fp8 | nf4', flag_values=FLAGS)
flags.DEFINE_enum(
  'method', 'rtn', ['rtn', 'gptq', 'awq'], 'round to nearest, or calibrated on --calib_batches '
  '(GPTQ, AWQ: integer schemes)', flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_integer(
  'group', 0, 'quantization group along fan-in (0: per channel)', flag_values=FLAGS
)
flags.DEFINE_string(
  'activations', '', "with --quantize: the dense layers' inputs too, int8 | fp8", flag_values=FLAGS
)
flags.DEFINE_string(
  'act_scale', '', '--activations: static (calibrated; the default) | token | tensor (dynamic)',
  flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_float(
  'smooth', 0.0, '--activations: SmoothQuant alpha in (0, 1], e.g. 0.5 (0: off)', flag_values=FLAGS
)
flags.DEFINE_integer(
  'calib_batches', 8, 'training batches for importance and GPTQ / AWQ', flag_values=FLAGS
)
flags.DEFINE_integer('eval_batches', 0, 'eval batches (0: the run config)', flag_values=FLAGS)
flags.DEFINE_string(
  'tokenizer',
  '',
  "hf: sources: 'byte' or a tokenizer dir (default: the hf: dir's own)",
  flag_values=FLAGS,
)
_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  "run config for data and OUT's config.json (default: the source's; module doc)",
  flag_values=FLAGS,
)
flags.DEFINE_bool('debug', False, 'show tracebacks', flag_values=FLAGS)
flags.mark_flags_as_required(['workdir', 'out'], flag_values=FLAGS)


_PER_LAYER = (
  'per-layer sizes are not expressible: the layer scan stacks the layers, so each axis has one '
  'size for all of them'
)


def parse_shape(text: str) -> dict[str, int]:
  """'layers:2,mlp:224' -> {'layers': 2, 'mlp': 224} (one-line error naming a bad item)."""
  shape = {}
  for item in filter(None, text.split(',')):
    axis, _, n = item.partition(':')
    if item.strip().isdigit() or any(c in n for c in '/[') or axis.strip() in shape:
      raise ValueError(f'--prune={text}: {_PER_LAYER}')
    if not n.isdigit():
      raise ValueError(f'--prune: {item!r} is not axis:size (e.g. layers:2,mlp:224)')
    shape[axis.strip()] = int(n)
  return shape


def parse_keep(text: str) -> dict[str, list[int]]:
  """'layers:0,1;mlp:0-15' -> {'layers': [0, 1], 'mlp': [0, ..., 15]} (one-line error)."""
  keep = {}
  for item in filter(None, (t.strip() for t in text.split(';'))):
    axis, _, idx = item.partition(':')
    got = []
    for part in filter(None, (p.strip() for p in idx.split(','))):
      lo, dash, hi = part.partition('-')
      if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)):
        raise ValueError(f'--keep: {item!r} is not AXIS:INDICES (e.g. layers:0,1 or mlp:0-15)')
      got += range(int(lo), int(hi if dash else lo) + 1)
    if not got:
      raise ValueError(f'--keep: {item!r} names no units (e.g. layers:0,1 or mlp:0-15)')
    keep.setdefault(axis.strip(), []).extend(got)
  return keep


def read_importance(path: str, cfg: ModelConfig) -> dict:
  """--importance's scores, checked against the model (one line naming the flag): a JSON object
  {axis: [one score per unit]}, or a compress.json (its 'importance'; 'blocks' are not reused)."""
  try:
    with open(path) as f:
      scores = json.load(f)
  except OSError as e:
    raise ValueError(f'--importance={path}: {e.strerror}') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'--importance={path}: not JSON ({e.msg}, line {e.lineno})') from None
  if isinstance(scores, dict) and isinstance(scores.get('importance'), dict):
    scores = {k: v for k, v in scores['importance'].items() if k != 'blocks'}
  if not isinstance(scores, dict) or not scores:
    raise ValueError(f'--importance={path}: not an object {{axis: [one score per unit]}}')
  return pruning.given_importance(cfg, scores)


def check_prune(cfg: ModelConfig, what: dict) -> dict:
  """The steered target of --prune / --keep / --importance / --depth (module doc), each checked
  against the model config (one line naming the flag); nothing loaded."""
  forced, depth = parse_keep(what.get('keep', '')), what.get('depth', 'layer')
  shape = parse_shape(what['prune'])
  pruning.check(cfg, shape)
  pruning.check_forced(cfg, shape, forced, depth)
  given = read_importance(what['importance_file'], cfg) if what.get('importance_file') else {}
  if depth == 'block' and 'layers' in given:
    raise ValueError('--importance: layers scores with --depth=block (blocks are scored by loss)')
  return {'shape': shape, 'forced': forced, 'depth': depth, 'given': given}


def check(src: str, out: str, what: dict) -> ModelConfig:
  """The source's model config, once every target in `what` fits it (nothing loaded yet)."""
  steer = what.get('keep') or what.get('importance_file') or what.get('depth', 'layer') != 'layer'
  if steer and not what['prune']:
    raise ValueError('--keep, --importance and --depth steer --prune: give --prune too')
  if what.get('activations') and not what['quantize']:
    raise ValueError(
      f'--activations={what["activations"]} quantizes the inputs of quantized kernels: give '
      f'--quantize too (W8A8: --quantize={what["activations"]})'
    )
  if sum(bool(what[k]) for k in ('prune', 'sparsity', 'quantize')) != 1:
    raise ValueError('give exactly one of --prune, --sparsity, --quantize')
  cfg = init_from.source_model_config(src)
  if os.path.abspath(out) == os.path.abspath(src.removeprefix('hf:')):
    raise ValueError('--out is --workdir: the source is never overwritten')
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f'--out={out} is a file; choose a new --out')
  if os.path.isdir(out) and os.listdir(out) and not _finished(out):
    held = ', '.join(sorted(os.listdir(out))[:3])
    raise ValueError(f'--out={out} is not empty (holds {held}); choose a new or empty --out')
  if what['prune']:
    check_prune(cfg, what)
  if what['sparsity']:
    if not 0 < what['sparsity'] < 1:
      raise ValueError(f'--sparsity={what["sparsity"]}: must be in (0, 1)')
    nm = sparsity.parse_pattern(what['pattern'])
    if nm:  # N:M fixes the sparsity, and M must divide every pruned kernel's fan-in.
      n, m = nm
      if abs(what['sparsity'] - (1 - n / m)) > 1e-9:
        raise ValueError(
          f'--sparsity={what["sparsity"]} with --pattern={what["pattern"]}: that pattern keeps '
          f'{n} of {m} weights (--sparsity={1 - n / m:g})'
        )
      bad = sorted({f for f in quantize_lib.fan_ins(cfg).values() if f % m})
      if bad:
        raise ValueError(f'--pattern={what["pattern"]}: {m} does not divide the fan-in {bad[0]}')
  method = what.get('method', 'rtn')
  if method != 'rtn' and not what['quantize']:
    raise ValueError(f'--method={method} applies to --quantize (int8, int4 or int3)')
  if what['quantize']:
    quantize_lib.check(cfg, what['quantize'], what['group'])
    calibrated_quant.check(cfg, method, what['quantize'], what.get('calib_batches', 0))
  _check_activations(cfg, what)
  return cfg


def activations(what: dict) -> dict | None:
  """The W8A8 request of `what` ({'quant', 'scale', 'smooth'}), or None without --activations."""
  if not what.get('activations'):
    return None
  scale = what.get('act_scale') or 'static'
  return {'quant': what['activations'], 'scale': scale, 'smooth': float(what.get('smooth') or 0)}


def _check_activations(cfg: ModelConfig, what: dict) -> None:
  """--activations, --act_scale and --smooth against the model (one line naming the flag)."""
  act = activations(what)
  if act is None:
    if what.get('act_scale') or what.get('smooth'):
      raise ValueError('--act_scale and --smooth apply to --activations (int8 or fp8)')
    return
  act_quant.check(cfg, act, what.get('method', 'rtn'), what.get('calib_batches', 0))


def run_config(
  src: str, config: ml_collections.ConfigDict | None, tokenizer: str = ''
) -> ml_collections.ConfigDict:
  """The run config that calibrates, evaluates and is written beside OUT's params (module doc):
  `config` or, by default, our source's config.json / configs/default.py for an hf: source; its
  model is the source's, init_from empty."""
  if config is None and not src.startswith('hf:'):
    saved = workdir_lib.read_json(os.path.join(src, 'config.json'))
    saved.pop('quantized', None)  # a quantized workdir's record of its scheme, not a run setting.
    config = ml_collections.ConfigDict(saved)
  elif config is None:
    from configs import default

    config = default.get_config()
  config = ml_collections.ConfigDict(config.to_dict())
  config.model = ml_collections.ConfigDict(_model_dict(init_from.source_model_config(src)))
  config.init_from = ''
  if src.startswith('hf:'):
    config.data.tokenizer = tokenizer or init_from.source_tokenizer(src)
  return config


def _model_dict(cfg: ModelConfig) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _run(config: ml_collections.ConfigDict, eval_batches: int, src: str = '') -> context.Run:
  """The run context (data, mesh and eval sets) of `config`, for calibration and evaluation, with
  init_from `src`, where its params come from (a W8A8 source's static scales: validation.py)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if eval_batches:
    config.train.eval_batches = eval_batches
  config.init_from = src
  return context.setup(validation.derive(config))


def eval_loss(r: context.Run, cfg: ModelConfig, params: PyTree) -> float:
  """eval/loss of `params` (model `cfg`) on the run's eval set, by the loop's own evaluator."""
  rr = r
  if cfg != r.derived.model:  # another model (pruned, W8A8): its own shardings and eval step, on
    # the run's validated config (the params are in hand: no init_from for static scales to need).
    c = r.config.replace(model=cfg)
    rr = context.setup(dataclasses.replace(r.derived, config=c, model=cfg))
  ev = evaluators.EvalLoss()
  with jax.set_mesh(rr.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    ev.start(rr, context.lm_task(rr))
    params = jax.device_put(params, rr.state_shardings.params)
    return float(ev(params)['eval/loss'])


def compress(
  src: str, out: str, what: dict, config: ml_collections.ConfigDict | None = None
) -> dict:
  """What the command line does (module docstring); returns the record kept in OUT/compress.json.
  `config`: the run config (run_config's default when None)."""
  cfg = check(src, out, what)
  source = 'hf:' + os.path.abspath(src[3:]) if src.startswith('hf:') else os.path.abspath(src)
  done = _finished(out)
  if done:  # a rerun (e.g. a study killed after this step): the same request is done already.
    asked = {'source': source, **what}
    if any(done.get(k, _UNSET.get(k)) != v for k, v in asked.items()):
      raise ValueError(
        f'--out={out} holds another compression (its compress.json); choose a new --out'
      )
    logging.info('%s: already compressed from %s (compress.json); nothing to do', out, source)
    return done
  config = run_config(src, config, what.get('tokenizer', ''))
  t0 = time.time()
  r = _run(config, what['eval_batches'], src)
  _, params = init_from.load_params(src)
  stage = _stage(out)  # written whole there, then renamed to OUT: a killed run leaves no OUT.
  record = {'source': source, **what, 'loss_before': eval_loss(r, cfg, params)}
  record['params_before'] = _count(params)
  out_config = json.loads(json.dumps(config.to_dict()))
  if what['quantize']:
    record.update(_quantize(r, stage, out_config, cfg, params, what, source))
    new_cfg, new_params = quantized.read(stage)
  else:
    new_cfg, new_params, extra = _transform(r, cfg, params, what)
    record.update(extra)
    out_config['model'] = _model_dict(new_cfg)
    meta = {'compressed_from': source}
    checkpoint.write_params(stage, json.dumps(out_config, indent=2), new_params, 0, meta)
  record['params_after'] = _count(new_params)
  record['loss_after'] = eval_loss(r, new_cfg, new_params)
  record['bytes_before'], record['bytes_after'] = _nbytes(params), _nbytes(new_params)
  record['bytes_on_disk'] = _disk_bytes(stage)
  record['wall_s'] = round(time.time() - t0, 1)
  workdir_lib.write_json(os.path.join(stage, RECORD), record)
  os.replace(stage, out)  # (an empty OUT directory is replaced too)
  os.remove(os.path.join(out, _PARTIAL))
  return record


RECORD = 'compress.json'  # written last: OUT holds it only when the compression finished.
# in records written before them
_UNSET = {'keep': '', 'importance_file': '', 'depth': 'layer', 'method': 'rtn', 'activations': '',
          'act_scale': '', 'smooth': 0.0}  # fmt: skip
_PARTIAL = '.compress-partial'  # marks a staging directory of ours (safe to remove).


def _finished(out: str) -> dict | None:
  """OUT's compress.json record when OUT is a finished compression, else None."""
  path = os.path.join(out, RECORD)
  return workdir_lib.read_json(path) if os.path.isfile(path) else None


def _stage(out: str) -> str:
  """An empty staging directory beside OUT (an earlier killed run's is removed: ours, unfinished)."""
  stage = os.path.abspath(out).rstrip('/') + '.partial'
  if os.path.isdir(stage) and os.path.exists(os.path.join(stage, _PARTIAL)):
    shutil.rmtree(stage)
  elif os.path.exists(stage):
    raise ValueError(f'{stage} exists and is not a partial compression of ours; move it away')
  os.makedirs(stage)
  open(os.path.join(stage, _PARTIAL), 'w').close()
  return stage


def _quantize(
  r: context.Run, stage: str, config: dict, cfg: ModelConfig, params: PyTree, what: dict, src: str
) -> dict:
  """quantized.write of `params` into `stage` by --method (and --activations): GPTQ, AWQ, static
  activation scales and SmoothQuant first gather calibration statistics on --calib_batches
  training batches."""
  method, stats, act = what.get('method', 'rtn'), None, activations(what)
  if method != 'rtn' or (act and act_quant.needs_calibration(act)):
    batches = (r.train_ds.batch(s) for s in range(what['calib_batches']))
    stats = calibrated_quant.calibration_stats(cfg, params, batches)
  scheme, group = what['quantize'], what['group']
  return quantized.write(stage, config, cfg, params, scheme, group, src, method, stats, act)


def _transform(r: context.Run, cfg: ModelConfig, params: PyTree, what: dict) -> tuple:
  """(config, params, record entries) of the pruned or sparsified model."""
  if what['sparsity']:
    masks = sparsity.magnitude_masks(
      cfg, params, what['sparsity'], scope=what['scope'], pattern=what['pattern']
    )
    out = sparsity.apply(params, masks)
    return cfg, out, {'zeros': int(sum((x == 0).sum() for x in jax.tree.leaves(out)))}
  return _prune(r, cfg, params, what)


def _prune(r: context.Run, cfg: ModelConfig, params: PyTree, what: dict) -> tuple:
  """(config, params, record entries) of the pruned model, steered as `what` asks (module doc)."""
  import models

  steer = check_prune(cfg, what)
  shape, forced, depth = steer['shape'], steer['forced'], steer['depth']
  batches = [r.train_ds.batch(s) for s in range(what['calib_batches'])]
  need = pruning.scored_axes(cfg, shape, forced, depth) - set(steer['given'])
  scores = {}
  if need:  # (the calibration forward passes; skipped when --keep / --importance decide all)
    scores = pruning.importance(cfg, params, iter(batches), layers='layers' in need)
    scores.pop('loss')
  scores.update(steer['given'])
  entries = {}
  if depth == 'block':
    n_drop = cfg.n_layers - shape['layers']
    scores['blocks'] = pruning.block_scores(cfg, params, batches, n_drop)
    entries['blocks'] = [
      {'layers': list(range(s, s + n_drop)), 'loss_increase': round(float(x), 6)}
      for s, x in enumerate(scores['blocks'])
    ]
  keep = pruning.plan(cfg, scores, shape, forced, depth)
  new_cfg, new_params = pruning.prune(cfg, params, models.logical_axes(cfg), keep)
  entries['importance'] = {
    k: [round(float(x), 5) for x in jax.device_get(v).ravel()]
    for k, v in scores.items()
    if k != 'blocks'
  }
  entries['kept'] = {k: [int(i) for i in v] for k, v in keep.items()}
  entries['shape'] = pruning.sizes(new_cfg)
  if depth == 'block':
    entries['dropped_layers'] = sorted(set(range(cfg.n_layers)) - set(entries['kept']['layers']))
  return new_cfg, new_params, entries


def _count(params: PyTree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def _nbytes(params: PyTree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))


def _disk_bytes(path: str) -> int:
  """Bytes of every file under `path` (OUT as written)."""
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  f = FLAGS
  what = {
    'prune': f.prune,
    'keep': ';'.join(f.keep),
    'importance_file': f.importance,
    'depth': f.depth,
    'sparsity': f.sparsity,
    'pattern': f.pattern,
    'scope': f.scope,
    'quantize': f.quantize,
    'group': f.group,
    'method': f.method,
    'activations': f.activations,
    'act_scale': f.act_scale or ('static' if f.activations else ''),
    'smooth': f.smooth,
    'calib_batches': f.calib_batches,
    'eval_batches': f.eval_batches,
    'tokenizer': f.tokenizer,
  }
  with cli.one_line_errors(f.debug):
    config = _CONFIG.value
    if config is not None:
      _ = config.keys  # config_flags defers a failed load (e.g. a missing file) to here.
    record = compress(f.workdir, f.out, what, config)
  print(summary(record, f.out))
  print(json.dumps({k: v for k, v in record.items() if k not in ('importance', 'kept', 'blocks')}))


def summary(record: dict, out: str) -> str:
  """A few lines for people: what was done, params / size / eval loss before -> after, where."""
  before, after = record['params_before'], record['params_after']
  if record['prune']:
    done = 'pruned to ' + ', '.join(f'{k} {v}' for k, v in record['shape'].items())
  elif record['sparsity']:
    how = f'{record["pattern"]}, {record["scope"]}'
    done = f'sparsified {record["sparsity"]:.0%} ({how}): {record.get("zeros", 0):,} weights zero'
  else:
    group = f'group {record["group"]}' if record['group'] else 'per channel'
    how = {'gptq': ' by GPTQ', 'awq': ' by AWQ'}.get(record.get('method', 'rtn'), '')
    done = f'quantized to {record["quantize"]} ({group}){how}' + _act_summary(record)
  lines = [
    f'Compressed {record["source"]}: {done}',
    f'  params:    {before:,} -> {after:,} ({after / before - 1:+.1%})',
    f'  eval loss: {record["loss_before"]:.4f} -> {record["loss_after"]:.4f} '
    f'({record["loss_after"] - record["loss_before"]:+.4f})',
  ]
  if 'bytes_quantized' in record:
    b32, bq = record['bytes_float32'], record['bytes_quantized']
    lines.append(
      f'  size:      {b32 / 2**20:.2f} MiB float32 -> {bq / 2**20:.2f} MiB ({bq / b32:.1%})'
    )
  elif 'bytes_on_disk' in record:
    b0, b1 = record['bytes_before'], record['bytes_after']
    lines.append(
      f'  size:      {_size(b0)} -> {_size(b1)} of params ({b1 / b0 - 1:+.1%}); '
      f'{_size(record["bytes_on_disk"])} on disk'
    )
  lines += _steering(record)
  took = f' in {record["wall_s"]:.1f}s' if 'wall_s' in record else ''
  lines.append(f'  out:       {os.path.abspath(out)}{took} (full record: {RECORD})')
  return '\n'.join(lines)


def _act_summary(record: dict) -> str:
  """', activations int8 (static per tensor, SmoothQuant α 0.5)' for a W8A8 record, else ''."""
  act = activations(record)
  if act is None:
    return ''
  how = {'static': 'static per tensor', 'tensor': 'dynamic per tensor', 'token': 'per token'}
  smooth = f', SmoothQuant α {act["smooth"]:g}' if act['smooth'] else ''
  return f', activations {act["quant"]} ({how.get(act["scale"], act["scale"])}{smooth})'


def _steering(record: dict) -> list[str]:
  """Summary lines for a steered pruning: the forced units, the importance file, the depth block."""
  lines = []
  if record.get('keep'):
    lines.append(f'  kept:      {record["keep"]} (--keep), the rest by importance')
  if record.get('importance_file'):
    lines.append(f'  scores:    {record["importance_file"]} (--importance)')
  if record.get('dropped_layers'):
    drop, blocks = record['dropped_layers'], record.get('blocks', [])
    rise = [b['loss_increase'] for b in blocks if b['layers'] == drop]
    best = f' (+{rise[0]:.4f} calibration loss; {len(blocks)} candidate blocks)' if rise else ''
    lines.append(f'  depth:     dropped the contiguous layers {drop[0]}-{drop[-1]}{best}')
  return lines


def _size(n: int) -> str:
  """Bytes for people: 1.2 KiB, 3.4 MiB, 5.6 GiB."""
  for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if n >= scale:
      return f'{n / scale:.1f} {unit}'
  return f'{n} B'


if __name__ == '__main__':
  main()
