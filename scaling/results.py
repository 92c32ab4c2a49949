"""Results I/O: reads a results CSV (one training run per row) into arrays of params, tokens, FLOPs
and loss; writes CSVs (one atomic writer); builds a sweep's results.csv and curves.csv from its
members' result.json files.

Columns are configurable; tokens may instead come from a FLOPs column as D = C / (6N), the
C = 6ND convention of Kaplan et al. 2020 and Hoffmann et al. 2022.
"""

import csv
import dataclasses
import fcntl
import io
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from scaling import config_hash as hash_lib
from scaling import laws


@dataclasses.dataclass
class Runs:
  """Validated runs: 1-D float arrays of equal length, all positive and finite."""

  names: list
  params: np.ndarray
  tokens: np.ndarray
  flops: np.ndarray  # from the FLOPs column when present, else 6·N·D.
  loss: np.ndarray
  path: str = ''
  selection: str = ''  # how several runs per (N, D) (lr / seed axes) became one.

  def __len__(self) -> int:
    return len(self.loss)

  def subset(self, idx: npt.ArrayLike) -> 'Runs':
    """The runs at integer indices idx (repeats allowed, for bootstrap resampling)."""
    idx = np.asarray(idx, int)
    return Runs(
      [self.names[i] for i in idx],
      self.params[idx],
      self.tokens[idx],
      self.flops[idx],
      self.loss[idx],
      self.path,
      self.selection,
    )


def _value(
  path: str | os.PathLike, row_no: int, name: str, col: str, text: str | None, zero_ok: bool = False
) -> float:
  """Parse one cell as a positive (zero_ok: non-negative) finite float, or raise a ValueError naming
  the row and column."""
  where = f'{path}: row {row_no} ({name!r}), column {col!r}'
  try:
    v = float(text)
  except (TypeError, ValueError):
    raise ValueError(f'{where}: not a number: {text!r}') from None
  if math.isnan(v):
    raise ValueError(f'{where}: value is NaN')
  if math.isinf(v):
    raise ValueError(f'{where}: value is infinite')
  if v < 0 or (v == 0 and not zero_ok):
    raise ValueError(f'{where}: value must be {">= 0" if zero_ok else "positive"}, got {v:g}')
  return v


def select_lr(
  rows: Sequence[dict],
  path: str,
  key_cols: Sequence[str],
  loss_col: str = 'loss',
  lr: str | float = 'best',
  lr_col: str = 'lr',
  seed_col: str = 'seed',
  fit_below: float | None = None,
  flops_col: str = 'flops',
) -> tuple[list[dict], str]:
  """Collapses an lr / seed sweep to one row per (N, D): the best lr (lr='best') or the declared
  (transferred) lr, its loss the mean over its seeds. 'best' compares like with like: each lr's
  mean over the seeds every lr of that (N, D) has. With fit_below, only the (N, D) at or below
  that many FLOPs choose their own lr; those above (held out) take the lr the fitted ones chose
  most often, so no held-out loss picks its own lr. Returns (rows, description)."""
  groups = {}
  for r in rows:
    groups.setdefault(tuple((r.get(c) or '').strip() for c in key_cols), []).append(r)
  lrs = sorted({float(r[lr_col]) for r in rows if (r.get(lr_col) or '').strip()})
  seeds = {(r.get(seed_col) or '').strip() for r in rows}
  if all(len(g) == 1 for g in groups.values()):
    return rows, 'one run per (N, D)'
  by_group = {
    key: _losses_by_lr(group, path, key_cols, key, loss_col, lr_col, seed_col)
    for key, group in groups.items()
  }

  def held(group: list) -> bool:
    return fit_below is not None and float(group[0].get(flops_col) or 0) > fit_below

  chosen, unmatched = {}, 0
  for key, by_lr in by_group.items():
    if lr != 'best':
      match = [x for x in by_lr if math.isclose(x, float(lr), rel_tol=1e-6)]
      if not match:
        raise ValueError(
          f'{path}: no run with {lr_col}={lr} for {dict(zip(key_cols, key))} (have {sorted(by_lr)})'
        )
      chosen[key] = match[0]
    elif not held(groups[key]):
      common = set.intersection(*(set(v) for v in by_lr.values()))
      use = common or None  # no seed at every lr: each lr's own seeds (said in the description).
      unmatched += not common
      chosen[key] = min(
        by_lr,
        key=lambda x: float(np.mean([v for s, v in by_lr[x].items() if use is None or s in use])),
      )
  how = f'best of {len(lrs)} lrs per (N, D) on the seeds every lr has'
  if lr != 'best':
    how = f'declared lr {float(lr):g}'
  elif fit_below is not None:
    votes = list(chosen.values())
    if not votes:
      raise ValueError(f'{path}: no (N, D) at or below --fit_below={fit_below:g} to choose the lr')
    rule = max(sorted(set(votes)), key=votes.count)
    _give_held_out(chosen, by_group, rule, path, key_cols)
    how += f' at or below {fit_below:g} FLOPs; above it the lr they chose most often ({rule:g})'
  out = []
  for key, group in groups.items():
    row = dict(next(r for r in group if float(r[lr_col]) == chosen[key]))
    row[loss_col] = repr(float(np.mean(list(by_group[key][chosen[key]].values()))))
    out.append(row)
  if unmatched:
    how += f' ({unmatched} (N, D) with no seed at every lr: each lr on its own seeds)'
  return out, f'{how}; loss = mean over {len(seeds)} seed(s)'


