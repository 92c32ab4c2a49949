"""Predicts params, tokens and loss from a scaling law: published (Chinchilla, Kaplan) or a fit from scaling.fit.

Compute C = 6·N·D (Hoffmann et al. 2022, arXiv 2203.15556; Kaplan et al. 2020, arXiv 2001.08361). Given
only C, the compute-optimal allocation; given N (or D) alone, the C at which it is compute-optimal.
95% intervals come from the fit's bootstrap samples, when it has them.

  python -m scaling.predict --law=chinchilla --compute=5.76e23      # ~40B params (Chinchilla, Table A3)
  python -m scaling.predict --law=fit.json --params=1e9 --compute=1e20
  python -m scaling.predict --law=kd_fit.json --teacher_loss=1.09 --compute=1e13 [--teacher_params=6.5e5] \
      [--params_range=7.5e4,1.75e5]

A distillation fit (scaling.fit --law=distillation) needs --teacher_loss (or --teacher=<workdir>:
its result.json or last eval loss) and --compute: the compute-optimal student and its predicted
loss, next to the supervised optimum at the same compute; --teacher_params counts the teacher's
forward passes (2·N_T per token) in the compute, leave it out for a teacher whose logits are paid.
"""

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np
from absl import flags
from scipy import stats

from scaling import checks, distill_law, laws
from train import cli

Arr = np.ndarray | Sequence[float]  # values given on the command line

QUANTITIES = ('params', 'tokens', 'compute', 'loss')

FLAGS = flags.FlagValues()  # this module's own: tools importing each other share flag names.
flags.DEFINE_string(
  'law',
  'chinchilla',
  "'chinchilla' | 'chinchilla_rounded' | 'kaplan' (published) or a scaling.fit JSON",
  flag_values=FLAGS,
)
flags.DEFINE_float('compute', None, 'training FLOPs, C = 6ND', flag_values=FLAGS)
flags.DEFINE_float('params', None, 'model parameters N', flag_values=FLAGS)
flags.DEFINE_float('tokens', None, 'training tokens D', flag_values=FLAGS)
flags.DEFINE_string('out', '', 'also write the JSON here', flag_values=FLAGS)
flags.DEFINE_float('teacher_loss', None, "distillation: the teacher's eval loss", flag_values=FLAGS)
flags.DEFINE_string('teacher', '', 'distillation: a teacher workdir (its loss)', flag_values=FLAGS)
flags.DEFINE_float(
  'teacher_params', 0.0, 'distillation: count 2·N_T·D teacher FLOPs (0: not)', flag_values=FLAGS
)
flags.DEFINE_list(
  'params_range', [], 'distillation: search N in lo,hi (e.g. the fitted sizes)', flag_values=FLAGS
)


def published(name: str) -> dict:
  """A fit-shaped dict for published constants: 'chinchilla', 'chinchilla_rounded' or 'kaplan'."""
  if name in ('chinchilla', 'chinchilla_rounded'):
    law = laws.CHINCHILLA if name == 'chinchilla' else laws.CHINCHILLA_ROUNDED
    g, a, b = laws.chinchilla_frontier_constants(law)
    return {
      'law': 'chinchilla',
      'source': f'published {name} (Hoffmann et al. 2022)',
      'constants': {**dataclasses.asdict(law), 'a': a, 'b': b, 'G': g},
    }
  if name == 'kaplan':
    j = laws.KAPLAN_JOINT
    return {
      'law': 'kaplan',
      'source': 'published (Kaplan et al. 2020)',
      'constants': {
        'alpha_N': laws.KAPLAN_N.alpha_N,
        'N_c': laws.KAPLAN_N.N_c,
        'joint_alpha_N': j.alpha_N,
        'joint_alpha_D': j.alpha_D,
        'joint_N_c': j.N_c,
        'joint_D_c': j.D_c,
      },
    }
  raise ValueError(f'unknown published law {name!r}')


