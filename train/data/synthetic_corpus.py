"""TFDS builder `synthetic_prose`: seeded pseudo-English documents, built offline at a chosen size.

A second embedded corpus beside `stdlib_corpus` (code): prose-like text for mixtures
(code + prose) and, at `bench_1x` / `bench_10x`, the on-disk corpus of `bench/data.py`. Words
come from a fixed pseudo-word vocabulary with Zipfian frequencies; document i is a pure function
of (config seed, i), so every build of a config is identical.
"""

import numpy as np
import tensorflow_datasets as tfds

from train.data import embedded

_VOCAB = 4096
_LETTERS = np.frombuffer(b'etaoinshrdlcumwfgypbvkjxqz', np.uint8)
_LETTER_P = np.array(
  [
    12.7,
    9.1,
    8.2,
    7.5,
    7.0,
    6.7,
    6.3,
    6.1,
    6.0,
    4.3,
    4.0,
    2.8,
    2.8,
    2.4,
    2.4,
    2.2,
    2.0,
    2.0,
    1.9,
    1.5,
    1.0,
    0.8,
    0.2,
    0.2,
    0.1,
    0.1,
  ]
)


class SyntheticConfig(tfds.core.BuilderConfig):
  """Size of a synthetic_prose build: train documents and mean document length in bytes."""

  def __init__(self, *, train_documents: int, mean_bytes: int, **kwargs: object) -> None:
    super().__init__(version=tfds.core.Version('1.0.0'), **kwargs)
    self.train_documents = train_documents
    self.mean_bytes = mean_bytes


def _vocabulary(seed: int) -> tuple[np.ndarray, np.ndarray, float]:
  """_VOCAB pseudo-words (object array of str, each with its trailing separator), shortest first,
  the cumulative Zipf(1) distribution over them and the mean bytes per word drawn."""
  rng = np.random.default_rng([seed, 1])
  lengths = np.clip(rng.geometric(0.22, _VOCAB), 1, 14)
  p = _LETTER_P / _LETTER_P.sum()
  words = sorted({rng.choice(_LETTERS, n, p=p).tobytes().decode() for n in lengths}, key=len)
  seps = rng.choice([' ', ' ', ' ', ' ', ' ', ' ', ', ', '. ', '.\n'], len(words))
  p_word = 1 / np.arange(1, len(words) + 1)
  words = np.array([w + s for w, s in zip(words, seps)], dtype=object)
  mean_len = float((p_word * np.array([len(w) for w in words])).sum() / p_word.sum())
  return words, np.cumsum(p_word) / p_word.sum(), mean_len


def document(
  seed: int, index: int, mean_bytes: int, vocabulary: tuple[np.ndarray, np.ndarray, float]
) -> str:
  """Document `index`: Zipf-distributed words, about `mean_bytes` long (lognormal lengths)."""
  words, cdf, mean_len = vocabulary
  rng = np.random.default_rng([seed, 2, index])
  n = max(1, int(rng.lognormal(np.log(mean_bytes / mean_len) - 0.125, 0.5)))
  ranks = np.minimum(np.searchsorted(cdf, rng.random(n)), len(words) - 1)
  return ''.join(words[ranks]).capitalize()


class SyntheticProse(embedded.QuietBuild, tfds.core.GeneratorBasedBuilder):
  """Pseudo-English prose; 1% as many validation documents as train ones (at least 20)."""

  BUILDER_CONFIGS = [
    SyntheticConfig(
      name='small',
      train_documents=600,
      mean_bytes=2000,
      description='about 1.2 MB: tests, mixture examples',
    ),
    SyntheticConfig(
      name='bench_1x',
      train_documents=26_000,
      mean_bytes=4000,
      description='about 104 MB: bench/data.py at 1x',
    ),
    SyntheticConfig(
      name='bench_10x',
      train_documents=260_000,
      mean_bytes=4000,
      description='about 1.04 GB: bench/data.py at 10x',
    ),
  ]
  SEED = 20261123

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
      supervised_keys=None,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
    del dl_manager  # Nothing to download.
    n = self.builder_config.train_documents
    return {
      'train': self._generate_examples(0, n),
      'validation': self._generate_examples(n, n + max(20, n // 100)),
    }

  def _generate_examples(self, start: int, stop: int):
    vocabulary = _vocabulary(self.SEED)
    for i in range(start, stop):
      yield i, {'text': document(self.SEED, i, self.builder_config.mean_bytes, vocabulary)}