def _losses_by_lr(group, path, key_cols, key, loss_col, lr_col, seed_col) -> dict:
  """{lr: {seed: loss}} of one (N, D)'s runs; one line naming the (N, D) if a row lacks its lr."""
  by_lr = {}
  for r in group:
    try:
      by_lr.setdefault(float(r[lr_col]), {})[(r.get(seed_col) or '').strip()] = float(r[loss_col])
    except (KeyError, TypeError, ValueError):
      raise ValueError(
        f'{path}: several runs share {dict(zip(key_cols, key))} but a row has no '
        f'numeric {lr_col!r} to tell them apart'
      ) from None
  return by_lr


def _give_held_out(chosen: dict, by_group: dict, rule: float, path, key_cols) -> None:
  """Every (N, D) not yet chosen (held out) takes the fit set's lr `rule`."""
  for key in by_group:
    if key not in chosen:
      if rule not in by_group[key]:
        raise ValueError(
          f"{path}: the held-out {dict(zip(key_cols, key))} has no run at the fit set's lr "
          f'{rule:g} (have {sorted(by_group[key])})'
        )
      chosen[key] = rule


def read_rows(path: str | os.PathLike) -> tuple[list[str], list[dict]]:
  """(header, rows as dicts) of a CSV, names stripped, blank rows skipped. Every row must have
  the header's number of fields and no NUL byte: a row cut short (a torn write, a truncated
  copy) is a ValueError naming the file and line, never a silently shorter row."""
  with open(path, newline='', encoding='utf-8-sig') as f:
    text = f.read()
  if '\0' in text:
    line = text.count('\n', 0, text.index('\0')) + 1
    raise ValueError(f'{path}:{line}: a NUL byte (the file was cut short or damaged)')
  reader = csv.reader(io.StringIO(text), skipinitialspace=True)
  header = [h.strip() for h in next(reader, [])]
  rows = []
  for fields in reader:
    if not any(v.strip() for v in fields):
      continue
    if len(fields) != len(header):
      raise ValueError(
        f'{path}:{reader.line_num}: {len(fields)} fields where the header has {len(header)} '
        '(a row cut short or a stray comma); repair or remove that row'
      )
    rows.append(dict(zip(header, fields)))
  if rows and not text.endswith(('\n', '\r')):
    logging.warning('%s: its last row has no line end (cut short?); read as it is', path)
  return header, rows


def read_dicts(path: str | os.PathLike) -> list[dict]:
  """The rows of read_rows only: for the study CSVs other modules read."""
  return read_rows(path)[1]


