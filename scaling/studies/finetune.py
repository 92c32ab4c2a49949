"""How fine-tuning scales (issue 25): pretrained bases x fine-tuning examples x methods on the
stdlib naming task (train/data/name_task.py, configs/finetune.py), and the laws fitted to it.

  python -m scaling.studies.finetune --workdir=workdirs/ft_study --lanes=2 \
      --bases=workdirs/ladder/N7.51e4_D1.5e6_lr7.81e-3,... --examples=125,500,2000,0 \
      --methods=full,lora1,lora4,lora16,scratch
  python -m scaling.studies.finetune --fit=docs/finetuning/results.csv --holdout_base=<largest> \
      [--png=docs/finetuning/law.png]

Runs: W/data_n<N>/ holds the task with the first N training examples (0: all), prepared once
before the runs start; W/<base>_n<N>_<method>/ is one configs/finetune.py run, a process
(`--run=<name>`) that scaling.parallel starts --lanes at a time (resumable, skipped once
W/<run>/result.json exists). Each run's W/best (the best task loss) is scored afterwards: task
loss, pre-training loss (forgetting: minus the base's), lm-eval's name_mc accuracy and name_gen
exact match; the base gets the same scores once ("before"); the scored row is W/<run>/result.json,
written last. W/results.csv gathers the rows.

--fit fits, per method, Zhang et al. 2024's multiplicative law L = A·X^-α·D_f^-β + E of the task
loss (X: the base's parameters; D_f: fine-tuning examples) on every base but --holdout_base and
predicts that base's runs; from-scratch runs get L = E + B·D_f^-β per size, whose inverse at a
fine-tuned loss is the effective data of Hernandez et al. 2021 (D_T = D_E - D_f).
"""

import csv
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import flags
from scipy import optimize

from configs import finetune as finetune_config
from scaling import checks, parallel, results

COLUMNS = (
  'name', 'base', 'base_params', 'pretrain_tokens', 'examples', 'method', 'rank',
  'trainable_params', 'steps', 'best_step', 'task_loss', 'task_loss_before', 'pretrain_loss',
  'pretrain_loss_before', 'forgetting', 'mc_acc', 'mc_acc_before', 'gen_em', 'gen_em_before',
  'wall_s',
)  # fmt: skip


def method_arg(method: str) -> str:
  """configs/finetune.py's variant for 'full', 'lora<r>' or 'scratch'."""
  if method == 'full':
    return ''
  if method == 'scratch':
    return 'scratch'
  if method.startswith('lora') and method[4:].isdigit() and int(method[4:]) > 0:
    return f'lora={int(method[4:])}'
  raise ValueError(f'--methods: {method!r} is not full, scratch or lora<rank>')


def _data_dir(workdir: str, examples: int) -> str:
  return os.path.join(workdir, f'data_n{examples}')


def plan(bases: Sequence[str], examples: Sequence[int], methods: Sequence[str]) -> list[tuple]:
  """(name, base, examples, method) of every run, largest budgets last within a base."""
  for m in methods:
    method_arg(m)
  return [
    (f'{os.path.basename(os.path.normpath(b))}_n{n}_{m}', b, n, m)
    for b in bases
    for n in examples
    for m in methods
  ]


def jobs(workdir: str, runs: Sequence[tuple]) -> list[parallel.Job]:
  """A Job per run of `plan`: this module with --run=<name> trains, scores and writes
  W/<name>/result.json (done once it exists)."""
  out = []
  for name, base, n, method in runs:
    argv = [sys.executable, '-m', 'scaling.studies.finetune', f'--workdir={workdir}',
            f'--bases={base}', f'--examples={n}', f'--methods={method}', f'--run={name}']  # fmt: skip
    out.append(parallel.Job(name, argv, os.path.join(workdir, name)))
  return out


def _config(workdir: str, base: str, examples: int, method: str, lm_eval: bool = False):
  arg = f'base={base},data={_data_dir(workdir, examples)},lm_eval={int(lm_eval)}'
  extra = method_arg(method)
  return finetune_config.get_config(arg + (',' + extra if extra else ''))


