"""Data layer: TFDS text -> prepared token shards -> packed, mixed, host-sharded batches by step."""
from train.data.pipeline import EvalStream
from train.data.pipeline import Source
from train.data.pipeline import TrainStream
from train.data.pipeline import make_datasets
from train.data.pipeline import parse_sources
from train.data.tokenizers import ByteTokenizer
from train.data.tokenizers import HFTokenizer
from train.data.tokenizers import check_vocab
from train.data.tokenizers import make_tokenizer

__all__ = ['EvalStream', 'Source', 'TrainStream', 'make_datasets', 'parse_sources',
           'ByteTokenizer', 'HFTokenizer', 'check_vocab', 'make_tokenizer']