def read_results(
  path: str | os.PathLike,
  params_col: str = 'params',
  tokens_col: str = 'tokens',
  loss_col: str = 'loss',
  flops_col: str = 'flops',
  name_col: str = 'name',
  min_rows: int = 3,
  lr: str | float | None = 'best',
  fit_below: float | None = None,
) -> Runs:
  """Reads runs from a CSV; tokens from tokens_col, else D = C / (6N) from flops_col.

  Pass tokens_col='' to force tokens from FLOPs. Rows of an lr / seed sweep are collapsed by
  select_lr (the returned Runs says how in `selection`); lr=None keeps every row (loss curves).
  Raises ValueError on a missing column, fewer than min_rows rows, or a NaN / non-numeric /
  non-positive value (naming row and column).
  """
  header, rows = read_rows(path)
  have = ', '.join(header) or '(none)'

  def need(col: str, why: str = '') -> None:
    if col not in header:
      raise ValueError(f'{path}: missing column {col!r}{why} (have: {have})')

  need(params_col)
  need(loss_col)
  use_tokens = bool(tokens_col) and tokens_col in header
  has_flops = bool(flops_col) and flops_col in header
  if not use_tokens:
    if tokens_col and not has_flops:
      need(tokens_col, f' (and no {flops_col!r} column to derive tokens as C/(6N))')
    need(flops_col, ' (needed to derive tokens as C/(6N))')
  selection = 'every row'
  if lr is not None:
    key_cols = [c for c in (params_col, tokens_col, flops_col) if c and c in header]
    rows, selection = select_lr(
      rows, path, key_cols, loss_col, lr, fit_below=fit_below, flops_col=flops_col
    )
  if len(rows) < min_rows:
    raise ValueError(f'{path}: {len(rows)} rows, need at least {min_rows}')

  names, params, tokens, flops, loss = [], [], [], [], []
  for i, r in enumerate(rows, start=1):
    name = (r.get(name_col) or '').strip() or f'row{i}'
    names.append(name)
    n = _value(path, i, name, params_col, r[params_col])
    params.append(n)
    loss.append(_value(path, i, name, loss_col, r[loss_col]))
    c = None
    if has_flops and not (use_tokens and not (r[flops_col] or '').strip()):
      c = _value(
        path, i, name, flops_col, r[flops_col]
      )  # blank FLOPs are fine when tokens are given.
    d = _value(path, i, name, tokens_col, r[tokens_col]) if use_tokens else c / (6.0 * n)
    tokens.append(d)
    flops.append(c if c is not None else 6.0 * n * d)
  return Runs(
    names, np.array(params), np.array(tokens), np.array(flops), np.array(loss), str(path), selection
  )


@dataclasses.dataclass
class Curves(Runs):
  """Loss curves (one row per evaluation of a member, `names` its member) with the step and the lr
  areas S1 (lr_sum) and S2 (lr_anneal) there (scaling.laws.lr_areas)."""

  step: np.ndarray | None = None
  lr_sum: np.ndarray | None = None
  lr_anneal: np.ndarray | None = None

  def subset(self, idx: npt.ArrayLike) -> 'Curves':
    """The rows at integer indices idx."""
    idx = np.asarray(idx, int)
    base = super().subset(idx)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(Runs)}
    return Curves(
      **fields, step=self.step[idx], lr_sum=self.lr_sum[idx], lr_anneal=self.lr_anneal[idx]
    )


CURVE_LAW_COLUMNS = ('step', 'lr_sum', 'lr_anneal')


def final_rows(runs: Runs) -> dict:
  """{member name: index of its last row (most tokens)}."""
  final = {}
  for i, name in enumerate(runs.names):
    if name not in final or runs.tokens[i] > runs.tokens[final[name]]:
      final[name] = i
  return final


