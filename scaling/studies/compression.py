"""The compression study (docs/compression.md): pruned models recovered by distillation, by
fine-tuning and from scratch; loss vs sparsity (one-shot and gradual, with Frantar et al.'s law);
loss gap vs bits of weight quantization (PTQ and QAT) against the tokens a model was trained on.
Resumable (finished runs are skipped), one CSV per part.

  L=workdirs/ladder   # bash configs/sweeps/ladder.sh $L first (62 min)
  python -m scaling.studies.compression --part=recovery --workdir=workdirs/compress --ladder=$L --lanes=2
  python -m scaling.studies.compression --part=sparsity --workdir=workdirs/compress --ladder=$L --lanes=2
  python -m scaling.studies.compression --part=quantize --workdir=workdirs/compress --ladder=$L --lanes=2
  python -m scaling.studies.compression --part=nm --workdir=workdirs/compress --ladder=$L  # 2:4 trained
  python -m scaling.studies.compression --part=calibrated --ladder=$L  # GPTQ / AWQ vs RTN, scale rules
  python -m scaling.studies.compression --part=calibrated_kernels --ladder=$L --members=M  # per kernel
  python -m scaling.studies.compression --part=activations --ladder=$L  # W8A8, SmoothQuant, int8 QAT
  python -m scaling.studies.compression --report=docs/compression     # fits, tables, plots from the CSVs
"""

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

from absl import flags

from scaling import parallel
from scaling.studies import compression_report as rep

# The teacher and the pruned shapes (each about 55 % of its 651K params; the 373K ladder rung is
# the from-scratch reference at its full 20 tokens per parameter).
TEACHER = 'N6.51e5_D1.3e7_lr7.81e-3'
SHAPES = {'depth': 'layers:2', 'width': 'heads:4,mlp:224', 'combined': 'layers:3,heads:5,mlp:320'}
RECOVERIES = ('distill', 'finetune', 'scratch')
RECOVERY_STEPS = 1600  # 3.3M tokens: a quarter of the teacher's 13M.
# 20 tokens/param members (seed 0, the lr rule's 2^-7): one-shot sparsity, gradual twins.
SPARSE_BASES = (
  'N7.51e4_D1.5e6_lr7.81e-3',
  'N1.25e5_D2.49e6_lr7.81e-3',
  'N1.75e5_D3.49e6_lr7.81e-3',
  'N3.73e5_D7.45e6_lr7.81e-3',
)
SPARSITIES = (0.5, 0.75, 0.875)
ONESHOT = [(s, scope, 'unstructured') for s in SPARSITIES for scope in ('global', 'layer')] + [
  (0.5, 'layer', '2:4')
]
# Weight quantization schemes (scheme, group): per output channel, and int4 by groups of 16 along
# the fan-in (16 divides every ladder member's fan-ins: d_model 48-112, head_dim 16; 32 does not).
SCHEMES = (('int8', 0), ('fp8', 0), ('int4', 0), ('int4', 16))
NM = '2:4'  # the N:M pattern trained sparse (--part=nm).
QAT = (('N7.51e4_D1.5e6_lr7.81e-3', 'int4', 0), ('N1.75e5_D3.49e6_lr7.81e-3', 'int4', 0))
# --part=calibrated: (method, scheme, group, scale rule). GPTQ and AWQ against RTN at int4 and int3,
# per channel and by the RTN study's groups of 16; then qwix's scale absmax / (qmax + 0.5) against
# the textbook absmax / qmax, RTN at int8 and int4.
CALIBRATED = [
  *[(m, s, g, 'qwix') for s in ('int4', 'int3') for g in (0, 16) for m in ('rtn', 'gptq', 'awq')],
  *[('rtn', s, g, r) for s, g in (('int8', 0), ('int4', 0), ('int4', 16)) for r in ('textbook', 'qwix')],
]  # fmt: skip
CALIBRATED = list(dict.fromkeys(CALIBRATED))
# --part=activations: (scheme, activation scale, SmoothQuant α). Weights and the inputs of every
# compressible kernel in the same format (W8A8), static per-tensor or per-token scales, without
# and with SmoothQuant; 'none' rows quantize the weights alone, to tell the two apart.
ACTIVATIONS = [(s, a, sm) for s in ('int8', 'fp8') for a, sm in
               (('none', 0.0), ('static', 0.0), ('static', 0.5), ('token', 0.0), ('token', 0.5))]  # fmt: skip
