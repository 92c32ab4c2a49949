"""Data layer: TFDS text -> prepared token shards -> packed, mixed, host-sharded batches by step."""

from train.data.pipeline import EvalStream, TrainStream, make_datasets
from train.data.sources import Source, parse_sources
from train.data.tokenizers import ByteTokenizer, HFTokenizer, check_vocab, make_tokenizer

__all__ = [
  'EvalStream',
  'Source',
  'TrainStream',
  'make_datasets',
  'parse_sources',
  'ByteTokenizer',
  'HFTokenizer',
  'check_vocab',
  'make_tokenizer',
]
