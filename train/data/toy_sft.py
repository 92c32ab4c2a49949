"""A small supervised JSONL set, built offline: string tasks on Python's names, for configs/sft.py.

  python -m train.data.toy_sft --out=workdirs/sft_data [--train=3000] [--validation=300]

Writes OUT/train.jsonl and OUT/validation.jsonl. Each example applies one task ('upper', 'reverse',
'len', 'first') to a name from the running interpreter (keywords, builtins, standard-library module
names); validation uses names that training never sees (split by a hash of the name). The three
shapes of train/data/supervised.py are all used: mostly {"prompt", "completion"}, some
{"messages"} (a system turn, one or two exchanges), some {"text"}. A pure function of the seed and
the interpreter's names, so a re-run writes the same files.
"""

import builtins
import json
import keyword
import os
import random
import sys
import zlib
from collections.abc import Sequence

from absl import flags

from train import cli

TASKS = {
  'upper': str.upper,
  'reverse': lambda w: w[::-1],
  'len': lambda w: str(len(w)),
  'first': lambda w: w[0],
}


def names(split: str) -> list[str]:
  """The interpreter's names of `split` (about 1 in 8 go to validation, by crc32)."""
  pool = set(keyword.kwlist) | set(dir(builtins)) | set(sys.stdlib_module_names)
  pool = {n for n in pool if n.isidentifier() and 2 <= len(n) <= 20}
  held_out = lambda n: zlib.crc32(n.encode()) % 8 == 0
  return sorted(n for n in pool if held_out(n) == (split == 'validation'))


def example(rng: random.Random, pool: Sequence[str]) -> dict:
  """One example: a task on a name, in one of the three JSONL shapes."""
  task, name = rng.choice(sorted(TASKS)), rng.choice(pool)
  prompt, answer = f'{task} {name}\n', TASKS[task](name) + '\n'
  shape = rng.random()
  if shape < 0.7:
    return {'prompt': prompt, 'completion': answer}
  if shape < 0.9:
    messages = [{'role': 'system', 'content': 'Answer with the result only.'}]
    for _ in range(rng.choice((1, 2))):
      task, name = rng.choice(sorted(TASKS)), rng.choice(pool)
      messages.append({'role': 'user', 'content': f'{task} {name}'})
      messages.append({'role': 'assistant', 'content': TASKS[task](name)})
    return {'messages': messages}
  return {'text': f'{prompt}{answer}'}


def write(out: str, num_train: int = 3000, num_validation: int = 300, seed: int = 0) -> None:
  """OUT/train.jsonl and OUT/validation.jsonl (written whole, then renamed)."""
  os.makedirs(out, exist_ok=True)
  for split, n in (('train', num_train), ('validation', num_validation)):
    rng, pool = random.Random(f'{seed}-{split}'), names(split)
    path = os.path.join(out, f'{split}.jsonl')
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      for _ in range(n):
        f.write(json.dumps(example(rng, pool)) + '\n')
    os.replace(path + '.tmp', path)


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  write(f.out, f.train, f.validation, f.seed)
  print(f'wrote {f.train} + {f.validation} examples to {f.out}/{{train,validation}}.jsonl')


if __name__ == '__main__':
  flags.DEFINE_string('out', None, 'Directory for train.jsonl and validation.jsonl.')
  flags.DEFINE_integer('train', 3000, 'Training examples.')
  flags.DEFINE_integer('validation', 300, 'Validation examples.')
  flags.DEFINE_integer('seed', 0, 'Seed of the examples.')
  flags.mark_flags_as_required(['out'])
  cli.run(main)
