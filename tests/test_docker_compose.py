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
