"""Entry point: `python main.py --config=configs/default.py[:arg] [--config.a.b=v] --workdir=W`.

Wires the config to the right trainer: plain LM training, distillation (a `distill`
section) or a scaling sweep (a `sweep` section). Reruns resume from `--workdir`. A plain or
distillation run that reached its last step writes its final metrics (as printed) to
`<workdir>/result.json`, its done-marker.
Bad input (config, files, dataset, tokenizer, checkpoint, resume) ends with one line on
stderr and exit code 2, a failed run (divergence, disk full) with one line and exit code 1;
`--debug` shows the Python traceback instead.
"""

import json
import logging
import os
import re
import sys

# Before anything imports TensorFlow (TFDS reads data with it): no C++ start-up chatter.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from train import cli, divergence

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file (path[:arg]).', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
_DEBUG = flags.DEFINE_bool('debug', False, 'Show Python tracebacks instead of one-line errors.')
_HELP_CONFIG = flags.DEFINE_bool(
  'help_config',
  False,
  'Print every config key with its resolved value (after the '
  'overrides) and exit; no --workdir needed.',
)
flags.mark_flags_as_required(['config'])


def _config_keys(config: ConfigDict) -> str:
  """`section.key = value` for every key of the resolved config (sorted, as ConfigDict keeps them)."""
  lines = []

  def walk(node: ConfigDict, prefix: str) -> None:
    for key, value in node.items():
      if hasattr(value, 'items'):
        walk(value, f'{prefix}{key}.')
      else:
        lines.append(f'{prefix}{key} = {value!r}')

  walk(config, '')
  return '\n'.join(lines)


def _config_error(e: BaseException, argv: list[str]) -> str:
  """One line for a config that does not load: missing file, syntax error, unknown key."""
  config_arg = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), '')
  path = config_arg.split(':', 1)[0]
  if isinstance(e, SyntaxError):
    return f'--config={config_arg}: {e.filename}:{e.lineno}: {e.msg}'
  if path and not os.path.isfile(path):
    return f'--config={config_arg}: no such file {path!r}'
  if isinstance(e, (AttributeError, KeyError)):  # ml_collections: an override names no key.
    key = re.match(r"""\W*(\w+)""", str(e).strip('"\\'))
    key = key.group(1) if key else ''
    for arg in argv:
      m = re.match(r'--config\.([\w.]+)', arg)
      parts = m.group(1).split('.') if m else []
      if key in parts:  # the override's path up to its first unknown part.
        return _unknown_override('.'.join(parts[: parts.index(key) + 1]))
  return f'--config={config_arg}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'


def _unknown_override(dotted: str) -> str:
  """The same 'unknown key (did you mean ...)' message the config-file check gives."""
  from configs import base
  from train import validation  # (imports JAX; only reached on this error path)

  *sections, key = dotted.split('.')
  node = base.get_config()
  for s in sections:
    node = node[s] if s in node else {}
  return validation.unknown_key(f'config.{dotted}', key, node.keys() if node else [])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors (the config file is loaded here)."""
  debug = '--debug' in argv
  try:
    rest = flags.FLAGS(argv)
    _ = _CONFIG.value.keys  # config_flags defers a failed load (e.g. a missing file) to here.
    return rest
  except flags.Error as e:
    if debug:
      raise
    message = _config_error(e, argv)
    if 'no such file' not in message:
      cause = e
      while cause.__cause__ or cause.__context__:  # the innermost error says what went wrong.
        cause = cause.__cause__ or cause.__context__
      first = str(cause).splitlines()[0] if cause is not e and str(cause) else ''
      detail = f' {type(cause).__name__}: {first}' if first and first not in str(e) else ''
      message = f'{str(e).splitlines()[0]}{detail}; see `python main.py --help`'
    cli.fail(message)
  except Exception as e:  # the config file or an override is bad.
    if debug:
      raise
    cli.fail(_config_error(e, argv))


def _evaluators(config: ConfigDict) -> list:
  """The evaluators the loop runs after the eval loss: lm-eval's when config.lm_eval.tasks is set
  (its task names are checked, and the tasks loaded, here)."""
  if not config.get('lm_eval') or not config.lm_eval.tasks:
    return []
  from train.tools import harness  # imports lm-eval: only when tasks are set.

  return [harness.LmEvalEvaluator(config.lm_eval)]


def _train(config: ConfigDict, workdir: str) -> None:
  from models import backend
  from train import distributed  # JAX must not be touched before distributed init.

  os.environ.update(backend.xla_env())  # per-backend XLA flags, read when the backend starts.
  distributed.initialize(config.distributed)
  import jax

  logging.info(
    'JAX %s on %d %s device(s), %d process(es)',
    jax.__version__,
    jax.device_count(),
    jax.devices()[0].device_kind,
    jax.process_count(),
  )
  evaluators = _evaluators(config)  # before any compile: a bad task name stops the run here.
  if 'sweep' in config:
    from scaling import sweep

    result = sweep.run(config, workdir, evaluators=evaluators)  # derives each member itself.
  else:
    result = _run(config, workdir, evaluators)
  if jax.process_index() == 0:
    from train import metrics

    out = metrics.strict_json(result)
    print(json.dumps(out, indent=1, sort_keys=True), flush=True)
    if 'sweep' not in config and _finished(result):
      from scaling import results
      from train import workdir as workdir_lib

      workdir_lib.write_json(os.path.join(workdir, results.RESULT_FILE), out)  # its done-marker.


def _run(config: ConfigDict, workdir: str, evaluators: list) -> dict:
  """A plain or distillation run: the config validated once, then its trainer."""
  from train import init_from, loop, validation

  derived = validation.derive(config)
  if derived.distill is not None:
    from train.distillation import trainer as distill

    return distill.run(derived, workdir, evaluators=evaluators)
  return loop.run(
    derived, workdir, init_params_fn=init_from.params_fn(derived.config), evaluators=evaluators
  )


def _finished(result: dict) -> bool:
  """Whether the run reached its last step (not stopped early by a signal or stop_after)."""
  return 'preempted_at_step' not in result and 'stopped_at_step' not in result


def main(argv: list[str]) -> None:
  del argv
  cli.quiet(_DEBUG.value)  # our lines only (libraries' warnings too); --verbosity=1: theirs too.
  if _HELP_CONFIG.value:
    print(_config_keys(_CONFIG.value))
    return
  if not _WORKDIR.value:
    cli.fail('--workdir is required (the directory for checkpoints, metrics and logs)')
  try:
    with cli.one_line_errors(_DEBUG.value, failures=divergence.Diverged):
      _train(_CONFIG.value, _WORKDIR.value)
  except KeyboardInterrupt as e:  # a second Ctrl-C, or a signal during start-up: stop at once.
    sys.stderr.write(f'{e}\n' if str(e) else 'interrupted\n')  # (preemption.Interrupted says why)
    sys.stderr.flush()
    os._exit(getattr(e, 'exit_code', 130))


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
