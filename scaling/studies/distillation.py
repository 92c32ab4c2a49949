"""The distillation-law study (docs/distillation.md, "The distillation scaling law"): ladder
members as teachers (3 sizes x 2 token budgets, so teacher losses spread) and as students'
supervised twins; every student re-trained from its twin's config, distilled instead. Resumable
(finished runs are skipped); rows gathered into one CSV with the teacher's loss and size on each.

  L=workdirs/ladder   # bash configs/sweeps/ladder.sh $L first (62 min), and the small student:
  python main.py --config=configs/sweeps/ladder.py:small --workdir=$L      # (3 min)
  python -m scaling.studies.distillation --workdir=workdirs/distill_law --ladder=$L --lanes=2
  python -m scaling.studies.distillation --workdir=workdirs/distill_law --ladder=$L \
      --gather=docs/distillation/law_runs.csv
  python -m scaling.fit --law=distillation --results=docs/distillation/law_runs.csv --bootstrap=50
  python -m scaling.validate --laws=distillation --results=docs/distillation/law_runs.csv --distill_holdout=teacher
  python -m scaling.studies.distillation --plot=docs/distillation/capacity_gap.png --fit=docs/distillation/law_fit.json

Runs already in --csv (the committed CSV) are not run again, and --gather merges into it: a later
session goes on from the committed rows without the earlier session's workdirs.
"""

import json
import os
import re
import sys
from collections.abc import Sequence

from absl import flags

from scaling import parallel
from scaling.studies import compression
from scaling.studies import compression_report as rep

# Teachers: the 264K, 373K and 651K members at 5 and 20 tokens per parameter (losses 1.09-1.75).
TEACHERS = (
  'N6.51e5_D1.3e7_lr7.81e-3',
  'N6.51e5_D3.26e6_lr7.81e-3',
  'N3.73e5_D7.45e6_lr7.81e-3',
  'N3.73e5_D1.86e6_lr7.81e-3',
  'N2.64e5_D5.29e6_lr7.81e-3',
  'N2.64e5_D1.32e6_lr7.81e-3',
)
# Students (their supervised twins): 75K, 125K, 175K and, added in the second pass, 38K
# (configs/sweeps/ladder.py:small) at 5, 10 and 20 tokens per parameter.
STUDENTS = (
  'N7.51e4_D3.76e5_lr7.81e-3',
  'N7.51e4_D7.51e5_lr7.81e-3',
  'N7.51e4_D1.5e6_lr7.81e-3',
  'N1.25e5_D6.24e5_lr7.81e-3',
  'N1.25e5_D1.25e6_lr7.81e-3',
  'N1.25e5_D2.49e6_lr7.81e-3',
  'N1.75e5_D8.74e5_lr7.81e-3',
  'N1.75e5_D1.75e6_lr7.81e-3',
  'N1.75e5_D3.49e6_lr7.81e-3',
  'N3.78e4_D1.89e5_lr7.81e-3',
  'N3.78e4_D3.78e5_lr7.81e-3',
  'N3.78e4_D7.56e5_lr7.81e-3',
)
MIXED = ('N6.51e5_D1.3e7_lr7.81e-3', 0.5)  # the mixed objective, with the strongest teacher.
# The noise floor: the strongest teacher's 20-tokens/param students again at seed 1 (init and
# data order), at the largest and smallest student sizes.
SEEDED = tuple((s, 'N6.51e5_D1.3e7_lr7.81e-3', 1) for s in (STUDENTS[8], STUDENTS[11]))
NAME = re.compile(r'^(?P<student>.+?)(?:_seed(?P<seed>\d+))?__(?P<teacher>.+)_a(?P<alpha>[\d.]+)$')


def run_name(student: str, teacher: str, alpha: float, seed: int = 0) -> str:
  """A distilled run's directory name; NAME parses it back."""
  return f'{student}{f"_seed{seed}" if seed else ""}__{teacher}_a{alpha:g}'


def pending(
  teachers: Sequence[str], done: Sequence[str] = (), students: Sequence[str] = STUDENTS
) -> list[tuple[str, str, float, int]]:
  """(student, teacher, alpha, seed) of every distilled run whose name is not in `done`: pure
  distillation from each teacher (student-major, so a partial pass covers every teacher), the
  SEEDED repeats, then the mixed objective (those two only when their teacher is in `teachers`)."""
  runs = [(s, t, 1.0, 0) for s in students for t in teachers]
  runs += [(s, t, 1.0, seed) for s, t, seed in SEEDED if t in teachers and s in students]
  runs += [(s, MIXED[0], MIXED[1], 0) for s in students if MIXED[0] in teachers]
  return [r for r in runs if run_name(*r) not in done]


