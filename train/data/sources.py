"""config.data -> its sources (dataset, mixture weight, splits, text feature) and where each
source's prepared token shards live: what both the preparation and the reader need."""

import dataclasses
import math
import os

from configs import schema
from train.data import shards

# config.data: the ConfigDict section or its parsed form (the same keys, read the same way).
DataSection = schema.DataConfig | schema.Section


@dataclasses.dataclass(frozen=True)
class Source:
  """One dataset of config.data.dataset with its mixture weight, splits and text feature."""

  dataset: str
  weight: float
  train_split: str
  eval_split: str
  text_key: str

  @property
  def name(self) -> str:
    """Metric-safe name: eval/<name>/loss."""
    return shards.sanitize(self.dataset)

  @property
  def is_jsonl(self) -> bool:
    """A 'jsonl:DIR' source: supervised examples, packed whole into rows with segment ids."""
    return is_jsonl(self.dataset)

  @property
  def carves_eval(self) -> bool:
    """Whether its eval set is carved from its training examples (config.data.eval_fraction):
    a jsonl: source without a file for its eval split."""
    return self.is_jsonl and not os.path.isfile(jsonl_path(self.dataset, self.eval_split))


JSONL = 'jsonl:'  # config.data.dataset prefix of a directory of supervised JSONL files.


def is_jsonl(dataset: str) -> bool:
  return dataset.startswith(JSONL)


def jsonl_path(dataset: str, split: str) -> str:
  """The file of `split` of a 'jsonl:DIR' source: DIR/<split>.jsonl."""
  return os.path.join(dataset[len(JSONL) :], f'{split}.jsonl')


def _per_source(value: str, n: int, field: str) -> list[str]:
  parts = [v.strip() for v in str(value).split(',')]
  if len(parts) == 1:
    return parts * n
  if len(parts) != n or not all(parts):
    raise ValueError(
      f'{field}={value!r}: give one value, or one per source of '
      f'config.data.dataset ({n}), comma-separated'
    )
  return parts


def _weights(spec: str) -> tuple[list[str], list[float | None]]:
  """Names and weights (None where not given) of 'name' or 'name=weight,name=weight,...'."""
  items = [s.strip() for s in spec.split(',')]
  if not all(items):
    raise ValueError(f'config.data.dataset={spec!r}: empty source name')
  names, weights = [], []
  for item in items:
    name, sep, weight = item.partition('=')
    names.append(name.strip())
    if not sep:
      weights.append(None)
      continue
    try:
      weights.append(float(weight))
    except ValueError:
      raise ValueError(
        f'config.data.dataset={spec!r}: weight {weight!r} of {name!r} is not a number'
      ) from None
    if not math.isfinite(weights[-1]) or weights[-1] < 0:
      raise ValueError(
        f'config.data.dataset={spec!r}: weight of {name!r} must be a finite '
        f'number >= 0, got {weight}'
      )
  return names, weights


def parse_sources(data: DataSection) -> list[Source]:
  """config.data -> its sources. `dataset` is 'name' or 'name=weight,name=weight,...' (weights
  >= 0, not all 0; none given: equal); train_split / eval_split / text_key are one value for all
  sources or one per source. ValueError naming the field otherwise."""
  spec = str(data.dataset)
  names, weights = _weights(spec)
  if len(names) > 1 and None in weights and any(w is not None for w in weights):
    raise ValueError(
      f'config.data.dataset={spec!r}: give every source a weight (name=weight) '
      'or none (equal weights)'
    )
  weights = [1.0 if w is None else w for w in weights]
  if sum(weights) <= 0:
    raise ValueError(f'config.data.dataset={spec!r}: the mixture weights sum to 0')
  dup = {
    shards.sanitize(n)
    for n in names
    if sum(shards.sanitize(m) == shards.sanitize(n) for m in names) > 1
  }
  if dup:
    raise ValueError(f'config.data.dataset={spec!r}: source {sorted(dup)[0]!r} is named twice')
  if any(n == JSONL for n in names):
    raise ValueError(f'config.data.dataset={spec!r}: give the directory after {JSONL!r}')
  n = len(names)
  splits = [
    _per_source(data[k], n, f'config.data.{k}') for k in ('train_split', 'eval_split', 'text_key')
  ]
  return [Source(name, w / sum(weights), *per) for name, w, *per in zip(names, weights, *splits)]


def prepared_root(data: DataSection) -> str:
  """config.data.prepared_dir, or <data_dir (TFDS's default if unset)>/tokenized."""
  if data.prepared_dir:
    return data.prepared_dir
  tfds_dir = (
    data.data_dir
    or os.environ.get('TFDS_DATA_DIR')
    or os.path.join(os.path.expanduser('~'), 'tensorflow_datasets')
  )
  return os.path.join(tfds_dir, 'tokenized')


def prepared_path(data: DataSection, source: Source, split: str) -> str:
  """The directory of `split` of `source`'s token shards."""
  return shards.split_dir(
    prepared_root(data), source.dataset, split, source.text_key, data.max_documents
  )
