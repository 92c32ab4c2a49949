"""Export one of our workdirs (its latest checkpoint) for HuggingFace: the model, or a LoRA run's
merged model and its PEFT adapter.

  python -m train.export --workdir=workdirs/default --out=exported/            # a plain run
  python -m train.export --workdir=workdirs/lora --out=exported/ --what=merged  # base + A·B
  python -m train.export --workdir=workdirs/lora --out=adapter/ --what=adapter  # PEFT dir

`merged` (the default) writes config.json + model.safetensors for
`transformers.AutoModelForCausalLM.from_pretrained`; `adapter` writes adapter_config.json +
adapter_model.safetensors for `peft.PeftModel.from_pretrained(<the base>, out)`, with the
run's `init_from` (an hf: directory) as its base_model_name_or_path. HF checkpoints are
standard-parametrized: a μP run is refused (models/hf.py).
"""

from collections.abc import Sequence

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


def export(workdir: str, out: str, what: str = 'merged') -> None:
  """What the command line does (module docstring)."""
  cfg, params = init_from.load_params(workdir)
  if what == 'adapter':
    src = workdir_lib.read_json(f'{workdir}/config.json').get('init_from', '')
    base = src[3:] if src.startswith('hf:') else ''
    peft_adapter.export_adapter(cfg, params, out, base_model=base)
    return
  if cfg.lora_rank:
    cfg, params = lora.base_config(cfg), lora.merge(cfg, params)
  hf.export_checkpoint(cfg, params, out)


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  with cli.one_line_errors(FLAGS.debug):
    export(FLAGS.workdir, FLAGS.out, FLAGS.what)
  print(FLAGS.out)


if __name__ == '__main__':
  main()
