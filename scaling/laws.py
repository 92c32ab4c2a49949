"""Scaling-law forms and their published constants (Chinchilla, Kaplan), as pure numpy functions.

Sources: Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", arXiv 2203.15556
(Chinchilla, approach 3); Kaplan et al. 2020, "Scaling Laws for Neural Language Models", arXiv 2001.08361.
Training compute is taken as C = 6·N·D throughout (both papers). The compute-only law L(C) is the
form the OLMo ladders and Marin's studies check on held-out runs; the whole-curve law is Tissue et
al. 2024, "Scaling Law with Learning Rate Annealing", arXiv 2408.11029, with an N-dependent L0.
"""

import dataclasses

import numpy as np
import numpy.typing as npt

Arrays3 = tuple[np.ndarray, np.ndarray, np.ndarray]  # e.g. (N_opt, D_opt, L_opt).


@dataclasses.dataclass(frozen=True)
class Chinchilla:
  """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2)."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float


# Unrounded approach-3 fit from the paper's source (log A, log B, log E, alpha, beta); the paper's
# Table A3 / Figure 1 predictions (e.g. ~40B params at 5.76e23 FLOPs) follow from these.
CHINCHILLA = Chinchilla(
  E=float(np.exp(0.5267228)),
  A=float(np.exp(6.0073404)),
  B=float(np.exp(6.0179186)),
  alpha=0.33917084,
  beta=0.2849083,
)
# The rounded values printed in the paper's eq. 10; they give noticeably smaller compute-optimal models.
CHINCHILLA_ROUNDED = Chinchilla(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


@dataclasses.dataclass(frozen=True)
class KaplanN:
  """L(N) = (N_c / N)^alpha_N, N = non-embedding params, data unlimited (Kaplan et al. 2020, eq. 1.1)."""

  alpha_N: float
  N_c: float


@dataclasses.dataclass(frozen=True)
class KaplanJoint:
  """L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D (Kaplan et al. 2020, eq. 1.5)."""

  alpha_N: float
  alpha_D: float
  N_c: float
  D_c: float


KAPLAN_N = KaplanN(alpha_N=0.076, N_c=8.8e13)
KAPLAN_JOINT = KaplanJoint(alpha_N=0.076, alpha_D=0.103, N_c=6.4e13, D_c=1.8e13)


def chinchilla_loss(law: Chinchilla, n: npt.ArrayLike, d: npt.ArrayLike) -> np.ndarray:
  """Chinchilla parametric loss at N params and D tokens."""
  n, d = np.asarray(n, float), np.asarray(d, float)
  return law.E + law.A / n**law.alpha + law.B / d**law.beta


def chinchilla_frontier_constants(law: Chinchilla) -> tuple[float, float, float]:
  """(G, a, b) of the C = 6ND frontier: N_opt = G (C/6)^a, D_opt = (C/6)^b / G (Hoffmann et al. 2022, eq. 4)."""
  s = law.alpha + law.beta
  g = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / s)
  return g, law.beta / s, law.alpha / s


def chinchilla_optimal(law: Chinchilla, compute: npt.ArrayLike) -> Arrays3:
  """Compute-optimal (N_opt, D_opt, L_opt) at C FLOPs, with C = 6ND."""
  g, a, b = chinchilla_frontier_constants(law)
  c6 = np.asarray(compute, float) / 6.0
  n, d = g * c6**a, c6**b / g
  return n, d, chinchilla_loss(law, n, d)


def chinchilla_optimal_for_params(law: Chinchilla, n: npt.ArrayLike) -> Arrays3:
  """Tokens, compute and loss at which N params is compute-optimal (inverts N_opt(C))."""
  g, a, _ = chinchilla_frontier_constants(law)
  c6 = (np.asarray(n, float) / g) ** (1.0 / a)
  d = c6 / n
  return d, 6.0 * c6, chinchilla_loss(law, n, d)


def chinchilla_optimal_for_tokens(law: Chinchilla, d: npt.ArrayLike) -> Arrays3:
  """Params, compute and loss at which D tokens is compute-optimal (inverts D_opt(C))."""
  g, _, b = chinchilla_frontier_constants(law)
  c6 = (np.asarray(d, float) * g) ** (1.0 / b)
  n = c6 / d
  return n, 6.0 * c6, chinchilla_loss(law, n, d)


def kaplan_loss_n(law: KaplanN, n: npt.ArrayLike) -> np.ndarray:
  """Kaplan L(N) = (N_c / N)^alpha_N."""
  return (law.N_c / np.asarray(n, float)) ** law.alpha_N


def kaplan_log_loss_joint(law: KaplanJoint, n: npt.ArrayLike, d: npt.ArrayLike) -> np.ndarray:
  """log of Kaplan's joint L(N, D), computed with logaddexp for stability."""
  p = law.alpha_N / law.alpha_D
  t1 = p * (np.log(law.N_c) - np.log(np.asarray(n, float)))
  t2 = np.log(law.D_c) - np.log(np.asarray(d, float))
  return law.alpha_D * np.logaddexp(t1, t2)


