"""The distillation-law study (docs/distillation.md, "The distillation scaling law"): ladder
members as teachers (3 sizes x 2 token budgets, so teacher losses spread) and as students'
supervised twins; every student re-trained from its twin's config, distilled instead. Resumable
(finished runs are skipped); rows gathered into one CSV with the teacher's loss and size on each.

  L=workdirs/ladder   # bash configs/sweeps/ladder.sh $L first (62 min)
  python -m scaling.distill_study --workdir=workdirs/distill_law --ladder=$L --lanes=2
  python -m scaling.distill_study --workdir=workdirs/distill_law --ladder=$L --gather=docs/distillation/law_runs.csv
  python -m scaling.fit --law=distillation --results=docs/distillation/law_runs.csv --bootstrap=50
  python -m scaling.validate --laws=distillation --results=docs/distillation/law_runs.csv --distill_holdout=teacher
"""

import csv
import json
import os
from collections.abc import Sequence

from absl import flags

from scaling import compression

# Teachers: the 264K, 373K and 651K members at 5 and 20 tokens per parameter (losses 1.09-1.75).
TEACHERS = (
  'N6.51e5_D1.3e7_lr7.81e-3',
  'N6.51e5_D3.26e6_lr7.81e-3',
  'N3.73e5_D7.45e6_lr7.81e-3',
  'N3.73e5_D1.86e6_lr7.81e-3',
  'N2.64e5_D5.29e6_lr7.81e-3',
  'N2.64e5_D1.32e6_lr7.81e-3',
)
# Students (their supervised twins): 75K, 125K, 175K at 5, 10 and 20 tokens per parameter.
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
)
MIXED = ('N6.51e5_D1.3e7_lr7.81e-3', 0.5)  # the mixed objective, with the strongest teacher.


def plan(work: str, ladder: str, teachers: Sequence[str]) -> list[tuple[str, list[str]]]:
  """(marker, command) of every distilled student: pure distillation from each teacher, the mixed
  objective from MIXED's teacher. Ordered student-major, so a partial pass covers every teacher."""
  cmds = []
  for student in STUDENTS:
    for teacher, alpha in [(t, 1.0) for t in teachers] + [MIXED]:
      name = f'{student}__{teacher}_a{alpha:g}'
      arg = f'student={os.path.join(ladder, student)},teacher={os.path.join(ladder, teacher)},alpha={alpha:g}'
      cmds.append(
        compression._train(os.path.join(work, name), [f'--config=configs/distill_law.py:{arg}'])
      )
  return cmds


def _result(ladder: str, member: str) -> dict:
  with open(os.path.join(ladder, member, 'result.json')) as f:
    return json.load(f)


def gather(work: str, ladder: str, out: str) -> int:
  """The CSV: supervised runs (every seed-0, lr-2^-7 ladder member: the students' twins and the
  sizes above them, for the students' own Chinchilla law) and the finished students."""
  from scaling import compression_report

  rows = []
  for member in sorted(os.listdir(ladder)):
    if member.endswith('lr7.81e-3') and '_D' in member:
      r = _result(ladder, member)
      rows.append({'name': member, 'params': r['params'], 'tokens': r['tokens'], 'loss': r['loss'],
                   'teacher': '', 'teacher_loss': '', 'teacher_params': '', 'teacher_tokens': '',
                   'alpha': ''})  # fmt: skip
  for run in sorted(os.listdir(work)):
    if not os.path.exists(os.path.join(work, run, compression.DONE)):
      continue
    student, _, rest = run.partition('__')
    teacher, _, alpha = rest.rpartition('_a')
    s, t = _result(ladder, student), _result(ladder, teacher)
    rows.append({'name': run, 'params': s['params'], 'tokens': s['tokens'],
                 'loss': compression_report.final_eval(os.path.join(work, run)), 'teacher': teacher,
                 'teacher_loss': t['loss'], 'teacher_params': t['params'], 'teacher_tokens': t['tokens'],
                 'alpha': float(alpha)})  # fmt: skip
  with open(out, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return sum(bool(r['teacher']) for r in rows)


FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', 'workdirs/distill_law', 'study directory', flag_values=FLAGS)
flags.DEFINE_string(
  'ladder', 'workdirs/ladder', 'the ladder sweep (its members)', flag_values=FLAGS
)
flags.DEFINE_list('teachers', list(TEACHERS), 'teacher members', flag_values=FLAGS)
flags.DEFINE_integer('lanes', 1, 'training processes at once', flag_values=FLAGS)
flags.DEFINE_string('gather', '', 'write the CSV here instead of running', flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> None:
  from train import cli

  cli.parse(FLAGS, argv, __doc__)
  f = FLAGS
  missing = [m for m in (*f.teachers, *STUDENTS) if not os.path.isdir(os.path.join(f.ladder, m))]
  if missing:
    cli.usage_error(f'--ladder: {f.ladder} has no member {missing[0]} (run the ladder first)')
  if f.gather:
    print(f'{gather(f.workdir, f.ladder, f.gather)} distilled students in {f.gather}')
    return
  os.makedirs(f.workdir, exist_ok=True)
  compression._lanes(plan(f.workdir, f.ladder, f.teachers), f.lanes)


if __name__ == '__main__':
  main()