ACT_QAT_STEPS = 64  # int8 W8A8 QAT fine-tune of the smallest and largest member, and its float twin
ACT_QAT = ('weight_quant=int8', 'act_quant=int8', 'act_scale=tensor')  # (dynamic per tensor)


def _repo() -> str:
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _job(workdir: str, flags_: list[str]) -> parallel.Job:
  """main.py into `workdir`, named <part>/<run>: done once it wrote workdir/result.json (a done
  run is skipped; an interrupted one resumes from its checkpoint)."""
  name = os.path.join(os.path.basename(os.path.dirname(workdir)), os.path.basename(workdir))
  return parallel.Job(name, [sys.executable, 'main.py', f'--workdir={workdir}', *flags_], workdir)


def recovery_runs(work: str, ladder: str) -> list[parallel.Job]:
  """train.tools.compress per shape, then the three recoveries of each (distill, finetune,
  scratch)."""
  teacher = os.path.join(ladder, TEACHER)
  jobs = []
  for name, shape in SHAPES.items():
    pruned = os.path.join(work, 'pruned', name)
    if not os.path.exists(os.path.join(pruned, 'compress.json')):
      compress = [
        sys.executable,
        '-m',
        'train.tools.compress',
        f'--workdir={teacher}',
        f'--out={pruned}',
      ]
      subprocess.run([*compress, f'--prune={shape}', '--calib_batches=16'], cwd=_repo(), check=True)
    for how in RECOVERIES:
      run = os.path.join(work, 'recovery', f'{name}_{how}')
      arg = f'student={pruned},teacher={teacher},recover={how},steps={RECOVERY_STEPS}'
      jobs.append(_job(run, [f'--config=configs/recover.py:{arg}']))
  return jobs


def _sparse_run(
  work: str, ladder: str, base: str, name: str, target: float, pattern: str
) -> parallel.Job:
  """The Job of `base` retrained sparse, cubic from 10 % to 60 % of its steps, masks every 1 %
  of the steps."""
  src = os.path.join(ladder, base)
  with open(os.path.join(src, 'config.json')) as f:
    steps = json.load(f)['train']['num_steps']
  flags_ = [
    f'--config=configs/recover.py:rerun={src}',
    f'--config.sparsity.target={target}',
    f'--config.sparsity.pattern={pattern}',
    f'--config.sparsity.begin_step={steps // 10}',
    f'--config.sparsity.end_step={steps * 6 // 10}',
    f'--config.sparsity.every={max(steps // 100, 1)}',
  ]
  return _job(os.path.join(work, 'sparse', name), flags_)


def gradual_runs(work: str, ladder: str) -> list[parallel.Job]:
  """The 20-tokens/param members retrained with gradual magnitude sparsity (_sparse_run), one per
  target sparsity."""
  return [
    _sparse_run(work, ladder, base, f'{base}_s{s}', s, 'unstructured')
    for base in SPARSE_BASES
    for s in SPARSITIES
  ]


def _nm_name(base: str) -> str:
  return f'{base}_{NM.replace(":", "of")}'


def nm_runs(work: str, ladder: str, bases: Sequence[str]) -> list[parallel.Job]:
  """The members trained 2:4 sparse: the N:M mask (the 2 largest |w| of every 4 along the fan-in)
  chosen at 10 % of the steps (_sparse_run's begin_step) and kept for the rest of the run (pruned
  weights stay zero, so the later re-masks keep the same choice)."""
  return [_sparse_run(work, ladder, b, _nm_name(b), 0.5, NM) for b in bases]


