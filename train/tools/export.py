"""Export one of our workdirs (its latest checkpoint) for HuggingFace: the model, or a LoRA run's
merged model and its PEFT adapter.

  python -m train.tools.export --workdir=workdirs/default --out=exported/            # a plain run
  python -m train.tools.export --workdir=workdirs/lora --out=exported/ --what=merged  # base + A·B
  python -m train.tools.export --workdir=workdirs/lora --out=adapter/ --what=adapter  # PEFT dir
  python -m train.tools.export --workdir=workdirs/int4 --out=exported/ --format=compressed-tensors

`merged` (the default) writes config.json + model.safetensors for
`transformers.AutoModelForCausalLM.from_pretrained`; `adapter` writes adapter_config.json +
adapter_model.safetensors for `peft.PeftModel.from_pretrained(<the base>, out)`, with the
run's base (its hf: directory or our workdir) as its base_model_name_or_path. Both carry the run's
tokenizer for `transformers.AutoTokenizer.from_pretrained(out)`: the byte tokenizer's own files
(train/data/tokenizers.py write_hf) or copies of an HF tokenizer directory's; the model also gets
generation_config.json (EOS = BOS = pad = the tokenizer's EOS: every training document follows
one), so `python -m train.tools.sample --checkpoint=hf:OUT` samples what the workdir samples. HF
checkpoints are standard-parametrized: a μP run is refused (models/hf.py). A few lines summarise
the export (params before -> after, the files written); the full record is kept in
OUT/export.json.

`--format=dense` (the default) writes float32 weights: a quantized workdir's (train.tools.compress
--quantize) dequantized. `--format=compressed-tensors` keeps its int8 / int4 / int3 / fp8 values
and scales as they are, with the `quantization_config` that transformers (with the
compressed-tensors package) and vLLM read, and marks a model whose kernels are 2:4 sparse as such
(models/compressed_export.py); LLaMA-family models only (GPT-2's Conv1D layers have no
compressed-tensors form), not AWQ kernels. Our own importer (hf:OUT) reads float weights only.
"""

import os
import time
from collections.abc import Sequence

import jax
import safetensors.numpy
from absl import flags

import models
from models import compressed_export, hf, lora, peft_adapter, resident_quant
from train import cli, init_from
from train import workdir as workdir_lib
from train.data import tokenizers

FLAGS = flags.FlagValues()  # its own (train/cli.py): tests import it beside other tools.
flags.DEFINE_string('workdir', None, 'one of our workdirs', flag_values=FLAGS)
flags.DEFINE_string('out', None, 'output directory', flag_values=FLAGS)
flags.DEFINE_enum(
  'what', 'merged', ['merged', 'adapter'], 'the model, or the LoRA adapter', flag_values=FLAGS
)
flags.DEFINE_enum(
  'format',
  'dense',
  ['dense', 'compressed-tensors'],
  "float32 weights, or a quantized workdir's values and scales as they are (compressed-tensors)",
  flag_values=FLAGS,
)
flags.DEFINE_bool('debug', False, 'show tracebacks', flag_values=FLAGS)
flags.mark_flags_as_required(['workdir', 'out'], flag_values=FLAGS)


RECORD = 'export.json'  # the full record, written beside the exported files.


def export(workdir: str, out: str, what: str = 'merged', fmt: str = 'dense') -> dict:
  """What the command line does (module docstring); returns the record kept in OUT/export.json."""
  t0 = time.time()
  spec = init_from.source_tokenizer(workdir)
  tok = tokenizers.make_tokenizer(spec)  # a missing tokenizer stops the export before it writes.
  quant = _check_format(workdir, what, fmt)
  cfg, params = init_from.load_params(workdir)
  record = {
    'source': os.path.abspath(workdir),
    'from': init_from.source_step(workdir),
    'what': what,
    'format': fmt,
    'quantized': quant,
    'out': os.path.abspath(out),
    'params_before': _count(params),
  }
  if what == 'adapter':
    base = _base_model(workdir, cfg)
    peft_adapter.export_adapter(cfg, params, out, base_model=base)
    record.update(base_model=base, params_after=_count(lora.split(params)[1]))
  else:
    if cfg.lora_rank:
      cfg, params = lora.base_config(cfg), lora.merge(cfg, params)
    ids = {f'{k}_token_id': tok.eos_id for k in ('bos', 'eos', 'pad')}
    if fmt == 'compressed-tensors':
      packed = _packed(workdir, quant)
      record['quantization_config'] = compressed_export.export(cfg, params, out, ids, packed)
    else:
      hf.export_checkpoint(cfg, params, out, ids)
    record.update(params_after=_count(params), hf_model_type=hf.to_hf_config(cfg).model_type)
  tok.write_hf(out)
  record['tokenizer'] = spec
  files = sorted(f for f in os.listdir(out) if f != RECORD and os.path.isfile(os.path.join(out, f)))
  record['files'] = {f: os.path.getsize(os.path.join(out, f)) for f in files}
  record['bytes_on_disk'] = sum(record['files'].values())
  record['wall_s'] = round(time.time() - t0, 1)
  workdir_lib.write_json(os.path.join(out, RECORD), record)
  return record


