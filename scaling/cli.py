"""Command-line parsing for the scaling tools (fit, plot, predict, transfer, family, validate).

Each tool defines absl flags on its own `flags.FlagValues()` (several tools import each other and
share flag names such as --results and --out) and parses them here: `--flag=value` and
`--flag value` both work, `--help` prints the module docstring and the flags, and bad usage
(missing required flag, bad enum choice, unparsable value, unknown flag) ends with one line
`error: ...` on stderr and exit code 2, as argparse did.
"""

import sys
from collections.abc import Sequence
from typing import NoReturn

from absl import flags

from train import cli

USAGE_ERROR = cli.BAD_INPUT
_HELP_ARGS = ('-h', '-help', '--help', '--helpshort', '--helpfull')


fail = cli.fail  # a tool's bad input (a results file, a fit): the one `error:` line, exit 2.


def usage_error(message: object) -> NoReturn:
  """Writes `error: message` as one line on stderr and exits with code 2."""
  cli.fail(' '.join(str(message).split()), USAGE_ERROR)


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