def nm_rows(work: str, ladder: str, path: str, bases: Sequence[str] = SPARSE_BASES) -> list[dict]:
  """Merge the finished 2:4-trained runs of `bases` into the CSV `path` (its other rows kept): the
  member, its dense loss, the one-shot 2:4 loss (sparsity_oneshot.csv beside `path`), the trained
  one; built-in bases first, then the others in the order given."""
  rows = {r['base']: r for r in rep.read_csv(path)}
  oneshot_rows = rep.read_csv(os.path.join(os.path.dirname(path), 'sparsity_oneshot.csv'))
  for base in bases:
    run = os.path.join(work, 'sparse', _nm_name(base))
    if not parallel.finished(run):
      continue
    one = next((r['loss'] for r in oneshot_rows if r['base'] == base and r['pattern'] == NM), '')
    rows[base] = {'base': base, 'params': _result(ladder, base)['params'], 'pattern': NM,
                  'loss_dense': _loss(ladder, base), 'loss_oneshot': one,
                  'loss_trained': rep.final_eval(run)}  # fmt: skip
  order = [*SPARSE_BASES, *sorted(b for b in rows if b not in SPARSE_BASES)]
  out = [rows[b] for b in order if b in rows]
  rep.write_csv(path, out)
  return out


def qat_runs(work: str, ladder: str) -> list[parallel.Job]:
  """Quantization-aware twins: the member retrained from scratch with its kernels fake-quantized
  (STE); and the trained member fine-tuned for a tenth of its steps with and without (QAT from
  a float model, and its float control at equal tokens)."""
  jobs = []
  for base, scheme, group in QAT:
    src = os.path.join(ladder, base)
    with open(os.path.join(src, 'config.json')) as f:
      steps = json.load(f)['train']['num_steps'] // 10
    arg = f'--config=configs/recover.py:student={src},teacher={src},recover=finetune,steps={steps}'
    quant = [f'--config.model.weight_quant={scheme}', f'--config.model.weight_group={group}']
    jobs.append(_job(os.path.join(work, 'qat', f'{base}_ft_float'), [arg]))
    jobs.append(_job(os.path.join(work, 'qat', f'{base}_ft_{scheme}_g{group}'), [arg, *quant]))
  for base, scheme, group in QAT:
    run = os.path.join(work, 'qat', f'{base}_{scheme}_g{group}')
    flags_ = [f'--config=configs/recover.py:rerun={os.path.join(ladder, base)}',
              f'--config.model.weight_quant={scheme}',
              f'--config.model.weight_group={group}']  # fmt: skip
    jobs.append(_job(run, flags_))
  return jobs


# --- Measurements written to CSVs --------------------------------------------------------------


def _append(path: str, row: dict) -> None:
  new = not os.path.exists(path)
  with open(path, 'a', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(row))
    if new:
      w.writeheader()
    w.writerow(row)


def oneshot(work: str, ladder: str) -> str:
  """Loss after one-shot magnitude sparsity of each base (no retraining): sparsity_oneshot.csv."""
  from train.tools import compress

  path = os.path.join(work, 'sparsity_oneshot.csv')
  done = {(r['base'], r['sparsity'], r['scope'], r['pattern']) for r in rep.read_csv(path)}
  for base in SPARSE_BASES:
    for s, scope, pattern in ONESHOT:
      if (base, str(s), scope, pattern) in done:
        continue
      out = os.path.join(work, 'oneshot', f'{base}_{s}_{scope}_{pattern.replace(":", "of")}')
      what = {'prune': '', 'sparsity': s, 'pattern': pattern, 'scope': scope, 'quantize': '',
              'group': 0, 'calib_batches': 0, 'eval_batches': 0}  # fmt: skip
      rec = compress.compress(os.path.join(ladder, base), out, what)
      _append(path, {'base': base, 'params': rec['params_before'], 'sparsity': s, 'scope': scope,
                     'pattern': pattern, 'loss_dense': rec['loss_before'],
                     'loss': rec['loss_after'], 'zeros': rec['zeros']})  # fmt: skip
  return path


def ptq(work: str, ladder: str) -> str:
  """Post-training round-to-nearest at every scheme for every seed-0 2^-7 member: quantize.csv."""
  from train.tools import compress

  path = os.path.join(work, 'quantize.csv')
  done = {(r['member'], r['scheme'], r['group']) for r in rep.read_csv(path)}
  members = sorted(m for m in os.listdir(ladder) if m.endswith('lr7.81e-3') and '_D' in m)
  for member in members:
    for scheme, group in SCHEMES:
      if (member, scheme, str(group)) in done:
        continue
      out = os.path.join(work, 'ptq', f'{member}_{scheme}_g{group}')
      what = {'prune': '', 'sparsity': 0.0, 'pattern': 'unstructured', 'scope': 'global',
              'quantize': scheme, 'group': group, 'calib_batches': 0, 'eval_batches': 0}  # fmt: skip
      rec = compress.compress(os.path.join(ladder, member), out, what)
      with open(os.path.join(ladder, member, 'result.json')) as f:
        result = json.load(f)
      _append(path, {'member': member, 'params': rec['params_before'],
                     'tokens': result.get('tokens', ''), 'scheme': scheme, 'group': group,
                     'loss_float': rec['loss_before'], 'loss': rec['loss_after'],
                     'bytes': rec['bytes_quantized'], 'bytes_float32': rec['bytes_float32']})  # fmt: skip
  return path


