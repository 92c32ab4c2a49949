"""Test setup: 8 simulated CPU devices (set before JAX is imported); the packages come from
`pip install --no-deps -e .` (pyproject.toml)."""

import atexit
import os
import shutil
import tempfile

import pytest

# Cheaper compiles: XLA's expensive LLVM passes and backend optimizations cost more than they
# save on steps this small (compile-bound pinned tests 106 s -> 68 s); at this level one pinned
# u-μP update total moves by 1.4e-4 (its tolerance: tests/models/test_parametrization.py). The CPU's
# older (non-MLIR) fusion emitters compile faster again (test_parametrization + test_lora: XLA
# backend compile 247 s -> 151 s, 416 s -> 337 s in all; every pinned value unchanged). Appended,
# so flags a caller set (e.g. a device count) stay.
_flags = os.environ.get('XLA_FLAGS', '')
if 'xla_force_host_platform_device_count' not in _flags:
  _flags += ' --xla_force_host_platform_device_count=8'
if 'xla_backend_optimization_level' not in _flags:
  _flags += ' --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
  _flags += ' --xla_cpu_use_fusion_emitters=false'
os.environ['XLA_FLAGS'] = _flags.strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# One persistent compilation cache per test session (subprocesses inherit it): the many tests that
# train the same tiny step, resume it or run it again in a child process load the executable
# instead of compiling it again. Empty at the start, so every session still compiles each HLO once.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='lmscale-test-xla-cache-')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')  # tiny steps too.


# The files by their time, longest first (docs/testing.md's table), the rest after them: xdist
# hands whole files to the workers in this order as they free up (pytest.ini turns off its own
# reordering by test count), so the long ones start at once and the short ones fill in the end.
LONGEST_FILES = (
  'test_faults.py',
  'test_sweep.py',
  'test_parametrization.py',
  'test_loop.py',
  'test_lora.py',
  'test_pruning.py',
  'test_trainer.py',
  'test_sparsity.py',
  'test_group.py',
  'test_fit.py',
  'test_golden.py',
  'test_sft.py',
  'test_low_precision.py',
  'test_generation.py',
  'test_data.py',
  'test_step.py',
  'test_harness.py',
  'test_memory.py',
  'test_distributed.py',
  'test_hf.py',
  'test_distill_law.py',
  'test_validate.py',
  'test_checks.py',
  'test_loss.py',
  'test_attention.py',
  'test_quantize.py',
  'test_collectives.py',
)


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep order.


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data_dir per test session: the embedded corpus is built (offline) once."""
  return os.environ.get('TEST_TFDS_DIR') or str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def tiny_config(data_dir):
  """Factory for a seconds-fast config on the embedded corpus, with {'section.key': value} overrides."""
  from helpers import TINY_RUN, apply_overrides

  from configs import base

  def make(overrides=None):
    c = base.get_config()
    c.model.update(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32)
    c.data.update(seq_len=32, data_dir=data_dir)
    c.train.async_checkpoint = False
    c.optimizer.lr = 1e-3
    return apply_overrides(c, {**TINY_RUN, **(overrides or {})})

  return make


def pytest_configure(config):
  """LMSCALE_TEST_PROFILE=PATH: a CSV row per test (tests/suite_profile.py), for docs/testing.md."""
  if os.environ.get('LMSCALE_TEST_PROFILE'):
    from suite_profile import Profile

    config.pluginmanager.register(Profile(os.environ['LMSCALE_TEST_PROFILE']), 'lmscale-profile')


@pytest.fixture(scope='session')
def trained_workdir(tiny_config, tmp_path_factory):
  """One tiny trained run (tiny_config(), 4 steps, checkpoints 2 and 4) for the tests that need
  "some trained workdir" and only read it: sampling, init_from. Copy it before changing it."""
  from train import loop, validation

  workdir = str(tmp_path_factory.mktemp('trained') / 'w')
  loop.run(validation.derive(tiny_config()), workdir)
  return workdir
