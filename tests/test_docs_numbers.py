"""The docs' numbers against the committed CSVs they were computed from: tables generated from a CSV
(or listing its rows) and the summaries in the text that were once stated wrong. A printed number
must equal the CSV's value rounded to the digits printed (half a unit in the last place)."""

import csv
import re
from collections import defaultdict
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / 'docs'


def table(page: str, header: str) -> list[list[str]]:
  """The body rows (lists of cells) of the markdown table in docs/`page` whose header line starts
  with `header`."""
  lines = (DOCS / page).read_text().splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(header))
  rows = []
  for line in lines[start + 2 :]:
    if not line.startswith('|'):
      break
    rows.append([cell.strip().replace('**', '') for cell in line.strip().strip('|').split('|')])
  return rows


def rows(path: str) -> list[dict]:
  with open(DOCS / path) as f:
    return list(csv.DictReader(f))


def assert_printed(text: str, value: float) -> None:
  """`text` (one number, maybe signed, with thousands commas or a trailing %) is `value` rounded to
  the digits printed."""
  number = re.search(r'[-+−]?[\d,]*\.?\d+', text).group().replace(',', '').replace('−', '-')
  decimals = len(number.split('.')[1]) if '.' in number else 0
  assert abs(float(number) - value) <= 0.5 * 10**-decimals + 1e-9, (text, value)


def test_scaling_holdout_tiny_grid():
  loss = {(int(r['params']), round(int(r['tokens']) / 1e5)): float(r['loss'])  # 0.1M tokens
          for r in rows('scaling/holdout_tiny_results.csv')}  # fmt: skip
  grid = table('scaling.md', '| params \\ tokens |')
  assert len(grid) == 5
  for params, *cells in grid:
    for tenths, cell in zip((5, 10, 20, 40, 80), cells):  # 0.5M .. 8M
      assert_printed(cell, loss[int(params.replace(',', '')), tenths])


def test_scaling_isoflop_members():
  by_name = {r['name']: r for r in rows('scaling/isoflop_tiny_results.csv')}
  grid = table('scaling.md', '| member | params | non-emb | L × d |')
  assert len(grid) == len(by_name) == 15
  for name, params, non_emb, _, steps, tokens, loss, bits, wall in grid:
    r = by_name[name]
    assert int(params.replace(',', '')) == int(r['params'])
    assert int(non_emb.replace(',', '')) == int(r['non_embedding_params'])
    assert int(steps) == int(r['steps'])
    assert_printed(tokens, int(r['tokens']) / 1e6)
    assert_printed(loss, float(r['loss']))
    assert_printed(bits, float(r['bits_per_byte']))
    assert_printed(wall, float(r['wall_s']))


def test_scaling_wsd_against_cosine():
  cosine = {r['name']: float(r['loss']) for r in rows('scaling/sizes_tokens_tiny_results.csv')}
  wsd = {r['name']: r for r in rows('scaling/sizes_tokens_tiny_wsd_results.csv')}
  grid = table('scaling.md', '| member | params | tokens | branched at |')
  assert len(grid) == 9
  for name, _, tokens, branched, cos, branch, gap in grid:
    assert int(tokens.replace(',', '')) == int(wsd[name]['tokens'])
    assert int(branched.replace(',', '')) == int(wsd[name]['branch_tokens'])
    assert_printed(cos, cosine[name])
    assert_printed(branch, float(wsd[name]['loss']))
    assert_printed(gap, 100 * (float(wsd[name]['loss']) / cosine[name] - 1))


def test_scaling_ladder_at_the_rules_lr():
  loss = {(int(r['params']), round(int(r['tokens']) / int(r['params']))): float(r['loss'])
          for r in rows('scaling/ladder_results.csv')
          if float(r['lr']) == 2**-7 and r['seed'] == '0'}  # fmt: skip
  grid = table('scaling.md', '| params (layers x d_model, batch) |')
  assert len(grid) == 7
  for first, *cells in grid:
    params = int(first.split()[0].replace(',', ''))
    for per_param, cell in zip((5, 10, 20, 40, 80), cells):
      if cell:
        assert_printed(cell, loss[params, per_param])