def largest_members(ladder: str) -> list[str]:
  """Per size, the seed-0 lr-2^-7 member trained on the most tokens, smallest size first."""
  best = {}
  for name in os.listdir(ladder):
    m = re.fullmatch(r'N([0-9.e+-]+)_D([0-9.e+-]+)_lr7\.81e-3(_s0)?', name)
    if m and float(m[2]) > best.get(float(m[1]), (0.0, ''))[0]:
      best[float(m[1])] = (float(m[2]), name)
  return [best[n][1] for n in sorted(best)]


def calibrated(ladder: str, members: Sequence[str], path: str, calib_batches: int) -> str:
  """Every CALIBRATED setting of each member not yet in the CSV `path`, appended row by row."""
  done = {tuple(r[k] for k in ('member', 'method', 'scheme', 'group', 'rule'))
          for r in rep.read_csv(path)}  # fmt: skip
  for member in members:
    todo = [c for c in CALIBRATED if (member, c[0], c[1], str(c[2]), c[3]) not in done]
    for row in _calibrated_member(ladder, member, todo, calib_batches) if todo else ():
      _append(path, row)
  return path


def _calibrated_member(
  ladder: str, member: str, todo: list[tuple], calib_batches: int
) -> Iterator[dict]:
  """Rows of `todo` for one member: float and quantized eval loss on the member's own eval set
  (train.tools.compress's evaluator), the output error on the calibration batches, the packed
  bytes."""
  import jax

  from models import calibrated_quant, quantize
  from train import context, init_from, validation
  from train.tools import compress

  src = os.path.join(ladder, member)
  r = context.setup(validation.derive(compress.run_config(src, None)))
  cfg, params = init_from.load_params(src)
  params = jax.device_get(params)
  loss_float = compress.eval_loss(r, cfg, params)
  batches = [r.train_ds.batch(s) for s in range(calib_batches)]
  stats = calibrated_quant.calibration_stats(cfg, params, batches)
  result = _result(ladder, member)
  for method, scheme, group, rule in todo:
    t0 = time.time()
    kernels = None
    if method != 'rtn':
      kernels = calibrated_quant.quantize_kernels(cfg, params, scheme, group, method, stats, rule)
    packed = quantize.quantize_tree(cfg, params, scheme, group, rule, kernels)
    deq = quantize.dequantize_tree(cfg, packed, scheme)
    yield {'member': member, 'params': result['params'], 'tokens': result.get('tokens', ''),
           'method': method, 'scheme': scheme, 'group': group, 'rule': rule,
           'loss_float': loss_float, 'loss': compress.eval_loss(r, cfg, deq),
           'out_err': rep.output_error(cfg, params, deq, stats),
           'bytes': sum(v.nbytes for v in packed.values()),
           'seconds': round(time.time() - t0, 1)}  # fmt: skip


