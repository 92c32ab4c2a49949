"""n-gram references (train/data/ngram.py) on streams whose entropy is known."""

import math

import numpy as np
import pytest

from train.data import ngram


@pytest.mark.parametrize('order', [1, 2, 3])
def test_tables_are_distributions(order):
  ids = np.random.default_rng(0).integers(0, 7, size=2000)
  table = ngram.probabilities(ids, 7, order)
  assert table.shape == (7 ** (order - 1), 7)
  np.testing.assert_allclose(table.sum(1), 1.0, atol=1e-12)
  assert (table > 0).all()


def test_iid_stream_costs_its_entropy_at_every_order():
  rng = np.random.default_rng(1)
  p = np.array([0.5, 0.25, 0.125, 0.125])
  train, held = rng.choice(4, size=200_000, p=p), rng.choice(4, size=20_000, p=p)
  entropy = float(-(p * np.log(p)).sum())
  for order in (1, 2, 3):
    ce = ngram.cross_entropy(ngram.probabilities(train, 4, order), held, 4, order)
    assert ce == pytest.approx(entropy, abs=0.01), order


def test_markov_stream_is_cheap_only_to_the_right_order():
  # x_t = x_{t-2} + 1 mod 5 with 1 % noise: the trigram model knows it, the bigram cannot.
  rng = np.random.default_rng(2)
  x = list(rng.integers(0, 5, size=2))
  for _ in range(50_000):
    x.append(int(rng.integers(0, 5)) if rng.random() < 0.01 else (x[-2] + 1) % 5)
  ids = np.asarray(x)
  train, held = ids[:40_000], ids[40_000:]
  ce = {o: ngram.cross_entropy(ngram.probabilities(train, 5, o), held, 5, o) for o in (1, 2, 3)}
  assert ce[1] == pytest.approx(math.log(5), abs=0.02)
  assert ce[2] == pytest.approx(math.log(5), abs=0.05)
  assert ce[3] < 0.12  # 1 % noise: about 0.01·log 5 + H(0.01) ≈ 0.07 nats.


def test_table_too_large_is_refused():
  with pytest.raises(ValueError, match='--orders'):
    ngram.probabilities(np.zeros(10, np.int64), 50_000, 2)
