"""Export one of our workdirs (its latest checkpoint) for HuggingFace: the model, or a LoRA run's
merged model and its PEFT adapter.

  python -m train.export --workdir=workdirs/default --out=exported/            # a plain run
  python -m train.export --workdir=workdirs/lora --out=exported/ --what=merged  # base + A·B
  python -m train.export --workdir=workdirs/lora --out=adapter/ --what=adapter  # PEFT dir

`merged` (the default) writes config.json + model.safetensors for
`transformers.AutoModelForCausalLM.from_pretrained`; `adapter` writes adapter_config.json +
adapter_model.safetensors for `peft.PeftModel.from_pretrained(<the base>, out)`, with the
run's `init_from` (an hf: directory) as its base_model_name_or_path. HF checkpoints are
standard-parametrized: a μP run is refused (models/hf.py). A few lines summarise the export
(params before -> after, the files written); the full record is kept in OUT/export.json.
"""

import os
import time
from collections.abc import Sequence

import jax
from absl import flags

from models import hf, lora, peft_adapter
from train import cli, init_from
from train import workdir as workdir_lib

FLAGS = flags.FlagValues()  # its own (train/cli.py): tests import it beside other tools.
flags.DEFINE_string('workdir', None, 'one of our workdirs', flag_values=FLAGS)
flags.DEFINE_string('out', None, 'output directory', flag_values=FLAGS)
flags.DEFINE_enum(
  'what', 'merged', ['merged', 'adapter'], 'the model, or the LoRA adapter', flag_values=FLAGS
)
flags.DEFINE_bool('debug', False, 'show tracebacks', flag_values=FLAGS)
flags.mark_flags_as_required(['workdir', 'out'], flag_values=FLAGS)


RECORD = 'export.json'  # the full record, written beside the exported files.


def export(workdir: str, out: str, what: str = 'merged') -> dict:
  """What the command line does (module docstring); returns the record kept in OUT/export.json."""
  t0 = time.time()
  cfg, params = init_from.load_params(workdir)
  record = {
    'source': os.path.abspath(workdir),
    'from': init_from.source_step(workdir),
    'what': what,
    'out': os.path.abspath(out),
    'params_before': _count(params),
  }
  if what == 'adapter':
    src = workdir_lib.read_json(f'{workdir}/config.json').get('init_from', '')
    base = src[3:] if src.startswith('hf:') else ''
    peft_adapter.export_adapter(cfg, params, out, base_model=base)
    record.update(base_model=base, params_after=_count(lora.split(params)[1]))
  else:
    if cfg.lora_rank:
      cfg, params = lora.base_config(cfg), lora.merge(cfg, params)
    hf.export_checkpoint(cfg, params, out)
    record.update(params_after=_count(params), hf_model_type=hf.to_hf_config(cfg).model_type)
  files = sorted(f for f in os.listdir(out) if f != RECORD and os.path.isfile(os.path.join(out, f)))
  record['files'] = {f: os.path.getsize(os.path.join(out, f)) for f in files}
  record['wall_s'] = round(time.time() - t0, 1)
  workdir_lib.write_json(os.path.join(out, RECORD), record)
  return record


def _count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def summary(record: dict) -> str:
  """A few lines for people: what was exported, params before -> after, and where it is."""
  what = 'the LoRA adapter (PEFT)' if record['what'] == 'adapter' else 'the model (HF)'
  if record['what'] == 'merged' and record['params_after'] != record['params_before']:
    what = 'the merged model (HF, base + LoRA)'
  lines = [
    f'Exported {what} of {record["source"]} ({record["from"]}) in {record["wall_s"]:.1f}s',
    f'  params: {record["params_before"]:,} -> {record["params_after"]:,}',
    f'  files:  {", ".join(f"{k} ({_mib(v)})" for k, v in record["files"].items())}',
  ]
  if record['what'] == 'adapter':
    lines.append(
      f'  base:   {record["base_model"] or "(none recorded: the export of the base run)"}'
    )
  return '\n'.join([*lines, f'  out:    {record["out"]} (record: {RECORD})'])


def _mib(n: int) -> str:
  return f'{n / 2**20:.1f} MiB' if n >= 2**20 else f'{n / 2**10:.1f} KiB'


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  with cli.one_line_errors(FLAGS.debug):
    record = export(FLAGS.workdir, FLAGS.out, FLAGS.what)
  print(summary(record))


if __name__ == '__main__':
  main()