def calibrated_kernels(ladder: str, member: str, scheme: str, group: int, path: str) -> str:
  """The eval-loss gap when one kernel (all its layers) is quantized by RTN, GPTQ or AWQ and the
  rest stays float, then all together: which kernels each method helps, and whether the gains
  add up; with each kernel's input spread max / median of mean |x| (rows added to the CSV `path`)."""
  import jax

  from models import calibrated_quant, quantize
  from train import context, init_from, validation
  from train.tools import compress

  src = os.path.join(ladder, member)
  r = context.setup(validation.derive(compress.run_config(src, None)))
  cfg, params = init_from.load_params(src)
  params = jax.device_get(params)
  base = compress.eval_loss(r, cfg, params)
  stats = calibrated_quant.calibration_stats(cfg, params, [r.train_ds.batch(s) for s in range(8)])
  flat = {'float': {n: x for n, x, _ in quantize.leaves(cfg, params)}}
  for m in ('rtn', 'gptq', 'awq'):
    k = None
    if m != 'rtn':
      k = calibrated_quant.quantize_kernels(cfg, params, scheme, group, m, stats)
    packed = quantize.quantize_tree(cfg, params, scheme, group, kernels=k)
    flat[m] = {
      n: x for n, x, _ in quantize.leaves(cfg, quantize.dequantize_tree(cfg, packed, scheme))
    }

  def mixed(m: str, kernel: str) -> dict:  # `kernel` (or 'all') by method m, the rest float.
    pick = [
      flat[m][n] if kernel in (n, 'all') and n in stats else x for n, x in flat['float'].items()
    ]
    return jax.tree.unflatten(jax.tree.structure(params), pick)

  # AWQ's premise: a few input channels with much larger activations; their max / median mean |x|.
  spread = {k: float(jax.numpy.mean(v['act_scale'].max(1) / jax.numpy.median(v['act_scale'], 1)))
            for k, v in stats.items()}  # fmt: skip
  rows = [{'member': member, 'scheme': scheme, 'group': group, 'kernel': kernel,
           'act_max_over_median': spread.get(kernel, ''),
           **{m: compress.eval_loss(r, cfg, mixed(m, kernel)) - base for m in ('rtn', 'gptq', 'awq')}}
          for kernel in [*stats, 'all']]  # fmt: skip
  rep.write_csv(path, rep.read_csv(path) + rows)
  return path


def activations(ladder: str, members: Sequence[str], path: str, calib_batches: int) -> str:
  """Every ACTIVATIONS setting of each member not yet in the CSV `path`, appended row by row."""
  done = {tuple(r[k] for k in ('member', 'scheme', 'act_scale', 'smooth'))
          for r in rep.read_csv(path)}  # fmt: skip
  for member in members:
    todo = [a for a in ACTIVATIONS if (member, a[0], a[1], str(a[2])) not in done]
    for row in _w8a8_member(ladder, member, todo, calib_batches) if todo else ():
      _append(path, row)
  return path


def _member_run(ladder: str, member: str) -> tuple:
  """(run context, model config, params) of a ladder member, for its own eval set."""
  import jax

  from train import context, init_from, validation
  from train.tools import compress

  src = os.path.join(ladder, member)
  cfg, params = init_from.load_params(src)
  return (
    context.setup(validation.derive(compress.run_config(src, None))),
    cfg,
    jax.device_get(params),
  )


def w8a8_loss(r: object, cfg: object, params: dict, setting: tuple, stats: dict) -> float:
  """Eval loss of `params` quantized as train.tools.compress --quantize=S [--activations=S
  --act_scale=A --smooth=α] writes it (`setting` (S, A or 'none', α), per channel, RTN)."""
  from models import calibrated_quant, quantize
  from train.tools import compress

  scheme, scale, smooth = setting
  kernels = None
  if scale != 'none':
    act = {'quant': scheme, 'scale': scale, 'smooth': smooth}
    cfg, params, kernels = calibrated_quant.w8a8(cfg, params, scheme, 0, act, stats)
  packed = quantize.quantize_tree(cfg, params, scheme, 0, kernels=kernels)
  return compress.eval_loss(r, cfg, quantize.dequantize_tree(cfg, packed, scheme))


def _w8a8_member(ladder: str, member: str, todo: list[tuple], calib_batches: int) -> Iterator[dict]:
  """Rows of `todo` for one member: float and W8A8 eval loss on the member's own eval set; the
  inputs' channel spread (mean max / median of per-channel max |x|) before and after smoothing."""
  from models import calibrated_quant
  from train.tools import compress

  r, cfg, params = _member_run(ladder, member)
  loss_float = compress.eval_loss(r, cfg, params)
  batches = [r.train_ds.batch(s) for s in range(calib_batches)]
  stats = calibrated_quant.calibration_stats(cfg, params, batches)
  result = _result(ladder, member)
  for scheme, scale, smooth in todo:
    t0 = time.time()
    act = {'quant': scheme, 'scale': 'static', 'smooth': smooth}
    smoothed = calibrated_quant.act_calibration(cfg, params, act, stats) if smooth else None
    yield {'member': member, 'params': result['params'], 'tokens': result.get('tokens', ''),
           'scheme': scheme, 'act_scale': scale, 'smooth': smooth, 'loss_float': loss_float,
           'loss': w8a8_loss(r, cfg, params, (scheme, scale, smooth), stats),
           'act_spread': rep.act_spread(stats), 'act_spread_smoothed': rep.act_spread(stats, smoothed),
           'seconds': round(time.time() - t0, 1)}  # fmt: skip


