"""Prepared token shards on disk: the layout `train.data.prepare` writes and training reads.

One directory per (dataset, split, text_key, max_documents), local or `gs://`:

  spec.json                     what the shards hold (dataset, split, tokenizer fingerprint,
                                dtype, shard count); written first, checked by every later run
  shard-00003-of-00008.tokens   flat little-endian token ids of a contiguous range of the split's
                                documents, each document followed by EOS
  shard-00003-of-00008.json     that shard's counts (tokens, documents, raw bytes, byte
                                histogram); written after its .tokens file is complete
  manifest.json                 spec + every shard's token count + totals; written once all are

The split's token stream is the shards concatenated in order. A shard's .tokens file appears
under its final name only when whole (written to a temp name, then renamed), and counts as done
only once its .json exists, so a crash mid-shard leaves nothing that is later read. Readers open
nothing but manifest.json at start-up and read rows with positioned reads: no per-record index
is held, so a host's memory does not grow with the corpus.
"""

import collections
import dataclasses
import json
import os
import re
import threading
import uuid

import numpy as np

FORMAT = 1
SPEC, MANIFEST = 'spec.json', 'manifest.json'
_FILE_CACHE = 64  # open shard files per reading thread.


def is_remote(path: str) -> bool:
  return '://' in path


def _gfile():
  import tensorflow as tf  # gs:// (and other remote) paths only; loaded lazily.

  return tf.io.gfile


def exists(path: str) -> bool:
  return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def listdir(path: str) -> list[str]:
  if is_remote(path):
    return [n.rstrip('/') for n in _gfile().listdir(path)] if _gfile().isdir(path) else []
  return os.listdir(path) if os.path.isdir(path) else []


def makedirs(path: str) -> None:
  _gfile().makedirs(path) if is_remote(path) else os.makedirs(path, exist_ok=True)


def read_json(path: str) -> dict:
  if is_remote(path):
    with _gfile().GFile(path, 'r') as f:
      return json.load(f)
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj: dict) -> None:
  """Atomically (temp name, then rename): a reader sees the old file or the whole new one."""
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  text = json.dumps(obj, indent=1, sort_keys=True)
  if is_remote(path):
    with _gfile().GFile(tmp, 'w') as f:
      f.write(text)
    _gfile().rename(tmp, path, overwrite=True)
  else:
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, path)


def remove(path: str) -> None:
  _gfile().remove(path) if is_remote(path) else os.remove(path)


def shard_name(i: int, n: int) -> str:
  return f'shard-{i:05d}-of-{n:05d}'


def sanitize(name: str) -> str:
  """A path/metric-safe form of a dataset or split name ('c4/en:3.1.0' -> 'c4_en_3.1.0')."""
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_')


def split_dir(root: str, dataset: str, split: str, text_key: str, max_documents: int) -> str:
  """Where one split's shards live under a prepared_dir root."""
  leaf = f'{sanitize(split)}.{sanitize(text_key)}'
  leaf += f'.docs{max_documents}' if max_documents else ''
  return os.path.join(root, sanitize(dataset), leaf)


def token_dtype(vocab_size: int) -> str:
  """Smallest little-endian unsigned dtype that holds every id (EOS included)."""
  return '<u2' if vocab_size <= 2**16 else '<u4'


@dataclasses.dataclass
class ShardStats:
  """Counts of one shard (or, summed, of a split): what bits/byte and the baselines need."""

  num_tokens: int = 0
  num_documents: int = 0
  num_bytes: int = 0  # raw UTF-8 bytes of the documents, EOS not counted.
  byte_histogram: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(256, np.int64))

  def to_json(self) -> dict:
    return {
      'num_tokens': self.num_tokens,
      'num_documents': self.num_documents,
      'num_bytes': self.num_bytes,
      'byte_histogram': self.byte_histogram.tolist(),
    }

  @classmethod
  def from_json(cls, d: dict) -> 'ShardStats':
    return cls(
      d['num_tokens'], d['num_documents'], d['num_bytes'], np.asarray(d['byte_histogram'], np.int64)
    )


def spec_mismatch(old: dict, new: dict, path: str) -> str | None:
  """The one-line reason a directory prepared as `old` cannot serve or take `new`; None if same."""
  if (
    'tokenizer_fingerprint' in new
    and old.get('tokenizer_fingerprint') != new['tokenizer_fingerprint']
  ):
    return (
      f'{path} was prepared with tokenizer {old.get("tokenizer")!r} (fingerprint '
      f'{old.get("tokenizer_fingerprint")}), but config.data.tokenizer='
      f'{new.get("tokenizer")!r} has fingerprint {new.get("tokenizer_fingerprint")}; '
      'prepare into another config.data.prepared_dir (nothing was written)'
    )
  for key in ('format', 'dataset', 'split', 'text_key', 'max_documents', 'dtype', 'num_shards'):
    if key in new and old.get(key) != new[key]:
      return (
        f'{path} was prepared with {key}={old.get(key)!r}, not {new[key]!r}; use the same '
        'value or another config.data.prepared_dir (nothing was written)'
      )
  return None


