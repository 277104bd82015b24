import numpy as np
import pytest

from toolkit.sim import simulate_stack, simulate_pair


@pytest.fixture(scope="session")
def small_stack():
    """A 10-epoch 256^2 simulated stack (direct + PSF-matched warps), shared read-only."""
    return simulate_stack(n_epochs=10, size=256, seed=3)


@pytest.fixture(scope="session")
def small_pair():
    return simulate_pair(size=256, seed=5)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