def act_qat_runs(work: str, ladder: str, members: Sequence[str]) -> list[parallel.Job]:
  """Each member fine-tuned ACT_QAT_STEPS steps from its checkpoint with int8 weights and inputs
  fake-quantized (straight-through; ACT_QAT), and without (its float twin at equal tokens)."""
  jobs = []
  for base in members:
    src = os.path.join(ladder, base)
    arg = f'--config=configs/recover.py:student={src},teacher={src},recover=finetune,steps={ACT_QAT_STEPS}'
    once = [
      f'--config.train.eval_every={ACT_QAT_STEPS}',
      f'--config.train.log_every={ACT_QAT_STEPS}',
    ]
    qat = [f'--config.model.{kv}' for kv in ACT_QAT]
    for kind, extra in (('float', []), ('w8a8', qat)):
      jobs.append(_job(os.path.join(work, 'w8a8_qat', f'{base}_ft_{kind}'), [arg, *once, *extra]))
  return jobs


def act_qat_rows(work: str, ladder: str, members: Sequence[str], path: str, calib_batches: int):
  """The CSV `path` of the finished fine-tunes: per member and fine-tune (none, float, QAT) the
  loss as trained (QAT: its dynamic per-tensor fake quant), as float, and after int8 W8A8 PTQ
  (static per tensor and per token), all on the member's eval set."""
  from models import calibrated_quant
  from train import init_from
  from train.tools import compress

  rows = []
  for base in members:
    r, cfg, params = _member_run(ladder, base)
    for kind in ('none', 'float', 'w8a8'):
      run = os.path.join(work, 'w8a8_qat', f'{base}_ft_{kind}')
      if kind != 'none':
        if not parallel.finished(run):
          continue
        params = init_from.load_params(run, cfg)[1]
      batches = [r.train_ds.batch(s) for s in range(calib_batches)]
      stats = calibrated_quant.calibration_stats(cfg, params, batches)
      row = {'member': base, 'params': _result(ladder, base)['params'], 'fine_tune': kind,
             'steps': 0 if kind == 'none' else ACT_QAT_STEPS, 'loss_member': _loss(ladder, base),
             'loss_as_trained': rep.final_eval(run) if kind != 'none' else '',
             'loss_float': compress.eval_loss(r, cfg, params)}  # fmt: skip
      for scale in ('static', 'token'):
        row[f'loss_w8a8_{scale}'] = w8a8_loss(r, cfg, params, ('int8', scale, 0.0), stats)
      rows.append(row)
  rep.write_csv(path, rows)
  return path


# --- Report --------------------------------------------------------------------------------------


def report(work: str, ladder: str, out: str) -> dict:
  """CSVs, fits and plots of whatever parts have finished, into `out` (docs/compression)."""
  os.makedirs(out, exist_ok=True)
  summary = {}
  runs = {(s, h): os.path.join(work, 'recovery', f'{s}_{h}') for s in SHAPES for h in RECOVERIES}
  curves_ = rep.recovery_curves(runs)
  if curves_:
    pruned = {}
    for s in SHAPES:
      path = os.path.join(work, 'pruned', s, 'compress.json')
      if os.path.exists(path):
        with open(path) as f:
          pruned[s] = json.load(f)['loss_after']
    rep.write_csv(os.path.join(out, 'recovery_curves.csv'), curves_)
    ref = 'N3.73e5_D7.45e6_lr7.81e-3'  # 373K from scratch at 20 tokens/param: the same size.
    with open(os.path.join(ladder, ref, 'result.json')) as f:
      r = json.load(f)
    summary['recovery'] = rep.recovery_table(curves_, pruned, (r['loss'], r['tokens']))
    rep.write_csv(os.path.join(out, 'recovery.csv'), summary['recovery'])
    refs = {'teacher (651K, 13M tokens)': _loss(ladder, TEACHER),
            '373K from scratch, 7.5M tokens': _loss(ladder, 'N3.73e5_D7.45e6_lr7.81e-3')}  # fmt: skip
    rep.plot_recovery(curves_, refs, pruned, os.path.join(out, 'recovery.png'))
  summary.update(_report_sparsity(work, ladder, out))
  summary.update(_report_quantize(work, ladder, out))
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1, default=float)
  return summary