def test_finetuning_results_table():
  runs = {(int(r['base_params']), int(r['examples']), r['method']): r
          for r in rows('finetuning/results.csv')}  # fmt: skip
  header = '| base params | examples | before: task loss, mc acc |'
  methods = ('full', 'scratch', 'lora1', 'lora16', 'lora4')
  grid = table('finetuning.md', header)
  assert len(grid) == len(runs) // len(methods) == 16
  for params, examples, before, *cells in grid:
    key = (int(params.replace(',', '')), int(examples.replace(',', '')))
    task_before, mc_before = before.split(',')
    assert_printed(task_before, float(runs[key + ('full',)]['task_loss_before']))
    assert_printed(mc_before, float(runs[key + ('full',)]['mc_acc_before']))
    for method, cell in zip(methods, cells):
      run = runs[key + (method,)]
      for printed, column in zip(cell.split(' / '), ('task_loss', 'forgetting', 'mc_acc')):
        assert_printed(printed, float(run[column]))


def test_distillation_students_by_teacher():
  by = {}
  for r in rows('distillation/law_runs.csv'):
    if r['seed'] != '1':
      teacher = 'supervised' if not r['teacher'] else (r['teacher'], r['alpha'])
      by[round(int(r['params']), -3), round(int(r['tokens']) / 1e6, 2), teacher] = r
  # The header names each teacher as size@tokens per parameter (its loss), α = 0.5 where mixed.
  teachers = [('N6.51e5_D1.3e7_lr7.81e-3', '1.0'), ('N6.51e5_D3.26e6_lr7.81e-3', '1.0'),
              ('N3.73e5_D7.45e6_lr7.81e-3', '1.0'), ('N3.73e5_D1.86e6_lr7.81e-3', '1.0'),
              ('N2.64e5_D5.29e6_lr7.81e-3', '1.0'), ('N2.64e5_D1.32e6_lr7.81e-3', '1.0'),
              ('N6.51e5_D1.3e7_lr7.81e-3', '0.5')]  # fmt: skip
  grid = table('distillation.md', '| student | tokens | supervised |')
  assert len(grid) == 12
  for student, tokens, supervised, *cells in grid:
    key = (int(student.rstrip('K')) * 1000, float(tokens.rstrip('M')))
    own = float(by[key + ('supervised',)]['loss'])
    assert_printed(supervised, own)
    for teacher, cell in zip(teachers, cells):
      if cell:
        run = by[key + (teacher,)]
        loss, delta = cell.rstrip(')').split(' (')
        assert_printed(loss, float(run['loss']))
        assert_printed(delta, float(run['loss']) - own)


def test_compression_quantization_gaps():
  gap, size = {}, {}
  for r in rows('compression/quantize.csv'):
    if round(int(r['tokens']) / int(r['params'])) == 20:
      scheme = (r['scheme'], r['group'])
      gap[int(r['params']), scheme] = float(r['loss']) - float(r['loss_float'])
      size[int(r['params']), scheme] = int(r['bytes'])
      gap[int(r['params']), 'float'] = float(r['loss_float'])
  schemes = ['float', ('int8', '0'), ('fp8', '0'), ('int4', '0'), ('int4', '16')]
  grid = table('compression.md', '| params | float loss | int8 |')
  assert len(grid) == 8
  for params, *cells in grid[:-1]:
    for scheme, cell in zip(schemes, cells):
      assert_printed(cell, gap[int(params.replace(',', '')), scheme])
  for scheme, cell in zip(schemes[1:], grid[-1][2:]):
    assert_printed(cell, size[651280, scheme])


