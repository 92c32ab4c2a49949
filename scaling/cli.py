"""Command-line parsing for the scaling tools (fit, plot, predict, transfer, family, validate).

Each tool defines absl flags on its own `flags.FlagValues()` (several tools import each other and
share flag names such as --results and --out) and parses them here: `--flag=value` and
`--flag value` both work, `--help` prints the module docstring and the flags, and bad usage
(missing required flag, bad enum choice, unparsable value, unknown flag) ends with one line
`error: ...` on stderr and exit code 2, as argparse did.
"""

from absl import flags

from train import cli

USAGE_ERROR = cli.BAD_INPUT
help_text, parse, usage_error = cli.help_text, cli.parse, cli.usage_error


fail = cli.fail  # a tool's bad input (a results file, a fit): the one `error:` line, exit 2.


def define_results_flags(flag_values: flags.FlagValues) -> None:
  """--results (the CSV) and --curve_areas, which scaling.fit and scaling.validate both take."""
  flags.DEFINE_string('results', None, 'results CSV, one run per row', flag_values=flag_values)
  flags.DEFINE_enum(
    'curve_areas',
    'tokens',
    ['tokens', 'steps'],
    "curve law: the lr areas S1, S2 per million tokens ('tokens': batches may differ) or per step",
    flag_values=flag_values,
  )
