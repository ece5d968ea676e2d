"""Certificates for a federation's broker TLS listener and for device client certificates (mTLS).

Why ``openssl``: it is on every machine that runs Mosquitto (and ``scripts/install_system_deps.sh``
installs it), and fedmq then needs no X.509 library of its own. Keys are ECDSA P-256; the CA signs the
broker's server certificate (with the broker's host names and addresses as subjectAltName) and one
client certificate per account, whose common name is the broker account (Mosquitto's
``use_identity_as_username`` ties the certificate to the ACL's ``%u``).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
from pathlib import Path

from shared.errors import FedmqError

DAYS = 3650


class PkiError(FedmqError):
    """openssl is missing or refused to make a key or certificate."""


def _openssl(*args: str) -> str:
    """Run ``openssl args``; its standard output, or PkiError with its last line of errors."""
    tool = shutil.which("openssl")
    if tool is None:
        raise PkiError("openssl not found: run scripts/install_system_deps.sh (apt-get install openssl)")
    done = subprocess.run([tool, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def _key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
    path.chmod(0o600)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA in ``directory`` (``ca.crt``, ``ca.key`` mode 0600); returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "ca.key", directory / "ca.crt"
    _key(key)
    _openssl(
        "req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", str(DAYS),
        "-subj", f"/CN={name} fedmq CA", "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def issue(
    ca: tuple[Path, Path],
    common_name: str,
    out_dir: Path,
    stem: str,
    *,
    server_names: list[str] | None = None,
) -> tuple[Path, Path]:
    """A certificate for ``common_name`` signed by ``ca`` as ``<stem>.crt`` / ``<stem>.key``.

    With ``server_names`` it is a TLS server certificate for those DNS names / IP addresses; without,
    a client certificate (extendedKeyUsage clientAuth).
    """
    ca_cert, ca_key = ca
    out_dir.mkdir(parents=True, exist_ok=True)
    key, cert = out_dir / f"{stem}.key", out_dir / f"{stem}.crt"
    _key(key)
    if server_names:
        alt = []
        for name in server_names:
            try:
                ipaddress.ip_address(name)
                alt.append(f"IP:{name}")
            except ValueError:
                alt.append(f"DNS:{name}")
        ext = f"subjectAltName={','.join(alt)}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    else:
        ext = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
    with tempfile.TemporaryDirectory() as tmp:
        csr, extfile = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
        extfile.write_text(ext)
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={common_name}")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", str(DAYS), "-sha256", "-extfile", str(extfile),
        )  # fmt: skip
    return cert, key


# -- revocation --------------------------------------------------------------------------------------
#
# ``openssl ca`` keeps the revoked serials in a small text database beside the CA (``ca/db/``) and signs a
# CRL from it. Mosquitto checks client certificates against the listener's ``crlfile`` and reloads it on
# SIGHUP, so a revoked device's certificate stops opening connections after ``fedmq revoke`` + reload.


def _ca_config(ca: tuple[Path, Path]) -> Path:
    """The ``openssl ca`` settings for ``ca`` (created on first use; the database starts empty)."""
    ca_cert, ca_key = ca
    db = ca_cert.parent / "db"
    db.mkdir(exist_ok=True)
    (db / "index.txt").touch()
    if not (db / "crlnumber").exists():
        (db / "crlnumber").write_text("1000\n")
    config = db / "ca.cnf"
    config.write_text(
        "[ca]\ndefault_ca = fedmq\n[fedmq]\n"
        f"database = {db / 'index.txt'}\ncrlnumber = {db / 'crlnumber'}\n"
        f"certificate = {ca_cert}\nprivate_key = {ca_key}\n"
        "default_md = sha256\ndefault_crl_days = " + str(DAYS) + "\n"
    )
    return config


def write_crl(ca: tuple[Path, Path], out: Path) -> Path:
    """Sign the CA's current revocation list (PEM) to ``out``; an empty one before any revocation."""
    _openssl("ca", "-config", str(_ca_config(ca)), "-gencrl", "-out", str(out))
    return out


def revoke(ca: tuple[Path, Path], cert: Path) -> None:
    """Record ``cert`` as revoked in the CA's database (idempotent); ``write_crl`` publishes it."""
    config = _ca_config(ca)
    serial = _openssl("x509", "-in", str(cert), "-noout", "-serial").strip().partition("=")[2]
    index = (config.parent / "index.txt").read_text()
    if any(line.startswith("R\t") and f"\t{serial}\t" in line for line in index.splitlines()):
        return
    _openssl("ca", "-config", str(config), "-revoke", str(cert))
