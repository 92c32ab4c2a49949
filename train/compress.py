"""Compress a trained model (one of our workdirs or an `hf:/dir` checkpoint): structured pruning,
one-shot sparsity or weight quantization, written as a new workdir of ours that every loader
accepts (init_from, distillation, export, sampling, lm-eval); a few lines summarise it (params,
size and eval loss before -> after) and the full record is kept in OUT/compress.json; the last
line printed is that record as JSON, without its per-unit importance and kept lists.

  python -m train.compress --workdir=W --out=W2 --prune=layers:2           # depth
  python -m train.compress --workdir=W --out=W2 --prune=heads:4,mlp:224    # width
  python -m train.compress --workdir=W --out=W2 --sparsity=0.5 --scope=layer
  python -m train.compress --workdir=W --out=W2 --sparsity=0.5 --pattern=2:4
  python -m train.compress --workdir=W --out=W2 --quantize=int4 --group=64
  python -m train.compress --workdir=hf:/path/to/llama --out=W2 --prune=layers:12 \
      --config=configs/default.py --config.data.seq_len=1024

--prune names target sizes (layers, heads: query heads in whole kv groups, mlp, embed); the units
kept are the most important on --calib_batches training batches (models/pruning.py: Minitron's
activation importance for heads, neurons and channels; the loss increase of dropping each layer
for depth). Recover a pruned model by distillation from W (configs/compress.py). Every target
is checked against W's config.json (an hf: directory's config.json) before any weight is loaded.

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

from models import pruning, sparsity
from models import quantize as quantize_lib
from models.config import ModelConfig, PyTree
from train import checkpoint, cli, context, evaluators, init_from, quantized, sharding
from train import workdir as workdir_lib

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'one of our trained workdirs, or hf:/dir', flag_values=FLAGS)
flags.DEFINE_string(
  'out', None, 'the new workdir (absent or empty; written whole, then renamed)', flag_values=FLAGS
)
flags.DEFINE_string('prune', '', 'target sizes, e.g. layers:2,heads:4,mlp:224', flag_values=FLAGS)
flags.DEFINE_float('sparsity', 0.0, 'fraction of compressible weights zeroed', flag_values=FLAGS)
flags.DEFINE_string('pattern', 'unstructured', "'unstructured' or 'N:M' (2:4)", flag_values=FLAGS)
flags.DEFINE_enum('scope', 'global', ['global', 'layer'], 'magnitude ranking', flag_values=FLAGS)
flags.DEFINE_string('quantize', '', 'int8 | int4 | fp8', flag_values=FLAGS)
flags.DEFINE_integer(
  'group', 0, 'quantization group along fan-in (0: per channel)', flag_values=FLAGS
)
flags.DEFINE_integer('calib_batches', 8, 'training batches for importance', flag_values=FLAGS)
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


def parse_shape(text: str) -> dict[str, int]:
  """'layers:2,mlp:224' -> {'layers': 2, 'mlp': 224} (one-line error naming a bad item)."""
  shape = {}
  for item in filter(None, text.split(',')):
    axis, _, n = item.partition(':')
    if not n.isdigit():
      raise ValueError(f'--prune: {item!r} is not axis:size (e.g. layers:2,mlp:224)')
    shape[axis.strip()] = int(n)
  return shape


def check(src: str, out: str, what: dict) -> ModelConfig:
  """The source's model config, once every target in `what` fits it (nothing loaded yet)."""
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
    pruning.check(cfg, parse_shape(what['prune']))
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
  if what['quantize']:
    quantize_lib.check(cfg, what['quantize'], what['group'])
  return cfg


def run_config(
  src: str, config: ml_collections.ConfigDict | None, tokenizer: str = ''
) -> ml_collections.ConfigDict:
  """The run config that calibrates, evaluates and is written beside OUT's params (module doc):
  `config` or, by default, our source's config.json / configs/default.py for an hf: source; its
  model is the source's, init_from empty."""
  if config is None and not src.startswith('hf:'):
    config = ml_collections.ConfigDict(workdir_lib.read_json(os.path.join(src, 'config.json')))
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