def kaplan_loss_joint(law: KaplanJoint, n: npt.ArrayLike, d: npt.ArrayLike) -> np.ndarray:
  """Kaplan L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D."""
  return np.exp(kaplan_log_loss_joint(law, n, d))


def _kaplan_joint_k(law: KaplanJoint):
  """(p, K) with N_opt = K C^(1/(1+p)) under C = 6ND, p = alpha_N / alpha_D."""
  p = law.alpha_N / law.alpha_D
  return p, (p * law.N_c**p / (6.0 * law.D_c)) ** (1.0 / (1.0 + p))


def kaplan_joint_optimal(law: KaplanJoint, compute: npt.ArrayLike) -> Arrays3:
  """Minimum of Kaplan's L(N, C/(6N)) over N: (N_opt, D_opt, L_opt), from d/dN of the bracket = 0."""
  p, k = _kaplan_joint_k(law)
  c = np.asarray(compute, float)
  n = k * c ** (1.0 / (1.0 + p))
  d = c / (6.0 * n)
  return n, d, kaplan_loss_joint(law, n, d)


def kaplan_joint_optimal_for_params(law: KaplanJoint, n: npt.ArrayLike) -> Arrays3:
  """Tokens, compute and loss at which N params is optimal under Kaplan's L(N, D) with C = 6ND."""
  p, k = _kaplan_joint_k(law)
  c = (np.asarray(n, float) / k) ** (1.0 + p)
  d = c / (6.0 * n)
  return d, c, kaplan_loss_joint(law, n, d)


def kaplan_joint_optimal_for_tokens(law: KaplanJoint, d: npt.ArrayLike) -> Arrays3:
  """Params, compute and loss at which D tokens is optimal under Kaplan's L(N, D) with C = 6ND."""
  p, k = _kaplan_joint_k(law)
  c = (6.0 * k * np.asarray(d, float)) ** ((1.0 + p) / p)
  n = c / (6.0 * d)
  return n, c, kaplan_loss_joint(law, n, d)


@dataclasses.dataclass(frozen=True)
class Compute:
  """L(C) = E + A / C^alpha: the loss of compute-optimal runs against training FLOPs."""

  E: float
  A: float
  alpha: float


def compute_loss(law: Compute, c: npt.ArrayLike) -> np.ndarray:
  """The compute-only law at C FLOPs."""
  return law.E + law.A / np.asarray(c, float) ** law.alpha


@dataclasses.dataclass(frozen=True)
class Curve:
  """L(N, S1, S2) = E + A / N^alpha + B / S1^beta - C·S2, at every evaluation of a run.

  Tissue et al. 2024 (arXiv 2408.11029) fit L0 + B·S1^-beta - C·S2 per model, S1 the summed
  lr (forward area), S2 the annealing area (lr_areas). Here L0 = E + A·N^-alpha, Chinchilla's N term
  (Hoffmann et al. 2022, eq. 2): at S1 -> inf without annealing it is the size-limited loss, and at
  fixed N it is Tissue's law. B, beta, C are shared across sizes, so 6 constants: each curve pins the
  S1 and S2 terms within itself, the sizes pin the N term. Being additive, it cannot let size change
  how fast the loss falls with S1 (an interaction small, short runs show; docs/scaling.md).
  """

  E: float
  A: float
  alpha: float
  B: float
  beta: float
  C: float