def prepare(workdir: str, examples: Sequence[int], base: str) -> None:
  """The task files and their token shards of every data size (before lanes share them)."""
  from train.data import name_task, pipeline

  for n in examples:
    d = _data_dir(workdir, n)
    if not os.path.exists(os.path.join(d, 'name_task.jsonl')):
      name_task.write(d, train_examples=n)
    pipeline.make_datasets(_config(workdir, base, n, 'full'), 0, 1)


def scores(config, params, task_dir: str) -> dict[str, float]:
  """Task loss, pre-training loss and lm-eval scores of `params` under the run's config."""
  import flax.linen as nn
  import jax

  from train import context, evaluators, sharding, validation
  from train.tools import harness

  config = config.copy_and_resolve_references()
  config.lm_eval.update(tasks=('name_gen', 'name_mc'), include_path=task_dir)
  r = context.setup(validation.derive(config))
  task = context.lm_task(r)
  out = {}
  with jax.set_mesh(r.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    for ev in (evaluators.EvalLoss(), harness.LmEvalEvaluator(config.lm_eval)):
      ev.start(r, task)
      out.update(ev(params))
  jsonl = next(k for k in out if k.startswith('eval/jsonl') and k.endswith('/loss'))
  return {
    'task_loss': out[jsonl],
    'pretrain_loss': out['eval/stdlib_corpus/loss'],
    'mc_acc': out['lm_eval/name_mc/acc'],
    'gen_em': out['lm_eval/name_gen/exact_match'],
  }


def _load(path: str, config):
  import jax

  from train import context, init_from, validation

  r = context.setup(validation.derive(config), with_data=False)
  with jax.set_mesh(r.mesh):
    return init_from.load_params(path, r.derived.model, r.state_shardings.params)[1]


def base_scores(workdir: str, base: str, examples: int) -> dict[str, float]:
  """The base's scores (cached in W/before_<base>.json): the 'before' of its fine-tunes."""
  from train import workdir as workdir_lib

  path = os.path.join(workdir, f'before_{os.path.basename(os.path.normpath(base))}.json')
  if os.path.exists(path):
    return workdir_lib.read_json(path)
  config = _config(workdir, base, examples, 'full')
  out = scores(config, _load(base, config), _data_dir(workdir, examples))
  workdir_lib.write_json(path, out)
  return out


def run_one(workdir: str, name: str, base: str, examples: int, method: str) -> dict:
  """Train (or resume) one run, score its best checkpoint, write the row to W/<name>/result.json
  (atomically, last: the run is done once it exists)."""
  import jax

  import models
  from models import lora
  from train import init_from, loop, validation
  from train import workdir as workdir_lib

  w = os.path.join(workdir, name)
  config = _config(workdir, base, examples, method)
  tic = time.time()
  derived = validation.derive(config)
  loop.run(derived, w, init_params_fn=init_from.params_fn(derived.config))
  record = workdir_lib.read_json(os.path.join(w, 'best', 'record.json'))
  params = _load(os.path.join(w, 'best'), config)
  after = scores(config, params, _data_dir(workdir, examples))
  before = base_scores(workdir, base, examples)
  with open(os.path.join(base, 'config.json')) as f:
    saved = json.load(f)
  shapes, mask = models.param_shapes(derived.model), models.trainable(derived.model)
  size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  trained = jax.tree.map(lambda x, t: x if t else None, shapes, mask)
  steps = max(int(s) for s in record['history'])
  row = {
    'name': name,
    'base': os.path.basename(os.path.normpath(base)),
    'base_params': size(lora.split(shapes)[0]),
    'pretrain_tokens': saved['train']['num_steps']
    * saved['train']['global_batch_size']
    * saved['data']['seq_len'],
    'examples': finetune_config.examples_in(_data_dir(workdir, examples)),
    'method': method,
    'rank': config.model.lora_rank,
    'trainable_params': size(trained),
    'steps': steps,
    'best_step': record['best_step'],
    'forgetting': after['pretrain_loss'] - before['pretrain_loss'],
    'wall_s': round(time.time() - tic, 1),
    **after,
    **{f'{k}_before': v for k, v in before.items() if k != 'pretrain_loss'},
    'pretrain_loss_before': before['pretrain_loss'],
  }
  workdir_lib.write_json(os.path.join(w, results.RESULT_FILE), row)
  return row


def gather(workdir: str) -> str:
  """W/results.csv from every finished run's result.json; returns its path."""
  rows = []
  for d in sorted(os.listdir(workdir)):
    p = os.path.join(workdir, d, results.RESULT_FILE)
    if os.path.exists(p):
      with open(p) as f:
        rows.append(json.load(f))
  path = os.path.join(workdir, 'results.csv')
  with open(path + '.tmp', 'w', newline='') as f:
    w = csv.DictWriter(f, COLUMNS)
    w.writeheader()
    w.writerows({k: r.get(k) for k in COLUMNS} for r in rows)
  os.replace(path + '.tmp', path)
  return path


# --- The laws ------------------------------------------------------------------------------------


def multiplicative(p: np.ndarray, x: np.ndarray, d: np.ndarray) -> np.ndarray:
  """Zhang et al. 2024: L = A·X^-α·D_f^-β + E with p = (log A, α, β, E)."""
  log_a, alpha, beta, e = p
  return np.exp(log_a - alpha * np.log(x) - beta * np.log(d)) + e


def fit_multiplicative(x, d, loss, starts: int = 16, seed: int = 0) -> np.ndarray:
  """Least squares in log L (relative errors), from `starts` random starts; the best p."""
  x, d, loss = map(np.asarray, (x, d, loss))
  rng = np.random.default_rng(seed)
  best = None
  for _ in range(starts):
    p0 = [rng.uniform(0, 8), rng.uniform(0, 0.8), rng.uniform(0, 0.8), rng.uniform(0, loss.min())]
    res = optimize.least_squares(
      lambda p: np.log(multiplicative(p, x, d)) - np.log(loss),
      p0,
      bounds=([-20, 0, 0, 0], [40, 3, 3, loss.min()]),
    )
    if best is None or res.cost < best.cost:
      best = res
  return best.x


def power(p: np.ndarray, d: np.ndarray) -> np.ndarray:
  """L = E + B·D^-β with p = (log B, β, E)."""
  return np.exp(p[0] - p[1] * np.log(d)) + p[2]


def fit_power(d, loss) -> np.ndarray:
  d, loss = np.asarray(d, float), np.asarray(loss, float)
  res = optimize.least_squares(
    lambda p: np.log(power(p, d)) - np.log(loss),
    [1.0, 0.3, 0.5 * loss.min()],
    bounds=([-20, 0, 0], [40, 3, loss.min()]),
  )
  return res.x


def effective_examples(p: np.ndarray, loss: float) -> float:
  """The from-scratch examples D_E reaching `loss` under power law p (inf below its E)."""
  log_b, beta, e = p
  if loss <= e:
    return float('inf')
  return float(np.exp((log_b - np.log(loss - e)) / beta))


def fit_report(rows: list[dict], holdout_base: str) -> dict:
  """Per method: the law fitted without `holdout_base`, its in-sample and held-out errors; per
  scratch size: the power law; per fine-tuned run: the effective data transferred."""
  out = {'laws': {}, 'held_out': {}, 'transfer': []}
  methods = sorted({r['method'] for r in rows})
  for m in methods:
    mine = [r for r in rows if r['method'] == m]
    fit = [r for r in mine if r['base'] != holdout_base]
    if len(fit) < 5:
      continue
    p = fit_multiplicative(
      [r['base_params'] for r in fit], [r['examples'] for r in fit], [r['task_loss'] for r in fit]
    )
    pred = lambda r, p=p: float(multiplicative(p, r['base_params'], r['examples']))
    err = lambda rs, pred=pred: [pred(r) / r['task_loss'] - 1 for r in rs]
    low = min(r['task_loss'] for r in fit)
    out['laws'][m] = {
      'A': float(np.exp(p[0])), 'alpha': float(p[1]), 'beta': float(p[2]), 'E': float(p[3]),
      'fit_mean_abs_rel_error': float(np.mean(np.abs(err(fit)))),
      'warnings': checks.law_warnings(
        f'fine-tuning ({m})', {'log_A': p[0], 'alpha': p[1], 'beta': p[2], 'E': p[3]},
        bounds={'log_A': (-20, 40), 'alpha': (0, 3), 'beta': (0, 3), 'E': (0, low)},
        exponents=('alpha', 'beta'), floor='E', lowest_loss=low,
      ),
    }  # fmt: skip
    held = [r for r in mine if r['base'] == holdout_base]
    out['held_out'][m] = [
      {'name': r['name'], 'observed': r['task_loss'], 'predicted': pred(r), 'rel_error': e}
      for r, e in zip(held, err(held))
    ]
  for size in sorted({r['base_params'] for r in rows}):
    scratch = [r for r in rows if r['method'] == 'scratch' and r['base_params'] == size]
    if len(scratch) < 3:
      continue
    p = fit_power([r['examples'] for r in scratch], [r['task_loss'] for r in scratch])
    for r in rows:
      if r['base_params'] == size and r['method'] != 'scratch':
        d_e = effective_examples(p, r['task_loss'])
        out['transfer'].append(
          {'name': r['name'], 'examples': r['examples'], 'effective': d_e, 'transferred': d_e - r['examples']}
        )  # fmt: skip
  return out


def read_rows(path: str) -> list[dict]:
  rows = results.read_dicts(path)
  for r in rows:
    for k, v in r.items():
      if k not in ('name', 'base', 'method'):
        r[k] = float(v) if v not in ('', 'None') else float('nan')
  return rows


def plot(rows: list[dict], report: dict, png: str) -> None:
  """Task loss vs fine-tuning examples per base and method (law as lines); forgetting vs gain.

  The law is fitted without the held-out base (report['held_out']): its points are diamonds and
  its line dashed (the law extrapolated in base size). Scratch runs have no forgetting: not in the
  forgetting-vs-gain panel."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from scaling import plot_style as style

  methods = sorted({r['method'] for r in rows})
  held_names = {h['name'] for hs in report.get('held_out', {}).values() for h in hs}
  fig, axes = plt.subplots(1, len(methods) + 1, figsize=(3.4 * (len(methods) + 1), 4.2))
  sizes = sorted({r['base_params'] for r in rows})
  colors = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
  d = np.geomspace(min(r['examples'] for r in rows), max(r['examples'] for r in rows), 50)
  for ax, m in zip(axes, methods):
    law = report['laws'].get(m)
    for c, size in zip(colors, sizes):
      mine = sorted(
        (r for r in rows if r['method'] == m and r['base_params'] == size),
        key=lambda r: r['examples'],
      )
      held = bool(mine) and mine[0]['name'] in held_names
      label = f'{size / 1e3:.0f}K' + (' (held out; law extrapolated)' if held else '')
      mk = dict(style.HELD_OUT, color=c) if held else dict(marker='o', ls='none', color=c, ms=5)
      ax.plot([r['examples'] for r in mine], [r['task_loss'] for r in mine], label=label, **mk)
      if law:
        y = law['A'] * size ** -law['alpha'] * d ** -law['beta'] + law['E']
        ax.plot(d, y, '--' if held else '-', color=c, lw=1 if held else 0.8)
    xlabel = 'fine-tuning examples'
    style.style_axis(ax, xlabel, None, m, xlog=True, max_ticks=4)
  axes[0].set_ylabel('task loss, best checkpoint (nats/byte)')
  title = 'base params (lines: the law)'
  style.ordered_legend(
    axes[0],
    fontsize=7,
    title=title,
    title_fontsize=7,
    where=fig,
    loc='lower center',
    ncol=len(sizes),
  )
  ax = axes[-1]
  for m, marker in zip([m for m in methods if m != 'scratch'], 'osd^v<>'):
    mine = [r for r in rows if r['method'] == m]
    gain = [r['task_loss_before'] - r['task_loss'] for r in mine]
    ax.plot(gain, [r['forgetting'] for r in mine], marker, ls='none', label=m, alpha=0.7)
  style.style_axis(
    ax, 'task gain (nats/byte)', 'forgetting: pre-training loss + (nats/byte)', 'forgetting vs gain'
  )
  style.ordered_legend(ax, fontsize=7)
  fig.tight_layout(rect=(0, 0.1, 1, 1))  # room for the figure legend below.
  fig.savefig(png, dpi=110)
  plt.close(fig)


def table(rows: list[dict]) -> str:
  """Markdown: per base and examples, each method's best task loss, forgetting and name_mc acc."""
  methods = sorted({r['method'] for r in rows}, key=lambda m: (m != 'full', m != 'scratch', m))
  by = {(r['base_params'], r['examples'], r['method']): r for r in rows}
  head = '| base params | examples | before: task loss, mc acc | ' + ' | '.join(methods) + ' |'
  lines = [head, '|' + '---|' * (3 + len(methods))]
  for size, n in sorted({(r['base_params'], r['examples']) for r in rows}):
    any_row = next(r for (s, e, _), r in by.items() if (s, e) == (size, n))
    cells = [
      f'{size:,.0f}',
      f'{n:,.0f}',
      f'{any_row["task_loss_before"]:.3f}, {any_row["mc_acc_before"]:.3f}',
    ]
    for m in methods:
      r = by.get((size, n, m))
      cells.append(
        f'{r["task_loss"]:.3f} / {r["forgetting"]:+.2f} / {r["mc_acc"]:.3f}' if r else ''
      )
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# --- Command line --------------------------------------------------------------------------------

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', '', 'Study directory.', flag_values=FLAGS)
flags.DEFINE_list('bases', [], 'Pretrained workdirs.', flag_values=FLAGS)
flags.DEFINE_list(
  'examples', ['125', '500', '2000', '0'], 'Fine-tuning examples (0: all).', flag_values=FLAGS
)
flags.DEFINE_list(
  'methods', ['full', 'lora1', 'lora4', 'lora16', 'scratch'], 'Methods.', flag_values=FLAGS
)
flags.DEFINE_integer(
  'lanes', 1, 'Runs at once, each on its own device subset (scaling.parallel).', flag_values=FLAGS
)
flags.DEFINE_string('run', '', '(internal) train and score this one run here.', flag_values=FLAGS)
flags.DEFINE_string(
  'fit', '', 'Fit the laws to this results.csv instead of running.', flag_values=FLAGS
)
flags.DEFINE_string(
  'holdout_base', '', '--fit: the base whose runs are predicted.', flag_values=FLAGS
)
flags.DEFINE_string('png', '', '--fit: plot path.', flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> None:
  from train import cli

  cli.parse(FLAGS, argv, __doc__)
  f = FLAGS
  if f.fit:
    rows = read_rows(f.fit)
    report = fit_report(rows, f.holdout_base or max(rows, key=lambda r: r['base_params'])['base'])
    if f.png:
      plot(rows, report, f.png)
    print(json.dumps(report, indent=1))
    print('task loss (best) / forgetting (pre-training loss change) / name_mc accuracy:')
    print(table(rows))
    checks.emit([w for law in report['laws'].values() for w in law['warnings']])
    return
  if not f.workdir or not f.bases:
    cli.usage_error('--workdir and --bases are required (or --fit=results.csv)')
  missing = [b for b in f.bases if not os.path.exists(os.path.join(b, 'config.json'))]
  if missing:
    cli.usage_error(f'--bases: {missing[0]} is not a trained workdir (no config.json)')
  examples = [int(n) for n in f.examples]
  runs = plan(f.bases, examples, f.methods)
  if f.run:
    picked = [r for r in runs if r[0] == f.run]
    if not picked:
      cli.usage_error(f'--run: {f.run} is not a run of --bases, --examples and --methods')
    _run_here(f.workdir, *picked[0])
    return
  prepare(f.workdir, examples, f.bases[0])
  try:
    parallel.run_all(jobs(f.workdir, runs), f.lanes)
  finally:
    print(gather(f.workdir))


def _run_here(workdir: str, name: str, base: str, n: int, method: str) -> None:
  """--run: one run of `plan`, trained and scored in this process."""
  logging.info('fine-tuning run %s', name)
  row = run_one(workdir, name, base, n, method)
  logging.info('%s: task loss %.4f (before %.4f), forgetting %+.4f, mc acc %.3f', name,
               row['task_loss'], row['task_loss_before'], row['forgetting'], row['mc_acc'])  # fmt: skip


if __name__ == '__main__':
  main()