def plan(
  work: str,
  ladder: str,
  teachers: Sequence[str],
  done: Sequence[str] = (),
  students: Sequence[str] = STUDENTS,
) -> list[parallel.Job]:
  """A Job per pending run: main.py with configs/distill_twin.py into W/<run_name>, done once it
  wrote its result.json."""
  jobs = []
  for student, teacher, alpha, seed in pending(teachers, done, students):
    arg = f'student={os.path.join(ladder, student)},teacher={os.path.join(ladder, teacher)},alpha={alpha:g}'
    flags_ = [f'--config=configs/distill_twin.py:{arg}'] + (
      [f'--config.seed={seed}'] if seed else []
    )
    name = run_name(student, teacher, alpha, seed)
    run = os.path.join(work, name)
    jobs.append(parallel.Job(name, [sys.executable, 'main.py', f'--workdir={run}', *flags_], run))
  return jobs


COLUMNS = ('name', 'params', 'tokens', 'loss', 'teacher', 'teacher_loss', 'teacher_params',
           'teacher_tokens', 'alpha', 'seed')  # fmt: skip


def gather(work: str, ladder: str, out: str) -> int:
  """Merge into the CSV `out` (its rows kept unless measured again here): supervised runs (every
  seed-0, lr-2^-7 ladder member: the students' twins and the sizes above them, for the students'
  own Chinchilla law) and the finished students; every row's teacher columns from the ladder's
  member when it has it (a retrained teacher differs by ~1e-4: one teacher keeps one loss);
  returns the distilled rows it holds."""
  rows = {r['name']: {c: r.get(c, '') for c in COLUMNS} for r in rep.read_csv(out)}
  for member in sorted(os.listdir(ladder)):
    if (
      member.endswith('lr7.81e-3')
      and '_D' in member
      and os.path.exists(os.path.join(ladder, member, 'result.json'))
    ):
      r = compression._result(ladder, member)
      rows[member] = {'name': member, 'params': r['params'], 'tokens': r['tokens'],
                      'loss': r['loss'], **dict.fromkeys(COLUMNS[4:], '')}  # fmt: skip
  for run in sorted(os.listdir(work)) if os.path.isdir(work) else []:
    m = NAME.match(run)
    if not m or not parallel.finished(os.path.join(work, run)):
      continue
    s = compression._result(ladder, m['student'])
    rows[run] = {'name': run, 'params': s['params'], 'tokens': s['tokens'],
                 'loss': rep.final_eval(os.path.join(work, run)), 'teacher': m['teacher'],
                 'alpha': float(m['alpha']), 'seed': int(m['seed'] or 0)}  # fmt: skip
  for r in rows.values():  # one teacher, one loss: its member as the ladder holds it now.
    if r['teacher'] and os.path.exists(os.path.join(ladder, r['teacher'], 'result.json')):
      t = compression._result(ladder, r['teacher'])
      r.update(teacher_loss=t['loss'], teacher_params=t['params'], teacher_tokens=t['tokens'])
  ordered = sorted(rows.values(), key=lambda r: (bool(r['teacher']), r['name']))
  rep.write_csv(out, [{c: r.get(c, '') for c in COLUMNS} for r in ordered])
  return sum(bool(r['teacher']) for r in ordered)


def table(results: str) -> str:
  """The markdown table of docs/distillation.md: per student (size, tokens) its supervised loss
  and each teacher's student (difference to the supervised twin; bold the best), seed 0."""
  rows = rep.read_csv(results)
  sup = {(r['params'], r['tokens']): float(r['loss']) for r in rows if not r['teacher']}
  kd = [r for r in rows if r['teacher'] and not int(r.get('seed') or 0)]
  cols = [(t, 1.0) for t in TEACHERS] + [MIXED]
  label = lambda m: f'{int(_float(m, "N")) // 1000}K@{round(_float(m, "D") / _float(m, "N"))}'
  t_loss = {r['teacher']: float(r['teacher_loss']) for r in kd}
  head = ['student', 'tokens', 'supervised'] + [
    f'{label(t)}{", α = 0.5" if a != 1 else ""} ({t_loss.get(t, float("nan")):.3f})'
    for t, a in cols
  ]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  students = sorted({(int(r['params']), int(r['tokens'])) for r in kd})
  for n, d in students:
    twin = sup[(str(n), str(d))]
    got = {(r['teacher'], float(r['alpha'])): float(r['loss']) for r in kd
           if int(r['params']) == n and int(r['tokens']) == d}  # fmt: skip
    best = min((v for (t, a), v in got.items() if a == 1.0), default=None)
    cells = []
    for c in cols:
      v = got.get(c)
      text = '' if v is None else f'{v:.3f} ({v - twin:+.3f})'
      cells.append(f'**{text}**' if v is not None and v == best else text)
    lines.append(
      f'| {round(n / 1000)}K | {d / 1e6:.2f}M | {twin:.3f} | ' + ' | '.join(cells) + ' |'
    )
  return '\n'.join(lines)


def _float(member: str, key: str) -> float:
  """N or D of a ladder member's name (N6.51e5_D1.3e7_lr...: 651000.0, 1.3e7)."""
  return float(re.search(rf'{key}([\d.e+]+)_', member)[1])


