"""Quantized kernels that stay quantized in memory: each compressible kernel of a packed quantized
workdir (models/quantize.py's `quantize_tree` output) is held as its values + float32 scales and
dequantized by qwix per matmul inside the jitted forward (models/transformer.py `_dense`).

int8 and fp8 values are held as int8 / float8_e4m3fn; int4 and int3 two per uint8 (the disk
bytes, pairs along the fan-out axis O), unpacked in the forward: JAX counts a jnp.int4 array at
one byte per value, so only the packed form halves the memory on every backend. Everything else
(embeddings, readout, norms, biases) stays float32. A params tree with `Held` leaves goes to
`Transformer.apply` through `variables`: the kernels in a 'quantized' collection.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from models import rtn
from models.config import PyTree

COLLECTION = 'quantized'
PACKED = ('int4', 'int3')  # held two per byte.


@flax.struct.dataclass
class Held:
  """One kernel held quantized: values [N, I, O] (int4/int3: uint8 [N, I, O/2]), scale [N, I/g,
  O], AWQ's per-fan-in scale [N, I] or None; the scheme is static."""

  q: jax.Array
  scale: jax.Array
  awq_scale: jax.Array | None
  scheme: str = flax.struct.field(pytree_node=False)


def _unpack(b: jax.Array) -> jax.Array:
  """uint8 [..., O/2] -> int4 [..., O]: even index the low nibble, sign-extended (rtn._pack_int4)."""
  nib = jnp.stack([b & 0xF, b >> 4], -1).reshape(*b.shape[:-1], 2 * b.shape[-1]).astype(jnp.int8)
  return jnp.where(nib > 7, nib - 16, nib).astype(jnp.int4)


def dequantize(held: Held, shape: tuple) -> jax.Array:
  """The float32 kernel of `shape` (qwix.dequantize of the held values and scales), as the
  dequantize-on-load path computes it (models/quantize.py `dequantize_tree`)."""
  import qwix  # lazy, as in models/rtn.py.

  v = _unpack(held.q) if held.scheme in PACKED else held.q
  w = qwix.dequantize(
    qwix.QArray(qvalue=v, scale=held.scale, zero_point=None, qtype=rtn.QTYPES[held.scheme])
  )
  if held.awq_scale is not None:  # AWQ: the kernel was quantized as w * s (per fan-in entry).
    w = w / held.awq_scale[..., :, None]
  return w.reshape(shape)


def hold(packed: dict, name: str, dims: tuple[int, int, int], scheme: str) -> Held:
  """Kernel `name` ([N, I, O] = `dims`, rtn.dims) of models/quantize.py `quantize_tree`'s output
  `packed` (numpy) as held in memory: int4 / int3 kept two per byte, AWQ's scale when present."""
  n, i, o = dims
  if scheme in PACKED:
    if o % 2:
      raise ValueError(f'{name}: fan-out {o} is odd; {scheme} is held two values per byte')
    q = np.asarray(packed[name + ':q']).reshape(n, i, o // 2)
  else:
    q = np.asarray(rtn.decode(packed[name + ':q'], scheme, dims))
  awq = packed.get(name + ':awq_scale')
  return Held(q, np.asarray(packed[name + ':scale']), awq, scheme)


def _is_held(x) -> bool:
  return isinstance(x, Held)


def _split(tree: dict) -> tuple[dict, dict]:
  """(the tree without its Held leaves, the Held leaves alone), both nested as `tree`."""
  rest, held = {}, {}
  for k, v in tree.items():
    if isinstance(v, dict):
      r, h = _split(v)
      rest.update({k: r} if r else {})
      held.update({k: h} if h else {})
    elif _is_held(v):
      held[k] = v
    else:
      rest[k] = v
  return rest, held


def variables(params: PyTree) -> dict:
  """The `apply` variables of `params`: {'params': ...}, plus the 'quantized' collection of the
  Held kernels when it holds any (read in models/transformer.py `_dense`)."""
  if not any(map(_is_held, jax.tree.leaves(params, is_leaf=_is_held))):
    return {'params': params}
  rest, held = _split(dict(params))
  return {'params': rest, COLLECTION: held}


def resident_bytes(params: PyTree) -> int:
  """The bytes of the arrays that hold `params` (sum of nbytes: int4 packed two per byte)."""
  return int(sum(x.nbytes for x in jax.tree.leaves(params)))
