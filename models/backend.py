"""Per-backend compute choices in one table: attention kernel, layer-scan unrolling, XLA flags.

`model.attention_impl='auto'` and `model.scan_unroll=0` resolve through `BACKENDS` at trace time
(models/attention.py, models/transformer.py); `xla_env` gives the flags main.py sets before JAX
starts. None of these change parameters, their layout or checkpoints: only how the step runs.
Remat stays an explicit `model.remat` choice, since it trades memory the table cannot see.
"""

import dataclasses
import os
from collections.abc import Mapping

import jax


@dataclasses.dataclass(frozen=True)
class Backend:
  attention: str  # preferred kernel for 'auto' (models/attention.py falls back when it can't run).
  fallback: str  # kernel when the preferred one does not apply (dtype, length, head dim).
  # scan_unroll=0: unroll the layer scan fully (params stay stacked); a remat run stays rolled.
  unroll_layers: bool
  xla_flags: tuple[str, ...] = ()  # appended to XLA_FLAGS (skipped when the user set the flag).
  libtpu_flags: tuple[str, ...] = ()  # appended to LIBTPU_INIT_ARGS.


BACKENDS = {
  # XLA:CPU fuses poorly across a while loop (measured: unrolled layers 1.1-1.25x faster at the
  # 1M-10M shapes, bench/compare.py), and compile time is small at the sizes CPUs train.
  'cpu': Backend(attention='blockwise', fallback='blockwise', unroll_layers=True),
  # cuDNN's flash kernel (bf16/fp16); the latency-hiding scheduler overlaps FSDP all-gathers
  # and reduce-scatters with compute (JAX GPU performance tips, NVIDIA JAX-Toolbox).
  'gpu': Backend(
    attention='cudnn',
    fallback='xla',
    unroll_layers=False,
    xla_flags=('--xla_gpu_enable_latency_hiding_scheduler=true',),
  ),
  # Pallas splash attention; async collective fusion and compute/collective overlap for FSDP
  # (the flags MaxText sets on TPU).
  'tpu': Backend(
    attention='splash',
    fallback='xla',
    unroll_layers=False,
    libtpu_flags=(
      '--xla_tpu_enable_async_collective_fusion=true',
      '--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true',
      '--xla_tpu_enable_async_collective_fusion_multiple_steps=true',
      '--xla_tpu_overlap_compute_collective_tc=true',
      '--xla_enable_async_all_gather=true',
      '--xla_tpu_enable_data_parallel_all_reduce_opt=true',
      '--xla_tpu_data_parallel_opt_different_sized_ops=true',
    ),
  ),
}


def current() -> Backend:
  """The table's row for the default JAX backend (unknown platforms: the CPU row)."""
  platform = jax.default_backend()
  return BACKENDS.get('gpu' if platform in ('cuda', 'rocm') else platform, BACKENDS['cpu'])


def _merge(existing: str, flags: tuple[str, ...]) -> str:
  """`existing` plus the flags it does not already set (a user's own setting wins)."""
  have = {f.split('=', 1)[0] for f in existing.split()}
  new = [f for f in flags if f.split('=', 1)[0] not in have]
  return ' '.join([existing.strip(), *new]).strip()


def xla_env(environ: Mapping[str, str] = os.environ) -> dict:
  """XLA_FLAGS and LIBTPU_INIT_ARGS with every backend's flags merged in (each backend reads only
  its own: xla_gpu_* flags are inert on CPU, libtpu reads LIBTPU_INIT_ARGS). Set before JAX
  starts its backend; flags already present keep the user's value."""
  gpu = tuple(f for b in BACKENDS.values() for f in b.xla_flags)
  tpu = tuple(f for b in BACKENDS.values() for f in b.libtpu_flags)
  return {
    'XLA_FLAGS': _merge(environ.get('XLA_FLAGS', ''), gpu),
    'LIBTPU_INIT_ARGS': _merge(environ.get('LIBTPU_INIT_ARGS', ''), tpu),
  }