def plot_capacity_gap(results: str, fit_json: str, png: str) -> None:
  """Student loss against teacher loss at fixed student size and tokens (pure distillation, seed
  0): points measured, dashed the supervised twin, lines the fitted law (fit_json, if given),
  dotted where the law runs past the teachers measured for that panel."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np

  from scaling import distill_law
  from scaling import plot_style as style

  rows = [r for r in rep.read_csv(results) if r['teacher'] and float(r['alpha']) == 1.0
          and not int(r.get('seed') or 0)]  # fmt: skip
  twins = {
    (r['params'], r['tokens']): float(r['loss']) for r in rep.read_csv(results) if not r['teacher']
  }
  fitted = json.load(open(fit_json)) if fit_json else None
  sizes = sorted({int(r['params']) for r in rows})
  fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 4.0), sharey=True)
  for ax, n in zip(np.atleast_1d(axes), sizes):
    mine = [r for r in rows if int(r['params']) == n]
    for color, d in zip(('C0', 'C1', 'C2', 'C3'), sorted({int(r['tokens']) for r in mine})):
      pts = sorted(
        (float(r['teacher_loss']), float(r['loss'])) for r in mine if int(r['tokens']) == d
      )
      ax.plot(*zip(*pts), 'o', color=color, label=f'student tokens D_S = {d / n:.0f} N_S')
      ax.axhline(twins[(str(n), str(d))], color=color, ls='--', lw=0.8)
      if fitted:
        lt = np.linspace(1.0, 1.9, 100)
        inside = (lt >= pts[0][0]) & (lt <= pts[-1][0])
        law = distill_law.predict(fitted, lt, n, d)
        ax.plot(lt[inside], law[inside], '-', color=color, lw=1)
        ax.plot(lt, np.where(inside, np.nan, law), ':', color=color, lw=1)
    style.style_axis(ax, 'teacher eval loss (nats/byte)', title=f'student {n / 1e3:.0f}K params')
  style.style_axis(np.atleast_1d(axes)[0], ylabel='student eval loss (nats/byte)')
  first = np.atleast_1d(axes)[0]
  first.plot([], [], 'k--', lw=0.8, label='supervised twin (no teacher)')
  if fitted:
    first.plot([], [], 'k-', lw=1, label='fitted law (dotted: beyond the teachers measured)')
  style.ordered_legend(first, fontsize=7)
  fig.tight_layout()
  fig.savefig(png, dpi=120)
  plt.close(fig)


FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', 'workdirs/distill_law', 'study directory', flag_values=FLAGS)
flags.DEFINE_string(
  'ladder', 'workdirs/ladder', 'the ladder sweep (its members)', flag_values=FLAGS
)
flags.DEFINE_list('teachers', list(TEACHERS), 'teacher members', flag_values=FLAGS)
flags.DEFINE_list('students', list(STUDENTS), "students (their twins' members)", flag_values=FLAGS)
flags.DEFINE_integer(
  'lanes',
  1,
  'trainings at once, each on its own device subset (scaling.parallel)',
  flag_values=FLAGS,
)
flags.DEFINE_string(
  'gather', '', 'merge the results into this CSV instead of running', flag_values=FLAGS
)
flags.DEFINE_string(
  'csv', 'docs/distillation/law_runs.csv', 'runs already in it are not run again', flag_values=FLAGS
)
flags.DEFINE_string('plot', '', 'draw the capacity-gap plot from --csv here', flag_values=FLAGS)
flags.DEFINE_bool('table', False, "print --csv's markdown table", flag_values=FLAGS)
flags.DEFINE_string('fit', '', "the law's fit (scaling.fit's JSON) for --plot", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> None:
  from train import cli

  cli.parse(FLAGS, argv, __doc__)
  f = FLAGS
  if f.table:
    print(table(f.csv))
    return
  if f.plot:
    plot_capacity_gap(f.csv, f.fit, f.plot)
    print(f'wrote {f.plot}')
    return
  if not os.path.isdir(f.ladder):
    cli.usage_error(f'--ladder: {f.ladder} is not a directory (run the ladder first)')
  if f.gather:
    print(f'{gather(f.workdir, f.ladder, f.gather)} distilled students in {f.gather}')
    return
  done = [r['name'] for r in rep.read_csv(f.csv)]
  needed = {m for s, t, _, _ in pending(f.teachers, done, f.students) for m in (s, t)}
  missing = sorted(
    m for m in needed if not os.path.exists(os.path.join(f.ladder, m, 'result.json'))
  )
  if missing:
    cli.usage_error(
      f'--ladder: {f.ladder} has no finished member {missing[0]} (run the ladder first)'
    )
  os.makedirs(f.workdir, exist_ok=True)
  parallel.run_all(plan(f.workdir, f.ladder, f.teachers, done, f.students), f.lanes)


if __name__ == '__main__':
  main()
