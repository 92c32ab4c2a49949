"""TFDS builder `stdlib_corpus`: the running interpreter's stdlib `.py` files as documents.

Builds offline (no download), so tests and smoke runs need no network. Importing this module
registers the builder, after which `tfds.builder('stdlib_corpus', data_dir=...)` finds it.
"""

import hashlib
import os
import sys
import sysconfig

import tensorflow_datasets as tfds

from train.data import embedded

VALIDATION_PERCENT = 5  # sha1(relative path) % 100 < this -> validation.
_EXCLUDED_DIRS = ('site-packages', 'dist-packages', '__pycache__')


def stdlib_root() -> str:
  """Directory of the running interpreter's standard library."""
  return sysconfig.get_paths()['stdlib']


def list_files(root: str | None = None) -> list[str]:
  """Sorted relative paths of the stdlib `.py` files, third-party package dirs excluded."""
  root = root or stdlib_root()
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
    for name in filenames:
      if name.endswith('.py'):
        paths.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, '/'))
  return sorted(paths)


def split_of(relpath: str) -> str:
  """'validation' or 'train', a pure function of the relative path."""
  bucket = int(hashlib.sha1(relpath.encode('utf-8')).hexdigest(), 16) % 100
  return 'validation' if bucket < VALIDATION_PERCENT else 'train'


class StdlibCorpus(embedded.QuietBuild, tfds.core.GeneratorBasedBuilder):
  """Python standard library source files, split by a hash of the file path."""

  name = 'stdlib_corpus'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        'The .py files of the standard library of the Python interpreter that built this '
        f'copy (built with Python {sys.version.split()[0]}); {VALIDATION_PERCENT}% of files, '
        'chosen by sha1 of the relative path, form the validation split.'
      ),
      features=tfds.features.FeaturesDict(
        {
          'text': tfds.features.Text(),
          'path': tfds.features.Text(),
        }
      ),
      supervised_keys=None,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
    del dl_manager  # Nothing to download.
    return {
      'train': self._generate_examples('train'),
      'validation': self._generate_examples('validation'),
    }

  def _generate_examples(self, split: str):
    root = stdlib_root()
    for relpath in list_files(root):
      if split_of(relpath) != split:
        continue
      with open(os.path.join(root, relpath), 'rb') as f:
        text = f.read().decode('utf-8', errors='replace')
      yield relpath, {'text': text, 'path': relpath}