def test_mup_embedding_lr_table():
  loss = {}
  for exponent in (0, 1):
    for name, seed in ((f'embed_lr_exp{exponent}', 0), (f'embed_lr_seed1_exp{exponent}', 1)):
      for r in rows(f'mup/{name}.csv'):
        loss[exponent, seed, int(r['d_model']), float(r['lr'])] = float(r['loss'])
  grid = table('mup.md', '| width | 32 | 64 |')
  assert len(grid) == 4
  for label, *cells in grid:
    exponent, seed = int(label.split()[1].rstrip(':,')), int('seed 1' in label)
    for width, cell in zip((32, 64, 128, 256, 512), cells):
      if not cell:
        continue
      if seed == 0:  # "2^-k, loss": the best lr and its loss
        lr, printed = cell.split(', ')
        at = {lr_: v for (e, s, w, lr_), v in loss.items() if (e, s, w) == (exponent, 0, width)}
        best = min(at, key=at.get)
        assert 2.0 ** int(lr.split('^')[1]) == best
        assert_printed(printed, at[best])
      else:  # "loss at 2^-8 / loss at 2^-7"
        for printed, lr in zip(cell.split(' / '), (2**-8, 2**-7)):
          assert_printed(printed, loss[exponent, 1, width, lr])


def stated(page: str, pattern: str) -> tuple[str, ...]:
  """The numbers `pattern`'s groups match in docs/`page`'s text (line breaks read as spaces)."""
  match = re.search(pattern, ' '.join((DOCS / page).read_text().split()))
  assert match, pattern
  return match.groups()


def test_finetuning_summaries():
  ft = rows('finetuning/results.csv')
  (hours,) = stated('finetuning.md', r'80 runs, ([\d.]+) run-hours')
  assert_printed(hours, sum(float(r['wall_s']) for r in ft) / 3600)
  (steps,) = stated('finetuning.md', r'all 4,987 examples take (\d+) steps')
  assert int(steps) == max(int(r['steps']) for r in ft)
  # the last step in base size (373K -> 651K) cuts each fine-tuned task loss by lo-hi
  lo, hi = stated('finetuning.md', r'cuts the fine-tuned loss by ([\d.]+)-([\d.]+)\)')
  task = {(r['base_params'], r['examples'], r['method']): float(r['task_loss']) for r in ft}
  cuts = [task['372672', n, m] - task['651280', n, m] for (_, n, m) in task if m != 'scratch']
  assert_printed(lo, min(cuts))
  assert_printed(hi, max(cuts))


def test_distillation_mixed_objective_range():
  """α = 0.5 against pure distillation from the same teacher, at 75K and 125K."""
  lo, hi = stated('distillation.md', r'in all 8 of its cells: by ([\d.]+)-([\d.]+) nats at 75K')
  runs = defaultdict(dict)
  for r in rows('distillation/law_runs.csv'):
    if r['alpha'] and r['seed'] != '1' and r['params'] in ('75120', '124736'):
      runs[r['params'], r['tokens'], r['teacher']][r['alpha']] = float(r['loss'])
  worse = [a['0.5'] - a['1.0'] for a in runs.values() if '0.5' in a]
  assert len(worse) == 6
  assert_printed(lo, min(worse))
  assert_printed(hi, max(worse))


def test_compression_group_16_against_per_channel():
  """int4's gap by groups of 16 against per channel, at 20 tokens per parameter."""
  printed = stated(
    'compression.md', r'Groups of 16 cut that gap by (\d+), (\d+), (\d+) and (\d+) %'
  )
  gap = defaultdict(dict)
  for r in rows('compression/quantize.csv'):
    if r['scheme'] == 'int4' and round(int(r['tokens']) / int(r['params'])) == 20:
      gap[int(r['params'])][r['group']] = float(r['loss']) - float(r['loss_float'])
  for percent, params in zip(printed, (264480, 372672, 484512, 651280)):
    assert_printed(percent, 100 * (1 - gap[params]['16'] / gap[params]['0']))
