"""One-line `error:` exits for every command line (main.py, train.data.prepare, train.tools.sample,
train.tools.harness, the scaling tools): bad input exits 2, a failed run 1, a bug keeps its
traceback. Tools whose modules import each other define flags on their own `flags.FlagValues()` and
parse them with `parse` (shared names such as --out would collide on absl's global FLAGS).

Every command line is quiet the same way (`quiet`, which `run` and main.py call; importing this
module keeps TensorFlow's start-up banners off for the `parse` tools too): only our own log lines
(`HH:MM:SS message`) and libraries' warnings reach stderr; `--verbosity=1` (absl's flag) shows the
libraries' INFO lines and progress bars again, `--debug` everything, in absl's format."""

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

# Before anything imports TensorFlow (TFDS reads data with it, lm-eval's datasets probe for it):
# no C++ start-up chatter (the oneDNN banner, CUDA probes). Every entry point imports this module
# before TensorFlow; child processes (scaling.parallel's) inherit the settings.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app, flags  # noqa: E402

BAD_INPUT, RUN_FAILED = 2, 1
# Errors that mean "fix the input": our validation raises ValueError naming the field or path.
INPUT_ERRORS = (
  ValueError,
  NotImplementedError,
  FileNotFoundError,
  FileExistsError,  # e.g. --out names a file where a directory goes.
  NotADirectoryError,
  IsADirectoryError,
  PermissionError,
)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # the run failed; its input was fine.
_REFUSED = (errno.EROFS, errno.EACCES)  # a read-only or forbidden path: fix the input.

_HELP_ARGS = ('-h', '-help', '--help', '--helpshort', '--helpfull')

Errors = type[BaseException] | tuple[type[BaseException], ...]


def fail(message: object, code: int = BAD_INPUT) -> NoReturn:
  """Writes `error: message` as one line on stderr and exits with `code`."""
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  sys.exit(code)


def message(e: BaseException) -> str:
  """The first line of e's message (an OSError without a path: its strerror)."""
  if isinstance(e, OSError) and e.strerror:
    return f'{e.filename}: {e.strerror}' if e.filename else e.strerror
  return str(e).splitlines()[0] if str(e) else type(e).__name__


def _as_tuple(errors: Errors) -> tuple:
  return errors if isinstance(errors, tuple) else (errors,)


def exit_code(
  e: BaseException, input_errors: Errors = INPUT_ERRORS, failures: Errors = ()
) -> int | None:
  """RUN_FAILED (`failures`, disk full, out of memory), BAD_INPUT (`input_errors`, a read-only or forbidden
  path), or None: not a known error, a bug whose traceback should show."""
  if isinstance(e, (MemoryError, *_as_tuple(failures))) or (
    isinstance(e, OSError) and e.errno in _DISK_FULL
  ):
    return RUN_FAILED  # out of memory or disk: the input was fine.
  if (isinstance(e, OSError) and e.errno in _REFUSED) or isinstance(e, input_errors):
    return BAD_INPUT
  return None


@contextlib.contextmanager
def one_line_errors(
  debug: bool = False, input_errors: Errors = INPUT_ERRORS, failures: Errors = ()
) -> Iterator[None]:
  """Ends a known error raised inside (exit_code) with `error: <its first line>` and its exit
  code; any other exception, or every one with `debug`, propagates with its traceback."""
  try:
    yield
  except Exception as e:
    code = exit_code(e, input_errors, failures)
    if code is None or debug:
      raise
    fail(message(e), code)


def usage_error(message: object) -> NoReturn:
  """Writes `error: message` as one line on stderr and exits with code 2."""
  fail(' '.join(str(message).split()), BAD_INPUT)


