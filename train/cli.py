"""One-line `error:` exits for every command line (main.py, train.data.prepare, train.sample,
train.harness, the scaling tools): bad input exits 2, a failed run 1, a bug keeps its traceback.
Tools whose modules import each other define flags on their own `flags.FlagValues()` and
parse them with `parse` (shared names such as --out would collide on absl's global FLAGS)."""

import contextlib
import errno
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from absl import flags

BAD_INPUT, RUN_FAILED = 2, 1
# Errors that mean "fix the input": our validation raises ValueError naming the field or path.
INPUT_ERRORS = (
  ValueError,
  NotImplementedError,
  FileNotFoundError,
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
  if isinstance(e, OSError) and e.strerror and not e.filename:
    return e.strerror
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
