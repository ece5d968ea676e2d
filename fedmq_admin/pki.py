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


def _openssl(*args: str) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        raise PkiError("openssl not found: run scripts/install_system_deps.sh (apt-get install openssl)")
    done = subprocess.run([tool, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {done.stderr.strip().splitlines()[-1:]}")


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