def _quantized(workdir: str) -> dict:
  """The `quantized` record of a packed quantized workdir (train/tools/quantized.py), else {}."""
  if not os.path.exists(os.path.join(workdir, init_from.QUANTIZED_FILE)):
    return {}
  return workdir_lib.read_json(os.path.join(workdir, 'config.json'))['quantized']


def _check_format(workdir: str, what: str, fmt: str) -> dict:
  """One-line ValueError, before any weight is read, for a --format the source cannot take;
  returns its `quantized` record ({}: float weights)."""
  quant = {} if workdir.startswith(('hf:', init_from.PEFT)) else _quantized(workdir)
  if quant.get('activations'):  # W8A8 (models/act_quant.py): transformers runs float inputs.
    raise ValueError(
      f'{workdir}: its dense inputs are quantized too (W8A8, activations {quant["activations"]}), '
      'which an HF export cannot hold; export a weights-only workdir (no --activations)'
    )
  if fmt == 'dense':
    return quant
  if what == 'adapter':
    raise ValueError(
      '--format=compressed-tensors: the adapter (--what=adapter) is float PEFT weights; '
      'export the merged model (--what=merged)'
    )
  cfg = init_from.source_model_config(workdir)
  compressed_export.check(cfg, quant.get('scheme'), quant.get('method', 'rtn'))
  if not quant and not _records_two_four(workdir):
    raise ValueError(
      f'--format=compressed-tensors: {workdir} is neither a quantized workdir (train.tools.compress '
      '--quantize) nor 2:4 sparse (train.tools.compress --pattern=2:4, config.sparsity.pattern=2:4); '
      'export it with --format=dense'
    )
  return quant


def _records_two_four(workdir: str) -> bool:
  """Whether our workdir records a 2:4 pattern: train.tools.compress's, or its training's
  sparsity."""
  if workdir.startswith(('hf:', init_from.PEFT)):
    return False
  compress = os.path.join(workdir, 'compress.json')
  if os.path.exists(compress) and workdir_lib.read_json(compress).get('pattern') == '2:4':
    return True
  trained = workdir_lib.read_json(os.path.join(workdir, 'config.json')).get('sparsity', {})
  return trained.get('target', 0) > 0 and trained.get('pattern') == '2:4'


def _packed(workdir: str, quant: dict) -> tuple[dict, str, int] | None:
  """(packed params, scheme, group) of a packed quantized workdir, None for float weights."""
  if not quant:
    return None
  path = os.path.join(workdir, init_from.QUANTIZED_FILE)
  return safetensors.numpy.load_file(path), quant['scheme'], quant['group']


def _base_model(workdir: str, cfg: models.ModelConfig) -> str:
  """The adapter's base_model_name_or_path: the absolute directory of the run's base (its hf:
  source, our workdir, or a PEFT source's base); '' for a run not started from one."""
  src = workdir_lib.read_json(f'{workdir}/config.json').get('init_from', '')
  record = init_from.base_record(src, cfg)
  return init_from.source_path(record['base']) if record else ''


def _count(params) -> int:
  leaves = jax.tree.leaves(params, is_leaf=resident_quant.is_held)  # (a QLoRA base's held kernels)
  return int(sum(map(resident_quant.values, leaves)))


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
  if record['what'] == 'merged':
    lines.append(_format_line(record))
  if record['what'] == 'adapter':
    lines.append(
      f'  base:   {record["base_model"] or "(none recorded: the export of the base run)"}'
    )
  return '\n'.join([*lines, f'  out:    {record["out"]} (record: {RECORD})'])


def _format_line(record: dict) -> str:
  """The weights' format and the export's size on disk, in words."""
  quant, size = record.get('quantized') or {}, _mib(record['bytes_on_disk'])
  scheme = quant.get('scheme', '')
  how = f'{scheme} ' + (f'group {quant["group"]}' if quant.get('group') else 'per channel')
  if record['format'] == 'compressed-tensors':
    qc = record['quantization_config']
    parts = [f'{qc["format"]} {how}'] if quant else []
    parts += ['2:4 sparsity marked'] if qc['sparsity_config'] else []
    return f'  format: compressed-tensors ({", ".join(parts)}), {size} on disk'
  if quant:
    return (
      f'  format: float32, dequantized from {how} ({size} on disk; '
      '--format=compressed-tensors keeps the quantized values)'
    )
  return f'  format: float32 ({size} on disk)'


def _mib(n: int) -> str:
  return f'{n / 2**20:.1f} MiB' if n >= 2**20 else f'{n / 2**10:.1f} KiB'


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  with cli.one_line_errors(FLAGS.debug):
    record = export(FLAGS.workdir, FLAGS.out, FLAGS.what, FLAGS.format)
  print(summary(record))


if __name__ == '__main__':
  main()