class PreparedSplit:
  """A complete prepared split: its manifest (spec, per-shard token counts, totals)."""

  def __init__(self, path: str, manifest: dict):
    self.path = path
    self.manifest = manifest
    self.dtype = np.dtype(manifest['dtype'])
    self.num_shards = manifest['num_shards']
    self.shard_tokens = np.asarray(manifest['shard_tokens'], np.int64)
    self.starts = np.concatenate([[0], np.cumsum(self.shard_tokens)])  # [num_shards + 1]
    self.stats = ShardStats.from_json(manifest['totals'])

  @property
  def num_tokens(self) -> int:
    return int(self.starts[-1])

  @property
  def bytes_per_token(self) -> float:
    """Raw bytes per token (EOS included): bits/byte = loss_bits_per_token / bytes_per_token."""
    return self.stats.num_bytes / max(self.num_tokens, 1)

  @property
  def unigram_byte_entropy_bits(self) -> float:
    """Shannon entropy of the byte histogram: a bits/byte baseline a model should beat."""
    return entropy_bits(self.stats.byte_histogram)

  def shard_path(self, i: int) -> str:
    return os.path.join(self.path, shard_name(i, self.num_shards) + '.tokens')


def entropy_bits(histogram: np.ndarray) -> float:
  p = histogram[histogram > 0] / max(histogram.sum(), 1)
  return float(-(p * np.log2(p)).sum())


def progress(path: str) -> tuple[dict | None, list[int]]:
  """(spec or None, indices of shards not finished yet) of a directory being prepared."""
  names = set(listdir(path))
  if SPEC not in names:
    return None, []
  spec = read_json(os.path.join(path, SPEC))
  n = spec['num_shards']
  return spec, [i for i in range(n) if shard_name(i, n) + '.json' not in names]


def open_split(
  path: str, field: str, expect: dict | None = None, check_files: bool = True
) -> PreparedSplit:
  """The prepared split at `path`; an error naming `field` and the path when it is missing,
  half-prepared, made for another `expect`ed spec (e.g. tokenizer), or (local dirs) has a missing
  or truncated shard. FileNotFoundError only when nothing was ever prepared there."""
  manifest_path = os.path.join(path, MANIFEST)
  if not exists(manifest_path):
    spec, missing = progress(path)
    if spec is None:
      raise FileNotFoundError(f'{field}: no prepared shards at {path}')
    n = spec['num_shards']
    raise ValueError(
      f'{field}: {path} is half-prepared ({n - len(missing)} of {n} shards done; '
      f'{shard_name(missing[0], n) if missing else "manifest.json"} is not); rerun '
      '`python -m train.data.prepare` with the same config to finish it'
    )
  manifest = read_json(manifest_path)
  why = spec_mismatch(manifest, expect, path) if expect else None
  if why:
    raise ValueError(f'{field}: {why}')
  split = PreparedSplit(path, manifest)
  if check_files and not is_remote(path):
    for i in range(split.num_shards):
      p = split.shard_path(i)
      want = int(split.shard_tokens[i]) * split.dtype.itemsize
      size = os.path.getsize(p) if os.path.exists(p) else None
      if size != want:
        raise ValueError(
          f'{field}: shard {p} is {"missing" if size is None else f"{size} bytes"}'
          f', expected {want} bytes; rerun `python -m train.data.prepare` (a '
          'damaged shard: delete it and its .json first)'
        )
  return split


class _Handles(threading.local):
  """Per-thread LRU of open shard files: positioned reads need no lock, memory stays bounded."""

  def __init__(self):
    self.files = collections.OrderedDict()


class PackedRows:
  """grain random-access source: row r = tokens [r*(L+1), (r+1)*(L+1)) of the split's stream.

  Documents stay EOS-separated and rows cross document (and shard) boundaries, as packing into
  fixed rows does; a row is read with one positioned read per shard it touches.
  """

  def __init__(self, split: PreparedSplit, seq_len: int):
    self.split = split
    self.row_len = seq_len + 1
    self.num_rows = split.num_tokens // self.row_len
    self._remote = is_remote(split.path)
    self._handles = _Handles()

  def __len__(self) -> int:
    return self.num_rows

  def __getstate__(self):  # grain worker processes get a copy without open files.
    state = self.__dict__.copy()
    del state['_handles']
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._handles = _Handles()

  def _file(self, i: int):
    files = self._handles.files
    f = files.pop(i, None)
    if f is None:
      path = self.split.shard_path(i)
      f = _gfile().GFile(path, 'rb') if is_remote(path) else open(path, 'rb', buffering=0)
      if len(files) >= _FILE_CACHE:
        files.popitem(last=False)[1].close()
    files[i] = f
    return f

  def _read(self, i: int, lo: int, hi: int) -> bytes:
    """Tokens [lo, hi) of shard i, as raw bytes."""
    size = self.split.dtype.itemsize
    f = self._file(i)
    if self._remote:
      f.seek(lo * size)
      data = f.read((hi - lo) * size)
    else:
      data = os.pread(f.fileno(), (hi - lo) * size, lo * size)
    if len(data) != (hi - lo) * size:
      raise ValueError(
        f'shard {self.split.shard_path(i)} is shorter than its manifest says; '
        'rerun `python -m train.data.prepare` after deleting it and its .json'
      )
    return data

  def tokens(self, start: int, stop: int) -> np.ndarray:
    """Tokens [start, stop) of the split's stream, int32."""
    starts = self.split.starts
    i = int(np.searchsorted(starts, start, side='right')) - 1
    pieces = []
    while start < stop:
      hi = min(stop, int(starts[i + 1]))
      if hi > start:
        pieces.append(self._read(i, start - int(starts[i]), hi - int(starts[i])))
      start, i = hi, i + 1
    return np.frombuffer(b''.join(pieces), self.split.dtype).astype(np.int32)

  def __getitem__(self, r: int) -> np.ndarray:
    r = int(r) % self.num_rows
    return self.tokens(r * self.row_len, (r + 1) * self.row_len)
