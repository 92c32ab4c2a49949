"""The embedded corpora: TFDS builders of this package that build offline in seconds, so training
prepares them itself, quietly (no download banner or progress bars, one log line of ours)."""

import logging

NAMES = ('stdlib_corpus', 'synthetic_prose')


def is_embedded(dataset: str) -> bool:
  """True for the corpora this package builds offline (training prepares them when missing)."""
  return dataset.split(':')[0].split('/')[0] in NAMES


class QuietBuild:
  """Mixin for our builders (before tfds.core.GeneratorBasedBuilder): builds without TFDS's
  'Downloading and preparing dataset' banner and tqdm bars, and logs where it built."""

  def download_and_prepare(self, *args: object, **kwargs: object) -> None:
    from tensorflow_datasets.core.utils import tqdm_utils  # loaded already: we are its builder.

    shown = getattr(tqdm_utils, '_active', True)
    tqdm_utils.display_progress_bar(False)
    try:
      super().download_and_prepare(*args, **kwargs)
    finally:
      tqdm_utils.display_progress_bar(shown)

  def _log_download_bytes(self) -> None:
    pass  # TFDS prints its banner here (sizes "Unknown size" for a generated dataset).

  def _log_download_done(self) -> None:
    logging.info('Built %s offline in %s', self.name, self.data_dir)
