"""Command-line parsing for the scaling tools (fit, plot, predict, transfer, family, validate).

Each tool defines absl flags on its own `flags.FlagValues()` (several tools import each other and
share flag names such as --results and --out) and parses them here: `--flag=value` and
`--flag value` both work, `--help` prints the module docstring and the flags, and bad usage
(missing required flag, bad enum choice, unparsable value, unknown flag) ends with one line
`error: ...` on stderr and exit code 2, as argparse did.
"""

from train import cli

USAGE_ERROR = cli.BAD_INPUT
help_text, parse, usage_error = cli.help_text, cli.parse, cli.usage_error


fail = cli.fail  # a tool's bad input (a results file, a fit): the one `error:` line, exit 2.
