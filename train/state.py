"""Train state on the mesh: its shardings (from the logical-axis rules) and its initialisation."""

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

import models
from models import parametrization
from models.config import ModelConfig, PyTree
from train import sharding
from train.step import ScaledTrainState, TrainState


def state_shardings(
  model_config: ModelConfig,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
  loss_scale: bool = False,
) -> TrainState:
  """Params by the rules; Adam moments mirror their params; counters replicated.
  With `loss_scale`, a ScaledTrainState (dynamic loss scale, replicated)."""
  param_shapes = models.param_shapes(model_config)
  params = sharding.tree_shardings(models.logical_axes(model_config), param_shapes, mesh)
  rep = sharding.replicated(mesh)
  if parametrization.has_frozen(ModelConfig.expect(model_config)):  # moments: trained only.
    opt_state = _by_param_path(jax.eval_shape(optimizer.init, param_shapes), params, rep)
  else:
    opt_state = optax.tree_map_params(
      optimizer,
      lambda _, s: s,
      jax.eval_shape(optimizer.init, param_shapes),
      params,
      transform_non_params=lambda _: rep,
    )
  if loss_scale:
    return ScaledTrainState(rep, params, opt_state, rep, rep)
  return TrainState(step=rep, params=params, opt_state=opt_state)


def _by_param_path(state_shapes: PyTree, params: PyTree, rep: jax.sharding.Sharding) -> PyTree:
  """Shardings of an optimizer state whose moment trees hold only some params (multi_transform
  masks the frozen ones): a leaf whose key path ends with a param's path takes its sharding."""
  by_path = {
    tuple(k.key for k in path): s for path, s in jax.tree_util.tree_flatten_with_path(params)[0]
  }

  def pick(path, _):
    keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
    return next((by_path[keys[i:]] for i in range(len(keys)) if keys[i:] in by_path), rep)

  return jax.tree_util.tree_map_with_path(pick, state_shapes)


def fresh_state(
  model_config: ModelConfig,
  optimizer: optax.GradientTransformation,
  rng: jax.Array | None,
  params: PyTree | None = None,
  loss_scale: float | None = None,
) -> TrainState:
  """The fresh state as traced values (under jit, or vmap for a member group): random params
  from `rng` unless `params`; a ScaledTrainState starting at `loss_scale` when that is set."""
  if params is None:
    params = models.init(model_config, rng)
  state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  if loss_scale is None:
    return state
  return ScaledTrainState(
    state.step,
    state.params,
    state.opt_state,
    jnp.asarray(loss_scale, jnp.float32),
    jnp.zeros((), jnp.int32),
  )


def init_state(
  model_config: ModelConfig,
  optimizer: optax.GradientTransformation,
  shardings: TrainState,
  seed: int = 0,
  params: PyTree | None = None,
  loss_scale: float = 2.0**15,
) -> TrainState:
  """Fresh state created directly on its shardings: random params from `seed`, or `params`;
  a ScaledTrainState (if `shardings` is one) starts at `loss_scale`."""
  scale = loss_scale if isinstance(shardings, ScaledTrainState) else None
  make = lambda rng, p: fresh_state(model_config, optimizer, rng, p, scale)
  if params is None:
    return jax.jit(lambda rng: make(rng, None), out_shardings=shardings)(jax.random.key(seed))
  return jax.jit(
    lambda p: make(None, p), in_shardings=(shardings.params,), out_shardings=shardings
  )(params)
