"""Prepared token shards on disk: the layout `train.data.prepare` writes and training reads.

One directory per (dataset, split, text_key, max_documents), local or `gs://`:

  spec.json                     what the shards hold (dataset, split, tokenizer fingerprint,
                                dtype, shard count); written first, checked by every later run
  shard-00003-of-00008.tokens   flat little-endian token ids of a contiguous range of the split's
                                documents, each document followed by EOS
  shard-00003-of-00008.json     that shard's counts (tokens, documents, raw bytes, byte
                                histogram); written after its .tokens file is complete
  manifest.json                 spec + every shard's token count + totals; written once all are

Supervised splits (`jsonl:` sources, format 2, spec 'fields' = tokens, mask, docs) add beside each
shard's .tokens: `.mask`, one uint8 per token (1: a target), and `.docs`, the little-endian int64
end offsets of its examples in the shard's tokens (the boundaries segment ids are derived from).
Token-only splits are written and read as format 1, as before.

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

FORMAT = 1  # token-only splits: .tokens per shard (every directory prepared before format 2).
FORMAT_EXAMPLES = 2  # supervised splits: + .mask and .docs per shard, spec 'fields' lists them.
FIELDS = {'tokens': '.tokens', 'mask': '.mask', 'docs': '.docs'}  # field -> shard file suffix.
_FIELD_DTYPES = {'mask': np.dtype('u1'), 'docs': np.dtype('<i8')}  # tokens: the spec's dtype.
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
  write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def write_bytes(path: str, data: bytes) -> None:
  """Atomically (temp name, then rename), as write_json: a reader sees no partial file."""
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  if is_remote(path):
    with _gfile().GFile(tmp, 'wb') as f:
      f.write(data)
    _gfile().rename(tmp, path, overwrite=True)
  else:
    with open(tmp, 'wb') as f:
      f.write(data)
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
  num_targets: int | None = None  # supervised splits: tokens with loss mask 1 (None: all are).

  def to_json(self) -> dict:
    out = {
      'num_tokens': self.num_tokens,
      'num_documents': self.num_documents,
      'num_bytes': self.num_bytes,
      'byte_histogram': self.byte_histogram.tolist(),
    }
    return out if self.num_targets is None else out | {'num_targets': self.num_targets}

  @classmethod
  def from_json(cls, d: dict) -> 'ShardStats':
    return cls(
      d['num_tokens'],
      d['num_documents'],
      d['num_bytes'],
      np.asarray(d['byte_histogram'], np.int64),
      d.get('num_targets'),
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
  if 'source_fingerprint' in new and old.get('source_fingerprint') != new['source_fingerprint']:
    return (
      f'{path} was prepared from another version of {new.get("source")} (sha1 '
      f'{old.get("source_fingerprint")}, now {new["source_fingerprint"]}); delete the directory '
      'or prepare into another config.data.prepared_dir (nothing was written)'
    )
  keys = (
    'format',
    'dataset',
    'split',
    'text_key',
    'max_documents',
    'dtype',
    'num_shards',
    'fields',
  )
  for key in keys:
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
    self.fields = tuple(manifest.get('fields', ('tokens',)))
    self.shard_documents = manifest.get('shard_documents')  # [num_shards] (supervised splits).

  @property
  def supervised(self) -> bool:
    """Whether the split has a loss mask and example boundaries (a `jsonl:` source)."""
    return 'mask' in self.fields

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

  def shard_path(self, i: int, field: str = 'tokens') -> str:
    return os.path.join(self.path, shard_name(i, self.num_shards) + FIELDS[field])

  def itemsize(self, field: str) -> int:
    return _FIELD_DTYPES.get(field, self.dtype).itemsize

  def shard_items(self, i: int, field: str) -> int:
    """Items of `field` in shard i: its tokens, or (docs) its examples."""
    return int(self.shard_documents[i] if field == 'docs' else self.shard_tokens[i])


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
  if manifest.get('format', FORMAT) > FORMAT_EXAMPLES:
    raise ValueError(
      f'{field}: {path} has format {manifest["format"]}, newer than this code reads '
      f'({FORMAT_EXAMPLES}); update lmscale or prepare into another config.data.prepared_dir'
    )
  why = spec_mismatch(manifest, expect, path) if expect else None
  if why:
    raise ValueError(f'{field}: {why}')
  split = PreparedSplit(path, manifest)
  if check_files and not is_remote(path):
    for i in range(split.num_shards):
      for name in split.fields:
        _check_size(split, i, name, field)
  return split


def _check_size(split: PreparedSplit, i: int, name: str, field: str) -> None:
  """ValueError naming config `field` unless shard i's `name` file has the manifest's size."""
  p = split.shard_path(i, name)
  want = split.shard_items(i, name) * split.itemsize(name)
  size = os.path.getsize(p) if os.path.exists(p) else None
  if size != want:
    raise ValueError(
      f'{field}: shard {p} is {"missing" if size is None else f"{size} bytes"}'
      f', expected {want} bytes; rerun `python -m train.data.prepare` (a '
      'damaged shard: delete it and its .json first)'
    )


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

  def _file(self, i: int, field: str = 'tokens'):
    files, key = self._handles.files, (i, field)
    f = files.pop(key, None)
    if f is None:
      path = self.split.shard_path(i, field)
      f = _gfile().GFile(path, 'rb') if is_remote(path) else open(path, 'rb', buffering=0)
      if len(files) >= _FILE_CACHE:
        files.popitem(last=False)[1].close()
    files[key] = f
    return f

  def _read(self, i: int, lo: int, hi: int, field: str = 'tokens') -> bytes:
    """Items [lo, hi) of shard i's `field` file (tokens, mask or docs), as raw bytes."""
    size = self.split.itemsize(field)
    f = self._file(i, field)
    if self._remote:
      f.seek(lo * size)
      data = f.read((hi - lo) * size)
    else:
      data = os.pread(f.fileno(), (hi - lo) * size, lo * size)
    if len(data) != (hi - lo) * size:
      raise ValueError(
        f'shard {self.split.shard_path(i, field)} is shorter than its manifest says; '
        'rerun `python -m train.data.prepare` after deleting it and its .json'
      )
    return data

  def tokens(self, start: int, stop: int, field: str = 'tokens') -> np.ndarray:
    """Tokens [start, stop) of the split's stream (field 'mask': their loss mask), int32."""
    starts = self.split.starts
    i = int(np.searchsorted(starts, start, side='right')) - 1
    pieces = []
    while start < stop:
      hi = min(stop, int(starts[i + 1]))
      if hi > start:
        pieces.append(self._read(i, start - int(starts[i]), hi - int(starts[i]), field))
      start, i = hi, i + 1
    dtype = _FIELD_DTYPES.get(field, self.split.dtype)
    return np.frombuffer(b''.join(pieces), dtype).astype(np.int32)

  def example_ends(self) -> np.ndarray:
    """int64 [examples]: each example's end offset in the split's stream (supervised splits)."""
    ends = [
      np.frombuffer(self._read(i, 0, self.split.shard_items(i, 'docs'), 'docs'), '<i8')
      + self.split.starts[i]
      for i in range(self.split.num_shards)
    ]
    return np.concatenate(ends) if ends else np.zeros(0, np.int64)

  def __getitem__(self, r: int) -> np.ndarray:
    r = int(r) % self.num_rows
    return self.tokens(r * self.row_len, (r + 1) * self.row_len)