def _result(ladder: str, member: str) -> dict:
  with open(os.path.join(ladder, member, 'result.json')) as f:
    return json.load(f)


def _loss(ladder: str, member: str) -> float:
  return float(_result(ladder, member)['loss'])


def _report_sparsity(work: str, ladder: str, out: str) -> dict:
  oneshot_rows = rep.read_csv(os.path.join(work, 'sparsity_oneshot.csv'))
  runs = {
    b: {s: os.path.join(work, 'sparse', f'{b}_s{s}') for s in SPARSITIES} for b in SPARSE_BASES
  }
  grad = rep.gradual(runs, ladder)
  for r in grad:
    r['nonzero'] = int(
      r['params'] - r['sparsity'] * rep.compressible_params(os.path.join(ladder, r['base']))
    )
  rep.write_csv(os.path.join(out, 'sparsity_oneshot.csv'), oneshot_rows)
  rep.write_csv(os.path.join(out, 'sparsity_gradual.csv'), grad)
  if sum(r['sparsity'] > 0 for r in grad) < 6:
    return {'sparsity_oneshot': oneshot_rows, 'sparsity_gradual': grad}
  fit = rep.sparse_fit(grad)
  rep.plot_sparsity(oneshot_rows, grad, fit, os.path.join(out, 'sparsity.png'))
  return {'sparsity_gradual': grad, 'sparse_law': fit}


def _report_quantize(work: str, ladder: str, out: str) -> dict:
  rows = rep.read_csv(os.path.join(work, 'quantize.csv'))
  if not rows:
    return {}
  rep.write_csv(os.path.join(out, 'quantize.csv'), rows)
  rep.plot_quantize(rows, os.path.join(out, 'quantize.png'))
  fits = [rep.kumar_fit(rows, s, str(g)) for s, g in SCHEMES if s != 'int8']
  qat = []
  for base, scheme, group in QAT:
    run = os.path.join(work, 'qat', f'{base}_{scheme}_g{group}')
    if parallel.finished(run):
      ptq_row = next((r for r in rows if r['member'] == base and r['scheme'] == scheme
                      and r['group'] == str(group)), None)  # fmt: skip
      ft = {k: os.path.join(work, 'qat', f'{base}_ft_{k}') for k in ('float', f'{scheme}_g{group}')}
      ft_loss = {k: rep.final_eval(v) if parallel.finished(v) else float('nan')
                 for k, v in ft.items()}  # fmt: skip
      qat.append({'base': base, 'scheme': f'{scheme} g{group}', 'float': _loss(ladder, base),
                  'ptq': float(ptq_row['loss']) if ptq_row else float('nan'),
                  'qat_scratch': rep.final_eval(run), 'float_ft': ft_loss['float'],
                  'qat_ft': ft_loss[f'{scheme}_g{group}']})  # fmt: skip
  rep.write_csv(os.path.join(out, 'qat.csv'), qat)
  return {'kumar': fits, 'qat': qat}


def _activations_part(
  work: str, ladder: str, members: Sequence[str], path: str, calib_batches: int, lanes: int
) -> None:
  """W8A8 PTQ of every member (the CSV `path`), the int8 QAT fine-tunes of the smallest and
  largest and their rows (path's *_qat.csv), the tables and the plot beside it."""
  activations(ladder, members, path, calib_batches)
  qat_members = [members[0], members[-1]] if len(members) > 1 else list(members)
  parallel.run_all(act_qat_runs(work, ladder, qat_members), lanes)
  qat_path = path.replace('.csv', '_qat.csv')
  act_qat_rows(work, ladder, qat_members, qat_path, calib_batches)
  rows, qat = rep.read_csv(path), rep.read_csv(qat_path)
  rep.plot_w8a8(rows, path.replace('.csv', '.png'))
  print(rep.w8a8_tables(rows, qat))