def load_law(spec: str) -> dict:
  """'chinchilla' | 'chinchilla_rounded' | 'kaplan' (published), else the path of a scaling.fit JSON."""
  if spec in ('chinchilla', 'chinchilla_rounded', 'kaplan'):
    return published(spec)
  with open(spec) as f:
    return json.load(f)


def _solve(law, solvers, loss, compute: Arr | None, params: Arr | None, tokens: Arr | None):
  """(N, D, C, loss) of a joint law from whichever one of C, N or D is given (N and D both: as
  given): `solvers` are its compute-, params- and tokens-optimal functions."""
  optimal, for_params, for_tokens = solvers
  if params is None and tokens is None:
    params, tokens, _ = optimal(law, compute)
  elif tokens is None and compute is None:
    tokens, compute, _ = for_params(law, params)
  elif params is None and compute is None:
    params, compute, _ = for_tokens(law, tokens)
  return params, tokens, compute, loss(law, params, tokens)


def _chinchilla(c: dict, compute: Arr | None, params: Arr | None, tokens: Arr | None):
  law = laws.Chinchilla(E=c['E'], A=c['A'], B=c['B'], alpha=c['alpha'], beta=c['beta'])
  solvers = (
    laws.chinchilla_optimal,
    laws.chinchilla_optimal_for_params,
    laws.chinchilla_optimal_for_tokens,
  )
  return _solve(law, solvers, laws.chinchilla_loss, compute, params, tokens)


def _kaplan(c: dict, compute: Arr | None, params: Arr | None, tokens: Arr | None):
  law = laws.KaplanJoint(
    alpha_N=c['joint_alpha_N'], alpha_D=c['joint_alpha_D'], N_c=c['joint_N_c'], D_c=c['joint_D_c']
  )
  solvers = (
    laws.kaplan_joint_optimal,
    laws.kaplan_joint_optimal_for_params,
    laws.kaplan_joint_optimal_for_tokens,
  )
  return _solve(law, solvers, laws.kaplan_loss_joint, compute, params, tokens)


def _isoflop(c: dict, compute: Arr | None, params: Arr | None, tokens: Arr | None):
  """Approach-2 power laws N_opt = k_N C^a, L_opt = k_L C^gamma; no loss off the frontier (None)."""
  if params is not None and tokens is not None:
    return params, tokens, compute, None
  if compute is None:
    compute = (
      (params / c['k_N']) ** (1 / c['a']) if tokens is None else (tokens / c['k_D']) ** (1 / c['b'])
    )
  if params is None:
    params = c['k_N'] * compute ** c['a'] if tokens is None else compute / (6.0 * tokens)
  tokens = compute / (6.0 * params) if tokens is None else tokens
  return params, tokens, compute, c['k_L'] * compute ** c['gamma']


def predict_point(
  fit: dict,
  compute: float | None = None,
  params: float | None = None,
  tokens: float | None = None,
) -> dict:
  """{params, tokens, compute, loss} under fit's constants; give C alone, N or D alone, or two of them."""
  given = sum(v is not None for v in (compute, params, tokens))
  if given not in (1, 2):
    raise ValueError('give one or two of compute, params, tokens')
  if given == 2:  # C = 6ND fixes the third.
    if compute is None:
      compute = 6.0 * params * tokens
    elif params is None:
      params = compute / (6.0 * tokens)
    else:
      tokens = compute / (6.0 * params)
  if fit['law'] in ('interaction', 'farseer'):  # no closed-form frontier: a point needs N and D.
    if params is None or tokens is None:
      raise ValueError(f'a {fit["law"]} law predicts at given params and tokens (or compute)')
    law, loss_fn = {
      'interaction': (laws.Interaction, laws.interaction_loss),
      'farseer': (laws.Farseer, laws.farseer_loss),
    }[fit['law']]
    out = (params, tokens, compute, loss_fn(law(**fit['constants']), params, tokens))
    return {k: float(v) for k, v in zip(QUANTITIES, out)}
  fn = {'chinchilla': _chinchilla, 'kaplan': _kaplan, 'isoflop': _isoflop}[fit['law']]
  out = fn(fit['constants'], compute, params, tokens)
  return {k: (None if v is None else float(v)) for k, v in zip(QUANTITIES, out)}


