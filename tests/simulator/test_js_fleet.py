"""The fleet runner (and so ``fedmq-demo --js-devices``) with JavaScript devices among Python ones."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from simulator.broker import MosquittoBroker
from simulator.fleet import FleetConfig, run_fleet


def test_js_devices_need_secure_mode_a_known_runner_and_an_mlp_task() -> None:
    with pytest.raises(ConfigError, match="js_devices"):
        FleetConfig(clients=4, js_devices=1, secure=False)
    with pytest.raises(ConfigError, match="js_devices"):
        FleetConfig(clients=4, js_devices=1, task="shakespeare")
    with pytest.raises(ConfigError, match="js_devices"):
        FleetConfig(clients=4, js_devices=5)
    with pytest.raises(ConfigError, match="js_runner"):
        FleetConfig(clients=4, js_devices=1, js_runner="deno")


@pytest.mark.broker
async def test_fleet_with_a_js_device_closes_every_round_and_reports_both_kinds(tmp_path) -> None:
    config = FleetConfig(clients=4, rounds=2, js_devices=1, js_runner="node", window_s=30.0)
    with MosquittoBroker(tmp_path / "broker", websockets=True) as broker:
        with pytest.raises(ConfigError, match="ws_url"):
            await run_fleet(config, broker.url, tmp_path / "unused")
        report = await run_fleet(config, broker.url, tmp_path / "agg", ws_url=broker.ws_url)
    assert [r.status for r in report.per_round] == ["closed", "closed"]
    assert all(r.contributors == 4 for r in report.per_round)
    kinds = report.device_kinds
    assert set(kinds) == {"python", "js-node"}
    assert kinds["python"]["devices"] == 3 and kinds["js-node"]["devices"] == 1
    assert kinds["js-node"]["contributions"] == 2 and kinds["python"]["contributions"] == 6
    # Same messages on the wire: the JS device moves as many bytes as a Python one, within presence noise.
    for key in ("bytes_up_per_device_round", "bytes_down_per_device_round"):
        assert kinds["js-node"][key] == pytest.approx(kinds["python"][key], rel=0.02)
