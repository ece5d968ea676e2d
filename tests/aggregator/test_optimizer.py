"""The server optimizer: FedAvg, FedAvgM and FedAdam steps against their formulas, and state checks."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.optimizer import ServerOptimizer, ServerOptimizerConfig
from shared.errors import ConfigError

W = np.array([1.0, -2.0, 0.5], np.float32)
D1 = np.array([0.1, 0.2, -0.3], np.float32)
D2 = np.array([-0.4, 0.0, 0.25], np.float32)


def test_fedavg_at_lr_one_adds_the_mean_delta_exactly():
    opt = ServerOptimizer(ServerOptimizerConfig(), 3)
    assert np.array_equal(opt.step(W, D1), W + D1)
    assert opt.state == {}


def test_fedavgm_keeps_momentum_across_steps():
    cfg = ServerOptimizerConfig("fedavgm", lr=0.5, momentum=0.9)
    opt = ServerOptimizer(cfg, 3)
    w1 = opt.step(W, D1)
    w2 = opt.step(w1, D2)
    m2 = np.float32(0.9) * D1 + D2
    assert np.allclose(w1, W + 0.5 * D1, atol=0) and np.allclose(w2, w1 + 0.5 * m2, rtol=1e-6, atol=1e-7)
    # a restarted optimizer given the checkpointed state continues identically
    resumed = ServerOptimizer(cfg, 3, {"m": D1.copy()})
    assert np.array_equal(resumed.step(w1, D2), w2)


def test_fedadam_follows_its_update_rule():
    cfg = ServerOptimizerConfig("fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    opt = ServerOptimizer(cfg, 3)
    got = opt.step(W, D1)
    m = 0.1 * D1.astype(np.float64)
    v = 0.99 * 1e-6 + 0.01 * D1.astype(np.float64) ** 2
    assert np.allclose(got, W + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    assert set(opt.state) == {"m", "v"}


def test_bad_settings_and_state_are_config_errors():
    with pytest.raises(ConfigError, match="server_optimizer"):
        ServerOptimizerConfig("sgd-with-dreams")
    with pytest.raises(ConfigError, match="server_lr"):
        ServerOptimizerConfig(lr=0)
    with pytest.raises(ConfigError, match="optimizer_state"):
        ServerOptimizer(ServerOptimizerConfig("fedavgm"), 3, {"m": np.zeros(4, np.float32)})
