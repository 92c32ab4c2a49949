"""A real offline downstream task built from the embedded corpus: name a standard-library function
from its file, signature and docstring (the fine-tuning study's task).

  python -m train.data.name_task --out=workdirs/name_task [--train_examples=N]

Every public, documented function or method of the interpreter's stdlib `.py` files (parsed with
`ast`) gives one example. The prompt names the file, the parameters and the docstring's first
line as comments and ends with `def `; the completion is the name and `(`:

  # logging/__init__.py
  # (self, level)
  # Set the logging level of this logger.  level must be an int or a str.
  def setLevel(

Examples longer than MAX_BYTES are left out (each fits one 128-byte row with its EOS). Files are
split by the pre-training corpus's own rule (stdlib_corpus.split_of: sha1 of the path), so the
validation functions come from files pre-training never saw. Writes
  OUT/train.jsonl, OUT/validation.jsonl   {"prompt", "completion"}: supervised data (`jsonl:OUT`)
  OUT/name_task.jsonl                      validation with "name", "choices" and "label"
  OUT/name_gen.yaml, OUT/name_mc.yaml      lm-eval tasks on it (`include_path=OUT`): generation
                                           until '(' scored by exact match; multiple choice of the
                                           name against three other validation names (acc).
A pure function of the interpreter's files and the seed: a re-run writes the same files.
"""

import ast
import json
import os
import random
from collections.abc import Iterator, Sequence

from absl import flags

from train import cli
from train.data import stdlib_corpus

MAX_SUMMARY = 160  # bytes of the docstring's first line kept.
MAX_BYTES = 127  # prompt + completion: with its EOS one 128-byte row (the byte tokenizer).
NUM_CHOICES = 4

GEN_YAML = """# Name a stdlib function from its file, parameters and docstring (train/data/name_task.py).
task: name_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{name}}}}"
generation_kwargs:
  until: ["(", "\\n"]
  max_gen_toks: 40
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

MC_YAML = """# Pick a stdlib function's name among four (train/data/name_task.py).
task: name_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _summary(doc: str) -> str:
  """The docstring's first line, ASCII, at most MAX_SUMMARY bytes ('' when unusable)."""
  line = doc.strip().splitlines()[0].strip() if doc.strip() else ''
  return line[:MAX_SUMMARY] if line.isascii() and len(line) >= 8 else ''


def examples(split: str, root: str | None = None) -> Iterator[dict]:
  """{"prompt", "completion", "name"} of every usable function of the split's files, in order."""
  root = root or stdlib_corpus.stdlib_root()
  seen = set()
  for rel in stdlib_corpus.list_files(root):
    if stdlib_corpus.split_of(rel) != split:
      continue
    try:
      with open(os.path.join(root, rel), encoding='utf-8') as f:
        tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue  # a few stdlib test files are deliberately broken.
    for node in ast.walk(tree):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      summary = _summary(ast.get_docstring(node) or '')
      if node.name.startswith('_') or not summary or (node.name, summary) in seen:
        continue
      seen.add((node.name, summary))
      args = ast.unparse(node.args).replace('\n', ' ')
      prompt = f'# {rel}\n# ({args})\n# {summary}\ndef '
      if len(prompt) + len(node.name) + 1 > MAX_BYTES:
        continue
      yield {'prompt': prompt, 'completion': node.name + '(', 'name': node.name}


def with_choices(rows: Sequence[dict], seed: int) -> list[dict]:
  """Each row with NUM_CHOICES candidate names ('name(') drawn from the other rows' names."""
  rng, names = random.Random(seed), sorted({r['name'] for r in rows})
  out = []
  for r in rows:
    wrong = rng.sample([n for n in names if n != r['name']], NUM_CHOICES - 1)
    label = rng.randrange(NUM_CHOICES)
    choices = [n + '(' for n in wrong[:label] + [r['name']] + wrong[label:]]
    out.append({**r, 'choices': choices, 'label': label})
  return out


def _write_jsonl(path: str, rows: Sequence[dict], keys: Sequence[str]) -> None:
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    for r in rows:
      f.write(json.dumps({k: r[k] for k in keys}) + '\n')
  os.replace(path + '.tmp', path)


def write(
  out: str, seed: int = 0, root: str | None = None, train_examples: int = 0
) -> dict[str, int]:
  """Writes the files of the module doc into `out`; returns the examples per split. With
  `train_examples` only the first that many of the shuffled training examples (nested: a smaller
  set is part of every larger one of the same seed)."""
  os.makedirs(out, exist_ok=True)
  train, validation = list(examples('train', root)), list(examples('validation', root))
  random.Random(seed).shuffle(train)  # file order would feed one module at a time.
  train = train[:train_examples] if train_examples else train
  _write_jsonl(os.path.join(out, 'train.jsonl'), train, ('prompt', 'completion'))
  _write_jsonl(os.path.join(out, 'validation.jsonl'), validation, ('prompt', 'completion'))
  task = os.path.abspath(os.path.join(out, 'name_task.jsonl'))
  _write_jsonl(task, with_choices(validation, seed), ('prompt', 'name', 'choices', 'label'))
  for name, text in (('name_gen', GEN_YAML), ('name_mc', MC_YAML)):
    with open(os.path.join(out, f'{name}.yaml'), 'w') as f:
      f.write(text.format(data=task))
  return {'train': len(train), 'validation': len(validation)}


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  counts = write(f.out, f.seed, train_examples=f.train_examples)
  print(f'wrote {counts["train"]} + {counts["validation"]} examples to {flags.FLAGS.out}')


if __name__ == '__main__':
  flags.DEFINE_string('out', None, 'Directory for the task files.')
  flags.DEFINE_integer('seed', 0, 'Seed of the training order and the distractors.')
  flags.DEFINE_integer('train_examples', 0, 'Keep the first N training examples (0: all).')
  flags.mark_flags_as_required(['out'])
  cli.run(main)
