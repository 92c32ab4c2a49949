"""Data layer: TFDS text -> tokens -> packed, host-sharded batches addressed by step."""
from train.data.pipeline import PackedDataset
from train.data.pipeline import TokenStream
from train.data.pipeline import load_token_stream
from train.data.pipeline import make_datasets
from train.data.tokenizers import ByteTokenizer
from train.data.tokenizers import HFTokenizer
from train.data.tokenizers import check_vocab
from train.data.tokenizers import make_tokenizer

__all__ = ['PackedDataset', 'TokenStream', 'load_token_stream', 'make_datasets', 'ByteTokenizer',
           'HFTokenizer', 'check_vocab', 'make_tokenizer']