def _run(config: ml_collections.ConfigDict, eval_batches: int) -> context.Run:
  """The run context (data, mesh and eval sets) of `config`, for calibration and evaluation."""
  config = ml_collections.ConfigDict(config.to_dict())
  if eval_batches:
    config.train.eval_batches = eval_batches
  return context.setup(config)


def eval_loss(r: context.Run, cfg: ModelConfig, params: PyTree) -> float:
  """eval/loss of `params` (model `cfg`) on the run's eval set, by the loop's own evaluator."""
  rr = r
  if cfg != r.derived.model:  # another shape (pruned): its own mesh shardings and eval step.
    config = ml_collections.ConfigDict(r.config.to_dict())
    config.model = ml_collections.ConfigDict(_model_dict(cfg))
    rr = context.setup(config)
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
    if any(done.get(k) != v for k, v in asked.items()):
      raise ValueError(
        f'--out={out} holds another compression (its compress.json); choose a new --out'
      )
    logging.info('%s: already compressed from %s (compress.json); nothing to do', out, source)
    return done
  config = run_config(src, config, what.get('tokenizer', ''))
  t0 = time.time()
  r = _run(config, what['eval_batches'])
  _, params = init_from.load_params(src)
  stage = _stage(out)  # written whole there, then renamed to OUT: a killed run leaves no OUT.
  record = {'source': source, **what, 'loss_before': eval_loss(r, cfg, params)}
  record['params_before'] = _count(params)
  out_config = json.loads(json.dumps(config.to_dict()))
  if what['quantize']:
    record.update(
      quantized.write(stage, out_config, cfg, params, what['quantize'], what['group'], source)
    )
    new_cfg, new_params = quantized.read(stage)
  else:
    new_cfg, new_params, extra = _transform(r, cfg, params, what)
    record.update(extra)
    out_config['model'] = _model_dict(new_cfg)
    meta = {'compressed_from': source}
    checkpoint.write_params(stage, json.dumps(out_config, indent=2), new_params, 0, meta)
  record['params_after'] = _count(new_params)
  record['loss_after'] = eval_loss(r, new_cfg, new_params)
  record['wall_s'] = round(time.time() - t0, 1)
  workdir_lib.write_json(os.path.join(stage, RECORD), record)
  os.replace(stage, out)  # (an empty OUT directory is replaced too)
  os.remove(os.path.join(out, _PARTIAL))
  return record


RECORD = 'compress.json'  # written last: OUT holds it only when the compression finished.
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


def _transform(r: context.Run, cfg: ModelConfig, params: PyTree, what: dict) -> tuple:
  """(config, params, record entries) of the pruned or sparsified model."""
  import models

  if what['sparsity']:
    masks = sparsity.magnitude_masks(
      cfg, params, what['sparsity'], scope=what['scope'], pattern=what['pattern']
    )
    out = sparsity.apply(params, masks)
    return cfg, out, {'zeros': int(sum((x == 0).sum() for x in jax.tree.leaves(out)))}
  shape = parse_shape(what['prune'])
  batches = (r.train_ds.batch(s) for s in range(what['calib_batches']))
  scores = pruning.importance(cfg, params, batches)
  keep = pruning.plan(cfg, scores, shape)
  new_cfg, new_params = pruning.prune(cfg, params, models.logical_axes(cfg), keep)
  entries = {
    'importance': {
      k: [round(float(x), 5) for x in jax.device_get(v).ravel()]
      for k, v in scores.items()
      if k != 'loss'
    },  # fmt: skip
    'kept': {k: [int(i) for i in v] for k, v in keep.items()},
    'shape': pruning.sizes(new_cfg),
  }
  return new_cfg, new_params, entries


def _count(params: PyTree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  f = FLAGS
  what = {
    'prune': f.prune,
    'sparsity': f.sparsity,
    'pattern': f.pattern,
    'scope': f.scope,
    'quantize': f.quantize,
    'group': f.group,
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
  print(json.dumps({k: v for k, v in record.items() if k not in ('importance', 'kept')}))


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
    done = f'quantized to {record["quantize"]} ({group})'
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
  took = f' in {record["wall_s"]:.1f}s' if 'wall_s' in record else ''
  lines.append(f'  out:       {os.path.abspath(out)}{took} (full record: {RECORD})')
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