def _curve_lr_keep(
  rows: Sequence[dict],
  runs: Runs,
  lr: str | float,
  lr_col: str = 'lr',
  fit_below: float | None = None,
):
  """Which rows belong to a member at its (N, D)'s chosen lr: select_lr's rule on the members'
  final losses (like with like over seeds; with fit_below, held-out (N, D) take the fit set's lr)
  or the declared lr; every row when the lr column is blank."""
  final = final_rows(runs)
  try:
    lr_of = {n: float(rows[i][lr_col]) for n, i in final.items()}
  except (KeyError, TypeError, ValueError):
    return np.ones(len(runs), bool)
  finals = [
    {'params': repr(float(runs.params[i])), 'tokens': repr(float(runs.tokens[i])),
     'flops': repr(float(runs.flops[i])), 'loss': repr(float(runs.loss[i])), 'lr': repr(lr_of[n]),
     'seed': (rows[i].get('seed') or '').strip(), 'name': n}
    for n, i in final.items()
  ]  # fmt: skip
  if lr == 'best':
    picked, _ = select_lr(finals, runs.path, ('params', 'tokens'), fit_below=fit_below)
    chosen = {(r['params'], r['tokens']): float(r['lr']) for r in picked}
  else:
    chosen = {}
    for f in finals:
      key = (f['params'], f['tokens'])
      if math.isclose(float(f['lr']), float(lr), rel_tol=1e-6):
        chosen[key] = float(f['lr'])
    for f in finals:
      if (f['params'], f['tokens']) not in chosen:
        raise ValueError(
          f'{runs.path}: no member with {lr_col}={lr} at (N, D) = ({f["params"]}, {f["tokens"]})'
        )
  keep = {f['name'] for f in finals if float(f['lr']) == chosen[(f['params'], f['tokens'])]}
  return np.array([n in keep for n in runs.names])


def read_curves(
  path: str | os.PathLike,
  params_col: str = 'params',
  flops_col: str = 'flops',
  lr: str | float | None = 'best',
  fit_below: float | None = None,
  skip_warmup: bool = True,
  min_rows: int = 4,
  areas: str = 'tokens',
) -> Curves:
  """A sweep's curves.csv (every evaluation) for schedule-aware laws; ValueError naming the column
  when the lr areas are missing. Rows inside a member's warmup are dropped (skip_warmup), and of an
  lr sweep only the members at each (N, D)'s chosen lr are kept (lr=None: all).

  areas='tokens' (default) measures S1 and S2 per million tokens (each step's lr weighted by its
  tokens, tokens / step of the row) instead of per step: members whose batches differ (a ladder's
  per-size batch) then share one law; with one batch it is a constant factor the law absorbs.
  On the prediction ladder the per-step areas miss its held-out members by 15.7 % on average,
  the token areas by 6.7 % (docs/scaling.md)."""
  runs = read_results(path, params_col, 'tokens', 'loss', flops_col, min_rows=1, lr=None)
  header, rows = read_rows(path)
  for col in CURVE_LAW_COLUMNS:
    if col not in header:
      raise ValueError(
        f'{path}: missing column {col!r} (a curves.csv from before the lr areas; rebuild it '
        'with scaling.results.merge_results)'
      )
  cols = {
    c: np.array(
      [
        _value(path, i, n, c, r[c], c == 'lr_anneal')
        for i, (n, r) in enumerate(zip(runs.names, rows), 1)
      ]
    )
    for c in CURVE_LAW_COLUMNS
  }
  if areas not in ('tokens', 'steps'):
    raise ValueError(f"areas must be 'tokens' or 'steps', got {areas!r}")
  if areas == 'tokens':
    per_step = runs.tokens / np.maximum(cols['step'], 1) / 1e6
    cols['lr_sum'], cols['lr_anneal'] = cols['lr_sum'] * per_step, cols['lr_anneal'] * per_step
  keep = np.ones(len(runs), bool)
  if skip_warmup and 'warmup_steps' in header:
    keep &= cols['step'] > np.array([float(r['warmup_steps'] or 0) for r in rows])
  if lr is not None and 'lr' in header:
    keep &= _curve_lr_keep(rows, runs, lr, fit_below=fit_below)
  fields = {f.name: getattr(runs, f.name) for f in dataclasses.fields(Runs)}
  curves = Curves(**fields, **cols).subset(np.flatnonzero(keep))
  if len(curves) < min_rows:
    raise ValueError(f'{path}: {len(curves)} evaluations after warmup, need at least {min_rows}')
  return curves


def write_results(
  path: str | os.PathLike, runs: Runs, extra: Mapping[str, npt.ArrayLike] | None = None
) -> None:
  """Writes runs as a CSV with the default column names (plus extra {column: values})."""
  extra = extra or {}
  columns = ('name', 'params', 'tokens', 'flops', 'loss', *extra)
  rows = (
    {
      'name': runs.names[i],
      'params': float(runs.params[i]),
      'tokens': float(runs.tokens[i]),
      'flops': float(runs.flops[i]),
      'loss': float(runs.loss[i]),
      **{k: float(v[i]) for k, v in extra.items()},
    }
    for i in range(len(runs))
  )
  write_csv(path, rows, columns)


