"""No Docker engine runs here, so check what can be checked without one: the compose file parses, references
only real files, runs every long-lived service with a restart policy and a health check, the aggregator
image carries no torch, the broker config the `init` job renders listens on the compose network with TLS,
its certificate names the service the others dial, and the systemd units and the wheel hold what they
must."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from fedmq_admin.federation import init_federation
from shared import service

REPO = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def dockerfile(service_def: dict) -> Path:
    build = service_def["build"]
    if isinstance(build, str):
        return REPO / build / "Dockerfile"
    return REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def test_compose_services_and_referenced_files_exist():
    services = compose()["services"]
    assert {"init", "mosquitto", "aggregator", "edge"} <= set(services)
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
        if "build" in svc:
            assert dockerfile(svc).exists(), f"{name}: no {dockerfile(svc)}"
        for script in svc.get("entrypoint", []):
            if script.startswith("/app/"):
                path = REPO / script.removeprefix("/app/")
                assert path.exists(), f"{name} entrypoint {script} missing"
                assert path.stat().st_mode & 0o111, f"{script} is not executable"
    assert services["edge"]["deploy"]["replicas"] >= 1


def test_long_lived_services_restart_and_report_health():
    services = compose()["services"]
    for name in ("mosquitto", "aggregator", "edge"):
        assert services[name].get("restart") == "unless-stopped", name
    for name in ("mosquitto", "aggregator"):
        assert services[name]["healthcheck"]["test"], name
    assert "/healthz" in str(services["aggregator"]["healthcheck"]["test"])
    assert services["aggregator"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert services["mosquitto"]["depends_on"]["init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("path", ["Dockerfile", "docker/Dockerfile.aggregator"])
def test_dockerfiles_copy_existing_paths(path):
    for line in (REPO / path).read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"{path} copies missing {source}"


def test_the_aggregator_image_has_no_torch():
    services = compose()["services"]
    text = dockerfile(services["aggregator"]).read_text()
    assert "torch" not in text.replace("without torch", "") and "[edge]" not in text
    assert dockerfile(services["edge"]).read_text().count("torch==") == 1
    # And the aggregator and the admin tool indeed import without it.
    probe = "import sys, aggregator.cli, fedmq_admin.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO).returncode == 0


def test_compose_broker_listens_on_its_network_with_tls(tmp_path):
    """Inside its container the broker must not bind to loopback only, or no other service reaches it; the
    config is the one `fedmq init` renders in the init job (same arguments as docker/init-federation.sh)."""
    script = (REPO / "docker" / "init-federation.sh").read_text()
    assert "--host mosquitto" in script and "--port 8883" in script and "--bind" not in script
    init_federation(tmp_path / "fed", "demo", host="mosquitto", port=8883, extra_names=["localhost"])
    conf = (tmp_path / "fed" / "broker" / "mosquitto.conf").read_text().splitlines()
    listeners = [line.split() for line in conf if line.startswith("listener ")]
    assert listeners == [["listener", "8883"]]  # every interface
    assert "allow_anonymous false" in conf and any(line.startswith("certfile ") for line in conf)
    server_cert = tmp_path / "fed" / "broker" / "server.crt"
    cert = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(server_cert)],
                          capture_output=True, text=True)  # fmt: skip
    assert "DNS:mosquitto" in cert.stdout
    services = compose()["services"]
    assert "/fed/broker/mosquitto.conf" in services["mosquitto"]["command"]
    for name in ("aggregator", "edge"):
        assert services[name]["environment"]["FEDMQ_BROKER_URL"] == "mqtts://mosquitto:8883", name


def test_systemd_units_run_from_config_and_stop_restarting_on_permanent_faults():
    for unit, binary in (("fedmq-edge", "fedmq-edge"), ("fedmq-aggregator", "fedmq-aggregator")):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(REPO / "deploy" / "systemd" / f"{unit}.service")
        section = parser["Service"]
        assert f"bin/{binary} --config " in section["ExecStart"]
        assert section["KillSignal"] == "SIGTERM" and section["Restart"] == "on-failure"
        prevented = {int(code) for code in section["RestartPreventExitStatus"].split()}
        permanent = {service.EXIT_CONFIG, service.EXIT_AUTH, service.EXIT_TLS, service.EXIT_INCOMPATIBLE}
        assert permanent <= prevented
        assert service.EXIT_UNREACHABLE not in prevented  # a broker that is down may come back


@pytest.mark.slow
def test_the_wheel_contains_what_the_clis_need(tmp_path):
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("shared", "aggregator", "edge_client", "simulator", "fedmq_admin", "broker_config"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("fedmq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("broker_config/acl.conf", "broker_config/mosquitto.conf.tmpl", "fedmq_admin/cli.py",
                   "aggregator/cli.py", "edge_client/cli.py", "simulator/demo.py"):  # fmt: skip
        assert needed in names, f"{needed} is not in {wheel.name}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("fedmq =", "fedmq-aggregator =", "fedmq-edge =", "fedmq-demo ="):
        assert script in text
