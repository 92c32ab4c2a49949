"""The one table of published per-chip figures: peak FLOP/s for MFU, interconnect bandwidth for
train/collectives.py.

MFU = tokens/s × models.count.train_flops_per_token (PaLM, arXiv 2204.02311, App. B) / (devices ×
peak).
"""

import dataclasses
import math

import jax


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures (vendor pages, not measured here)."""

  peak_flops: float  # dense bf16 FLOP/s (H100/H200 without sparsity).
  link_bytes_per_s: float | None = None  # bidirectional interconnect per chip; a ring sends half.


# Keyed by a substring of jax's device_kind; the longest matching name wins.
CHIPS = {
  'TPU v4': Chip(275e12),
  'TPU v5 lite': Chip(197e12),  # v5e
  # cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16; bidirectional ICI bandwidth per chip 400 GBps.
  'TPU v5e': Chip(197e12, 400e9),
  # cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16; bidirectional ICI bandwidth per chip 1200 GBps.
  'TPU v5p': Chip(459e12, 1200e9),
  'TPU v5': Chip(459e12),
  'TPU v6 lite': Chip(918e12),  # v6e / Trillium
  'TPU v6e': Chip(918e12),
  # NVIDIA H100 SXM datasheet: 989 TFLOPS dense bf16; NVLink 900 GB/s (bidirectional, total).
  'H100': Chip(989e12, 900e9),
  'H200': Chip(989e12),
  'A100': Chip(312e12),
}


def peak_flops(device: jax.Device | None = None) -> float:
  """Peak FLOP/s of one device, or NaN when unknown (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  for name, chip in sorted(CHIPS.items(), key=lambda kv: -len(kv[0])):
    if name.lower() in kind.lower():
      return chip.peak_flops
  return math.nan