def _cell(v: Any) -> str:
  if v is None:
    return ''
  if isinstance(v, float):
    return repr(float(v))  # np.float64's repr is 'np.float64(...)' under NumPy 2.
  return str(v)


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], columns: Sequence[str]) -> None:
  """Writes rows (dicts) atomically with the given columns; floats exact (repr), missing blank."""
  tmp = f'{path}.{os.getpid()}.{threading.get_ident()}.tmp'
  with open(tmp, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(columns)
    for r in rows:
      w.writerow([_cell(r.get(c)) for c in columns])
  os.replace(tmp, path)


# --- a sweep's results -----------------------------------------------------------------------------

RESULT_FILE = 'result.json'
RESULT_COLUMNS = (
  'name',
  'params',
  'non_embedding_params',
  'tokens',
  'flops',
  'loss',
  'bits_per_byte',
  'steps',
  'wall_s',
  'config_hash',
  'kind',
  'budget',
  'target_params',
  'target_tokens',
  'embedding_params',
  'n_layers',
  'd_model',
  'n_heads',
  'd_ff',
  'lr',
  'warmup_steps',
  'tokens_per_step',
  'flops_chinchilla',
  'seed',
  'parametrization',
  'non_embedding_params_with_head',
  'flops_attn_head',
  'eval_set',
  'eval_rows',
)
# What a member's eval covered (train/data/pipeline.py EvalSource.describe): in result.json.
EVAL_SET_KEYS = ('eval_set', 'eval_rows', 'eval_split_rows', 'eval_span', 'eval_doc_segments')
DISTILL_COLUMNS = ('mode', 'teacher_params', 'teacher_loss')
WSD_COLUMNS = ('branch_tokens', 'trunk')
CURVE_COLUMNS = (
  'name',
  'params',
  'non_embedding_params',
  'tokens',
  'flops',
  'loss',
  'lr',
  'seed',
  'parametrization',
  'final',
  'step',
  'lr_now',
  'lr_sum',
  'lr_anneal',
  'warmup_steps',
  'non_embedding_params_with_head',
  'flops_attn_head',
)


def read_json(path: str | os.PathLike) -> dict | None:
  """A JSON file's object, None when there is no file, or (with a warning naming it) when it does
  not parse: a member whose result or meta file was cut short is re-run, not a blocked sweep."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except FileNotFoundError:
    return None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    logging.warning('%s is not valid JSON (%s); treating that member as unfinished', path, e)
    return None
  return obj if isinstance(obj, dict) else None


def result_row(member: Any, metrics: Mapping, wall_s: float, h: str) -> dict:
  """A finished member's results.csv row: its static columns, final eval loss, time and hash."""
  row = dict(member.info)
  row.update(
    loss=float(metrics['eval/loss']),
    bits_per_byte=float(metrics.get('eval/bits_per_byte', math.nan)),
    wall_s=round(wall_s, 2),
    config_hash=h,
  )
  row.update({k: metrics[k] for k in EVAL_SET_KEYS if k in metrics})
  if member.mode:
    row['teacher_params'] = metrics.get('teacher_params')
    row['teacher_loss'] = metrics.get('eval/teacher_loss')
  return row


def schedule_areas(member: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lr, S1, S2) after each step 1..steps of the member's schedule (train/optimizer.py, at peak
  scale; step i trains with the schedule's value at count i - 1, what metrics.jsonl logs as
  train/lr); S1, S2 as scaling.laws.lr_areas."""
  from train import optimizer  # lazy: jax / optax only where curves are built.

  opt, steps = member.config.optimizer, int(member.info['steps'])
  lrs = np.asarray(optimizer.lr_schedule(opt, steps)(np.arange(steps)), float)
  return (lrs, *laws.lr_areas(lrs, int(opt.warmup_steps)))


def _evals(path: str) -> dict:
  """{step: metrics} of the evaluations in a metrics.jsonl (a step logged twice, after a resume,
  keeps its last line); {} when the file is missing."""
  out = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        m = json.loads(line)
        if m.get('eval/loss') is not None:
          out[int(m['step'])] = m
  return out


def curve_rows(member: Any, member_dir: str) -> list:
  """The member's eval losses along training (metrics.jsonl), FLOPs so far by the sweep's count,
  with the step, the lr there and the lr areas S1 (lr_sum) and S2 (lr_anneal) of its schedule.
  A WSD branch trains only its cooldown; the branch of its trunk's last branch point (whose
  schedule is the trunk's) also gets the trunk's evaluations before it, so each trunk's constant
  phase is in the table once and that member's curve is whole."""
  evals = _evals(os.path.join(member_dir, 'metrics.jsonl'))
  if (
    evals and member.trunk and member.trunk_steps and member.branch_step == max(member.trunk_steps)
  ):
    trunk = _evals(os.path.join(os.path.dirname(member_dir), member.trunk, 'metrics.jsonl'))
    evals = {**{s: m for s, m in trunk.items() if s <= member.branch_step}, **evals}
  if not evals:
    return []
  i = member.info
  lrs, s1, s2 = schedule_areas(member)
  rows = []
  for step in sorted(evals):
    tokens = evals[step]['train/tokens_seen']
    share = tokens / i['tokens']
    rows.append(
      {
        'name': member.name,
        'params': i['params'],
        'non_embedding_params': i['non_embedding_params'],
        'tokens': tokens,
        'flops': i['flops'] * share,
        'loss': evals[step]['eval/loss'],
        'lr': i['lr'],
        'seed': i['seed'],
        'parametrization': i['parametrization'],
        'final': int(tokens == i['tokens']),
        'step': step,
        'lr_now': float(lrs[step - 1]),
        'lr_sum': float(s1[step - 1]),
        'lr_anneal': float(s2[step - 1]),
        'warmup_steps': i['warmup_steps'],
        'non_embedding_params_with_head': i.get('non_embedding_params_with_head'),
        'flops_attn_head': i['flops_attn_head'] * share if 'flops_attn_head' in i else None,
      }
    )
  return rows


