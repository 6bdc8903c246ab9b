import numpy as np
import pytest

from cluster.config import AlgorithmConfig
from cluster.rl.experience import KLController, explained_variance, overlong_penalty


def test_overlong_penalty_is_linear_in_the_buffer():
    lengths = np.array([10, 12, 13, 14, 16])
    np.testing.assert_allclose(overlong_penalty(lengths, max_len=16, buffer=4, factor=1.0),
                               [0.0, 0.0, -0.25, -0.5, -1.0])
    assert np.all(overlong_penalty(lengths, 16, 0, 1.0) == 0)


def test_adaptive_kl_moves_towards_target_and_fixed_stays():
    adaptive = KLController(AlgorithmConfig(kl_coef=0.1, kl_target=0.02, kl_horizon=10))
    adaptive.update(0.04)  # twice the target: error clipped at +0.2, times 1/10
    assert adaptive.coef == pytest.approx(0.1 * 1.02)
    adaptive.update(0.0)  # far below: -0.2 / 10
    assert adaptive.coef == pytest.approx(0.1 * 1.02 * 0.98)
    fixed = KLController(AlgorithmConfig(kl_coef=0.1))
    fixed.update(5.0)
    assert fixed.coef == 0.1


def test_explained_variance():
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=np.float32)
    returns = np.array([[1.0, 2.0, 9.0], [3.0, 4.0, 5.0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(returns, np.zeros_like(returns) + 3.0, mask) == pytest.approx(0.0)