# --- Command line --------------------------------------------------------------------------------

FLAGS = flags.FlagValues()
flags.DEFINE_enum(
  'part',
  None,
  ['recovery', 'sparsity', 'quantize', 'nm', 'calibrated', 'calibrated_kernels', 'activations'],
  'what to run',
  flag_values=FLAGS,
)
flags.DEFINE_list('bases', list(SPARSE_BASES), '--part=nm: the members', flag_values=FLAGS)
flags.DEFINE_string(
  'nm_csv', 'docs/compression/sparsity_nm.csv', '--part=nm: merged into', flag_values=FLAGS
)
flags.DEFINE_string('workdir', 'workdirs/compress', 'study directory', flag_values=FLAGS)
flags.DEFINE_string(
  'ladder', 'workdirs/ladder', 'the ladder sweep (its members)', flag_values=FLAGS
)
flags.DEFINE_integer(
  'lanes',
  1,
  'trainings at once, each on its own device subset (scaling.parallel)',
  flag_values=FLAGS,
)
flags.DEFINE_list(
  'members', [], '--part=calibrated: members (default: each size at its most tokens, seed 0)',
  flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_string(
  'calibrated_csv', 'docs/compression/gptq_awq.csv', '--part=calibrated: rows added to',
  flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_integer(
  'calib_batches', 8, '--part=calibrated / activations: calibration batches', flag_values=FLAGS
)
flags.DEFINE_string(
  'act_csv', 'docs/compression/w8a8.csv', '--part=activations: rows added to (and *_qat.csv)',
  flag_values=FLAGS,
)  # fmt: skip
flags.DEFINE_string('report', '', 'write tables, fits and plots to this dir', flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> None:
  from train import cli

  cli.parse(FLAGS, argv, __doc__)
  f = FLAGS
  if f.report:
    print(json.dumps(report(f.workdir, f.ladder, f.report), indent=1, default=float))
    return
  if not f.part:
    cli.usage_error('give --part=recovery|sparsity|quantize, or --report=DIR')
  members = f.members or (largest_members(f.ladder) if os.path.isdir(f.ladder) else [])
  needed = {'nm': f.bases, 'calibrated': members, 'calibrated_kernels': members,
            'activations': members}.get(f.part, (TEACHER, *SPARSE_BASES))  # fmt: skip
  if f.part.startswith(('calibrated', 'activations')) and not members:
    cli.usage_error(f'--ladder: {f.ladder} has no seed-0 lr 2^-7 members (give --members)')
  missing = [b for b in needed if not os.path.isdir(os.path.join(f.ladder, b))]
  if missing:
    cli.usage_error(f'--ladder: {f.ladder} has no member {missing[0]} (run the ladder first)')
  if f.part == 'calibrated':
    path = calibrated(f.ladder, members, f.calibrated_csv, f.calib_batches)
    print(rep.calibrated_tables(rep.read_csv(path)))
    return
  if f.part == 'activations':
    _activations_part(f.workdir, f.ladder, members, f.act_csv, f.calib_batches, f.lanes)
    return
  if f.part == 'calibrated_kernels':  # int4 per channel, per kernel, of each --members
    path = f.calibrated_csv.replace('.csv', '_kernels.csv')
    for member in members:
      print(rep.read_csv(calibrated_kernels(f.ladder, member, 'int4', 0, path)))
    return
  os.makedirs(f.workdir, exist_ok=True)
  if f.part == 'nm':
    parallel.run_all(nm_runs(f.workdir, f.ladder, f.bases), f.lanes)
    print(json.dumps(nm_rows(f.workdir, f.ladder, f.nm_csv, f.bases), indent=1))
  elif f.part == 'recovery':
    parallel.run_all(recovery_runs(f.workdir, f.ladder), f.lanes)
  elif f.part == 'sparsity':
    parallel.run_all(gradual_runs(f.workdir, f.ladder), f.lanes)
    oneshot(f.workdir, f.ladder)
  else:
    parallel.run_all(qat_runs(f.workdir, f.ladder), f.lanes)
    ptq(f.workdir, f.ladder)


if __name__ == '__main__':
  main()