def predict(
  fit: dict,
  compute: float | None = None,
  params: float | None = None,
  tokens: float | None = None,
) -> dict:
  """predict_point plus, if the fit has bootstrap samples, 95% percentile intervals (ci95) of the outputs."""
  out = {'law': fit['law'], **predict_point(fit, compute, params, tokens)}
  boot = fit.get('bootstrap')
  if boot and boot.get('samples'):
    samples = boot['samples']
    k = min(len(v) for v in samples.values())
    draws = [
      predict_point(
        {'law': fit['law'], 'constants': {n: v[i] for n, v in samples.items()}},
        compute,
        params,
        tokens,
      )
      for i in range(k)
    ]
    given = {'compute': compute, 'params': params, 'tokens': tokens}
    out['ci95'] = {}
    for q in QUANTITIES:
      vals = np.array([d[q] for d in draws if d[q] is not None], float)
      if given.get(q) is None and vals.size:
        out['ci95'][q] = [float(v) for v in np.percentile(vals, [2.5, 97.5])]
    out['n_bootstrap'] = k
    if out['ci95'].get('loss') and fit.get('log_residual_rms'):
      # The members' own scatter about the law, in quadrature (scaling/holdout.py's interval).
      ts = stats.t.ppf(0.975, fit['dof']) * fit['log_residual_rms']
      lo, hi = checks.widen(np.float64(out['loss']), *out['ci95']['loss'], ts)
      out['ci95']['loss'] = [float(lo), float(hi)]
      out['ci95_includes'] = "bootstrap and the fitted rows' scatter (t·s)"
  out['warnings'] = [f'the fit flagged: {w}' for w in fit.get('warnings', [])]
  if fit.get('fitted_range'):
    out['warnings'] += checks.beyond(
      fit['fitted_range'], params=out['params'], tokens=out['tokens'], flops=out['compute']
    )
  return out


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  try:
    fit = load_law(FLAGS.law)
    if fit['law'] == 'distillation':
      out = _distillation(fit)
    else:
      out = predict(fit, FLAGS.compute, FLAGS.params, FLAGS.tokens)
  except (ValueError, OSError, KeyError) as e:
    cli.fail(repr(e) if isinstance(e, KeyError) else e)
  text = json.dumps(out, indent=2)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      f.write(text + '\n')
  print(text)
  checks.emit(out.get('warnings', []))


def teacher_loss(workdir: str) -> float:
  """A teacher workdir's eval loss: its result.json (sweep members), else its last eval/loss."""
  path = os.path.join(workdir, 'result.json')
  if os.path.exists(path):
    with open(path) as f:
      return float(json.load(f)['loss'])
  last = None
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      last = json.loads(line).get('eval/loss', last)
  if last is None:
    raise ValueError(f'--teacher={workdir}: no eval/loss in its metrics.jsonl')
  return float(last)


def _distillation(fit: dict) -> dict:
  if FLAGS.compute is None or (FLAGS.teacher_loss is None and not FLAGS.teacher):
    raise ValueError('a distillation fit needs --compute and --teacher_loss (or --teacher)')
  loss = FLAGS.teacher_loss if FLAGS.teacher_loss is not None else teacher_loss(FLAGS.teacher)
  bounds = tuple(float(x) for x in FLAGS.params_range) or None
  if bounds is not None and (len(bounds) != 2 or not 0 < bounds[0] < bounds[1]):
    raise ValueError(f'--params_range={",".join(FLAGS.params_range)}: expected lo,hi, 0 < lo < hi')
  best = distill_law.compute_optimal(fit, loss, FLAGS.compute, FLAGS.teacher_params, bounds)
  return {'law': 'distillation', **best}


if __name__ == '__main__':
  main()
