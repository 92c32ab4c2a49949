"""A `jsonl:DIR` source's split (DIR/<split>.jsonl) -> supervised token shards (format 2).

The writing side beside train/data/writer.py's TFDS one, sharing its spec, shard naming, skipping
and manifest: shard i of n holds the i-th of n even, contiguous ranges of the file's examples, as
`.tokens` (each example followed by EOS), `.mask` (1: a target) and `.docs` (example end offsets).
The whole file is parsed and checked before anything is written (train/data/supervised.py).
"""

import hashlib
import math
import os
import time

import numpy as np

from train.data import shards, sources, supervised, tokenizers

_SHARD_TEXT_BYTES = 64 << 20  # automatic shard count: about this much JSONL per shard.


def fingerprint(path: str) -> str:
  """sha1 of the file's contents: a prepared directory is refused for another version of it."""
  h = hashlib.sha1()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def source_file(dataset: str, split: str) -> str:
  """The split's JSONL file; ValueError naming config.data.dataset when it does not exist."""
  path = sources.jsonl_path(dataset, split)
  if not os.path.isfile(path):
    raise ValueError(
      f'config.data.dataset={dataset!r}: no file {path} for split {split!r} (a jsonl: source is a '
      'directory of <split>.jsonl files; see config.data.train_split / eval_split)'
    )
  return path


def describe(
  dataset: str, split: str, tokenizer: tokenizers.Tokenizer, tokenizer_name: str, limit: int = 0
) -> dict:
  """The spec keys of a supervised split, after checking every line of its file (ValueError)."""
  path = source_file(dataset, split)
  num_examples = supervised.check_file(path, tokenizer, tokenizer_name, limit)
  return {
    'format': shards.FORMAT_EXAMPLES,
    'fields': list(shards.FIELDS),
    'source': path,
    'source_fingerprint': fingerprint(path),
    'num_examples': num_examples,
  }


def auto_num_shards(described: dict, process_count: int) -> int:
  """About 64 MiB of JSONL per shard, at least one per process, at most one per example."""
  size = os.path.getsize(described['source'])
  n = max(process_count, math.ceil(size / _SHARD_TEXT_BYTES))
  return max(1, min(described['num_examples'], n))


def _encode_range(
  spec: dict, i: int, tokenizer: tokenizers.Tokenizer
) -> tuple[list, list, list, shards.ShardStats]:
  """Shard i's examples as (token pieces, mask pieces, example lengths, stats)."""
  n, total = spec['num_shards'], spec['num_examples']
  ids, masks, lengths = [], [], []
  stats = shards.ShardStats(num_targets=0)
  for where, line in supervised.lines(spec['source'], i * total // n, (i + 1) * total // n):
    ex_ids, ex_mask, text = supervised.encode(tokenizer, *supervised.parse(line, where), where)
    ids.append(ex_ids)
    masks.append(ex_mask)
    lengths.append(len(ex_ids))
    stats.num_bytes += len(text)
    stats.byte_histogram += np.bincount(np.frombuffer(text, np.uint8), minlength=256)
    stats.num_targets += int(ex_mask.sum())
  stats.num_documents, stats.num_tokens = len(lengths), int(sum(lengths))
  return ids, masks, lengths, stats


def write_shard(out_dir: str, spec: dict, i: int, tokenizer: tokenizers.Tokenizer) -> dict:
  """Tokenize shard i into out_dir (.mask, .docs, then .tokens, then .json: done); its stats."""
  name = shards.shard_name(i, spec['num_shards'])
  stats_path = os.path.join(out_dir, name + '.json')
  if shards.exists(stats_path) and shards.exists(os.path.join(out_dir, name + '.tokens')):
    return shards.read_json(stats_path) | {'skipped': True}
  tic = time.time()
  ids, masks, lengths, stats = _encode_range(spec, i, tokenizer)
  dtype = np.dtype(spec['dtype'])
  files = {
    'mask': np.concatenate(masks or [np.zeros(0, np.uint8)]).astype(np.uint8),
    'docs': np.cumsum(np.asarray(lengths, np.int64)).astype('<i8'),
    'tokens': np.concatenate(ids or [np.zeros(0, np.int64)]).astype(dtype),
  }
  for field, array in files.items():
    shards.write_bytes(os.path.join(out_dir, name + shards.FIELDS[field]), array.tobytes())
  out = stats.to_json() | {'seconds': time.time() - tic}
  shards.write_json(stats_path, out)  # last: its presence means the shard is complete.
  return out


def manifest_extras(spec: dict, per_shard: list[shards.ShardStats], out_dir: str) -> dict:
  """The manifest keys a supervised split adds: examples per shard; ValueError when no example
  of the whole file has a target (every loss mask zero)."""
  if sum(st.num_targets or 0 for st in per_shard) == 0:
    raise ValueError(
      f'{spec["source"]}: none of its {spec["num_examples"]} examples has a target token (the '
      f'loss mask is all zero); nothing to train on ({out_dir} gets no manifest)'
    )
  return {'shard_documents': [st.num_documents for st in per_shard]}