# Libraries whose INFO lines and progress bars a command line hides (`quiet`); orbax and TFDS log
# through absl's logger. Their warnings and errors still show, in our format.
LIBRARY_LOGGERS = (
  'absl',
  'orbax',
  'jax',
  'tensorflow',
  'tensorflow_datasets',
  'lm_eval',
  'datasets',
  'transformers',
  'huggingface_hub',
  'matplotlib',
  'urllib3',
  'filelock',
  'fsspec',
)


class QuietLibraries(logging.Filter):
  """Our own lines (the root logger's: the project logs with `logging.info`) pass; a library's
  below WARNING do not (orbax's per-save chatter, TFDS "Reusing dataset", lm-eval's task setup,
  "Unable to initialize backend 'tpu'" on CPU); its warnings and errors pass as one line (the
  error itself reaches main and is reported there). `verbose`: everything passes."""

  def __init__(self, verbose: bool = False) -> None:
    super().__init__()
    self.verbose = verbose

  def filter(self, record: logging.LogRecord) -> bool:
    if self.verbose:
      return True
    if '/asyncio/' in record.pathname:  # orbax's abandoned writes after a failed save.
      return 'exception was never retrieved' not in str(record.msg)
    if record.name == 'root':
      return True  # ours (orbax and TFDS log through absl's logger, 'absl').
    if record.levelno < logging.WARNING:
      return False
    if 'xla_bridge' in record.pathname and 'Unable to initialize backend' in str(record.msg):
      return False  # (at any level: a TPU plugin that finds no TPU, on a CPU or GPU host)
    if '/matplotlib/' in record.pathname and record.levelno < logging.ERROR:
      return False  # its font-cache notices: TensorFlow imports Keras, which imports matplotlib.
    if '/orbax/' in record.pathname and record.levelno >= logging.ERROR:
      record.exc_info, record.exc_text = None, None
      record.msg, record.args = str(record.getMessage())[:200], ()
    return True


class Console(logging.Formatter):
  """`HH:MM:SS message`, with the level named only for warnings and errors; every line of a
  multi-line message (a table) carries the time, so the log stays one record per line."""

  def format(self, record: logging.LogRecord) -> str:
    level = '' if record.levelno < logging.WARNING else record.levelname + ': '
    t = self.formatTime(record, '%H:%M:%S')
    first, *rest = record.getMessage().split('\n')
    return '\n'.join([f'{t} {level}{first}', *(f'{t} {line}' for line in rest)])


_tqdm_init = None  # tqdm's own __init__ while `quiet` turns its bars off.


def _progress_bars(show: bool) -> None:
  """Turn every tqdm progress bar (lm-eval's per-evaluation bars, HF datasets') off or back on."""
  global _tqdm_init
  try:
    from tqdm import std
  except ImportError:
    return
  if show and _tqdm_init is not None:
    std.tqdm.__init__, _tqdm_init = _tqdm_init, None
  elif not show and _tqdm_init is None:
    _tqdm_init = original = std.tqdm.__init__

    def init(self, *args, **kwargs):
      kwargs['disable'] = True  # (lm-eval passes disable=False itself)
      original(self, *args, **kwargs)

    std.tqdm.__init__ = init


def verbosity() -> int:
  """absl's --verbosity (0 where it is not defined or not parsed)."""
  try:
    return int(flags.FLAGS.verbosity)
  except (AttributeError, flags.Error):
    return 0


def quiet(debug: bool = False, verbose: bool | None = None) -> None:
  """The console every absl command line shares (main.py's and `run`'s): our lines as
  `HH:MM:SS message`, the libraries' (absl/orbax, TFDS, TensorFlow, JAX, lm-eval, HF datasets)
  at WARNING and above only, and no progress bars. `verbose` (default: absl's --verbosity >= 1)
  or `debug` shows the libraries' INFO and progress bars again; `debug` also keeps absl's format.
  Safe to call more than once in a process (the last call wins)."""
  verbose = debug or (verbosity() >= 1 if verbose is None else verbose)
  for name in LIBRARY_LOGGERS:
    logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
  for handler in logging.getLogger().handlers:
    for f in [f for f in handler.filters if isinstance(f, QuietLibraries)]:
      handler.removeFilter(f)
    handler.addFilter(QuietLibraries(verbose))
    if not debug:
      handler.setFormatter(Console())
  _progress_bars(show=verbose)