def curve_loss(law: Curve, n: npt.ArrayLike, s1: npt.ArrayLike, s2: npt.ArrayLike) -> np.ndarray:
  """The whole-curve law at N params, forward area S1 and annealing area S2."""
  n, s1, s2 = (np.asarray(x, float) for x in (n, s1, s2))
  return law.E + law.A / n**law.alpha + law.B / s1**law.beta - law.C * s2


LR_ANNEAL_DECAY = 0.999  # the decay factor lambda of Tissue et al.'s annealing momentum.


def lr_areas(
  lrs: npt.ArrayLike, warmup: int = 0, decay: float = LR_ANNEAL_DECAY
) -> tuple[np.ndarray, np.ndarray]:
  """(S1, S2) after each step: lrs[i - 1] is the lr of step i (i = 1..n).

  S1_s = sum_{i<=s} eta_i; S2_s = sum_{i<=s} m_i with m_i = decay·m_{i-1} + (eta_{i-1} - eta_i), the
  momentum form of Tissue et al. 2024. The first `warmup` steps count as the peak in S2
  (eta_0 too): a rising lr is not annealing, so S2 is 0 until the lr first falls.
  """
  eta = np.asarray(lrs, float)
  flat = eta.copy()
  if 0 < warmup < len(eta):
    flat[:warmup] = eta[warmup]
  elif warmup >= len(eta):
    flat[:] = 0.0
  drops = -np.diff(flat, prepend=flat[:1])
  s2, m, total = np.empty_like(eta), 0.0, 0.0
  for i, d in enumerate(drops):
    m = decay * m + d
    total += m
    s2[i] = total
  return np.cumsum(eta), s2


# --- laws in which size and data interact ----------------------------------------------------------

N_REF = 1e6  # the interaction laws measure N in units of N_REF (their constants stay O(1)).


@dataclasses.dataclass(frozen=True)
class Interaction:
  """L(N, D) = E + A / N^alpha + B / D^(beta + gamma·ln(N / N_REF)): Chinchilla whose data exponent
  grows with size (gamma > 0: size pays off more the longer a model trains, the ln N · ln D term
  a log-quadratic regression finds), one constant more than Chinchilla."""

  E: float
  A: float
  alpha: float
  B: float
  beta: float
  gamma: float


def interaction_loss(law: Interaction, n: npt.ArrayLike, d: npt.ArrayLike) -> np.ndarray:
  n, d = np.asarray(n, float), np.asarray(d, float)
  exponent = law.beta + law.gamma * np.log(n / N_REF)
  return law.E + law.A / n**law.alpha + law.B * np.exp(-exponent * np.log(d))


@dataclasses.dataclass(frozen=True)
class Farseer:
  """L(N, D) = exp(a3·n^g3 + b3) + exp(a2·n^g2 + b2) · D^-exp(a1·n^g1 + b1), n = N / N_REF.

  Li et al. 2025, "Farseer: A Refined Scaling Law in Large Language Models" (arXiv 2506.10972): the
  size term, the data term's scale and its exponent are each a stretched exponential of N, so the
  data exponent depends on N. N is in units of N_REF here (the same family of functions: a·N^g =
  a·N_REF^g·n^g). The form is as recalled; the paper could not be consulted from this machine.
  """

  a1: float
  b1: float
  g1: float
  a2: float
  b2: float
  g2: float
  a3: float
  b3: float
  g3: float


def farseer_loss(law: Farseer, n: npt.ArrayLike, d: npt.ArrayLike) -> np.ndarray:
  x, d = np.log(np.asarray(n, float) / N_REF), np.asarray(d, float)
  size = np.exp(law.a3 * np.exp(law.g3 * x) + law.b3)
  scale = np.exp(law.a2 * np.exp(law.g2 * x) + law.b2)
  exponent = np.exp(law.a1 * np.exp(law.g1 * x) + law.b1)
  return size + scale * np.exp(-exponent * np.log(d))
