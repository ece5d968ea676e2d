"""No Docker engine runs here, so check that the compose file parses and references only real files."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_compose_services_and_referenced_files_exist():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"mosquitto", "aggregator", "edge"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
        if "build" in service:
            assert (REPO / service["build"] / "Dockerfile").exists()
        for script in service.get("entrypoint", []):
            if script.startswith("/app/"):
                path = REPO / script.removeprefix("/app/")
                assert path.exists(), f"{name} entrypoint {script} missing"
                assert path.stat().st_mode & 0o111, f"{script} is not executable"
    assert services["edge"]["deploy"]["replicas"] >= 1


def test_dockerfile_copies_existing_paths():
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"


def _listeners(conf: Path) -> list[list[str]]:
    return [line.split() for line in conf.read_text().splitlines() if line.split()[:1] == ["listener"]]


def test_compose_broker_listens_on_its_network():
    """Inside its container the broker must not bind to loopback only, or no other service reaches it."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = [v.split(":") for v in compose["services"]["mosquitto"]["volumes"]]
    conf = next(REPO / src for src, dst, *_ in mounts if dst == "/mosquitto/config/mosquitto.conf")
    listeners = _listeners(conf)
    assert listeners, f"{conf.name} has no listener"
    for listener in listeners:
        port, bind = listener[1], listener[2] if len(listener) > 2 else None
        assert bind in (None, "0.0.0.0", "::"), f"{conf.name}: listener {port} binds to {bind} only"
    services = {name for name, s in compose["services"].items() if "mosquitto" in str(s.get("depends_on"))}
    assert {"aggregator", "edge"} <= services
    for service in ("aggregator", "edge"):
        text = str(compose["services"][service])
        assert "mqtt://mosquitto:" in text, f"{service} does not reach the broker by its service name"