def help_text(flag_values: flags.FlagValues, doc: str) -> str:
  """The module docstring followed by the flags' help (absl's format, without module headers)."""
  body = flag_values.get_help(include_special_flags=False).splitlines()
  return '\n'.join(
    [(doc or '').strip(), '', 'flags:'] + [line for line in body if line.startswith(' ')]
  )


def parse(flag_values: flags.FlagValues, argv: Sequence[str] | None, doc: str) -> None:
  """Parses argv (the arguments without the program name; None: sys.argv[1:]) into flag_values.

  Every flag starts from its default, so main() can be called several times in one process.
  """
  args = list(sys.argv[1:] if argv is None else argv)
  flag_args = args[: args.index('--')] if '--' in args else args
  if any(a in _HELP_ARGS for a in flag_args):
    print(help_text(flag_values, doc))
    sys.exit(0)
  flag_values.unparse_flags()
  try:
    rest = flag_values((sys.argv[:1] or ['']) + args)
  except flags.Error as e:
    usage_error(e)
  if len(rest) > 1:
    usage_error(f'unexpected arguments: {" ".join(rest[1:])}')


def _first_line(e: BaseException) -> str:
  """e's first line, with its innermost cause's (absl wraps a config file's own error)."""
  cause = e
  while cause.__cause__ or cause.__context__:
    cause = cause.__cause__ or cause.__context__
  text = f'{str(e).splitlines()[0] if str(e) else type(e).__name__}'
  if cause is not e and str(cause):
    text += f' ({type(cause).__name__}: {str(cause).splitlines()[0]})'
  return text


def _unknown_key(e: BaseException, argv: Sequence[str]) -> str | None:
  """'--config.a.b: unknown key' when a config override names a key its config lacks."""
  cause = e.__cause__ or e.__context__
  if not isinstance(cause, (KeyError, AttributeError)):
    return None
  key = str(cause.args[0]).strip("'") if cause.args else ''
  for arg in argv:
    name = arg.lstrip('-').split('=')[0]
    if '.' in name and key and key in name.split('.'):
      return f'--{name}: unknown key {key!r}'
  return None


def run(main: Callable[[list[str]], object], config_flags: Sequence[str] = ('config',)) -> None:
  """absl's app.run(main) inside the one error boundary every command line shares: a bad flag or
  config file (`config_flags` are loaded while parsing), a known error (one_line_errors) and
  Ctrl-C each end in one `error:` line (exit 2, 1 or 130); `--debug` shows tracebacks."""
  debug = '--debug' in sys.argv

  def parse(argv: list[str]) -> list[str]:
    for arg in argv[1:]:
      name, _, value = arg.lstrip('-').partition('=')
      path = value.split(':')[0]
      if name in config_flags and value and not os.path.exists(path):
        usage_error(f'--{name}={value}: no such file {path!r}')
    try:
      rest = flags.FLAGS(argv)
      for name in config_flags:  # config_flags defers a failed load (a missing file) to here.
        if name in flags.FLAGS and flags.FLAGS[name].present:
          _ = flags.FLAGS[name].value.keys  # (an attribute: the lazy config loads)
      return rest
    except Exception as e:
      if debug:
        raise
      usage_error(f'{_unknown_key(e, argv) or _first_line(e)}; see `--help`')

  def guarded(argv: list[str]) -> None:
    quiet(debug)  # (after parsing: absl's --verbosity is known, its handler installed)
    try:
      with one_line_errors(debug):
        main(argv)
    except KeyboardInterrupt:
      fail('interrupted (Ctrl-C)', 130)

  app.run(guarded, flags_parser=parse)