def merge_results(workdir: str, ms: Sequence[Any]) -> list:
  """Rebuilds results.csv and curves.csv from every finished member's result.json (scaling/plan.py
  Members), holding an exclusive lock (fcntl, any shared POSIX filesystem), so members that finish
  at the same time in separate jobs neither lose nor duplicate rows. Returns the rows, in order."""
  columns = (
    RESULT_COLUMNS
    + (DISTILL_COLUMNS if any(m.mode for m in ms) else ())
    + (WSD_COLUMNS if any(m.trunk for m in ms) else ())
  )
  with open(os.path.join(workdir, 'results.csv.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = []
    for m in ms:
      r = read_json(os.path.join(workdir, m.name, RESULT_FILE))
      if (
        r and r.get('status', 'ok') == 'ok' and hash_lib.recognises(m.config, r.get('config_hash'))
      ):
        done.append((m, r))
    # Columns added after a member finished come from its plan (m.info); its result wins.
    rows = [{**m.info, **{k: v for k, v in r.items() if k != 'status'}} for m, r in done]
    curves = [c for m, _ in done for c in curve_rows(m, os.path.join(workdir, m.name))]
    kept, kept_curves = _unplanned_rows(workdir, {m.name for m in ms})
    write_csv(os.path.join(workdir, 'results.csv'), rows + kept, columns)
    write_csv(os.path.join(workdir, 'curves.csv'), curves + kept_curves, CURVE_COLUMNS)
  return rows


def _unplanned_rows(workdir: str, planned: set) -> tuple[list, list]:
  """The results.csv and curves.csv rows of finished members this plan does not list (the same
  workdir run before with other lr or seed axes): kept, so a narrower re-run drops no rows."""

  def finished(name: str) -> bool:
    r = read_json(os.path.join(workdir, name, RESULT_FILE)) if name else None
    return bool(r) and r.get('status', 'ok') == 'ok'

  out = []
  for name in ('results.csv', 'curves.csv'):
    path = os.path.join(workdir, name)
    rows = read_rows(path)[1] if os.path.exists(path) else []
    out.append([r for r in rows if r.get('name') not in planned and finished(r.get('name', ''))])
  return out[0], out[1]
