"""The benchmark PKI: one CA, certificates for ``sat1``, ``master`` and every agent.

:func:`make_pki` creates the CA; :func:`pki_from_ca` issues from an existing one
(``router perf --target ... --pki DIR``). An agent's certificate file holds its chain
(:func:`write_agent_chain`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from perf.wire import MASTER, SAT, agent_name
from router import pki

__all__ = ["BenchPKI", "make_pki", "pki_from_ca", "write_agent_chain"]


@dataclass
class BenchPKI:
    ca_dir: Path
    out_dir: Path
    ca_cert: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ca_cert = self.ca_dir / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.out_dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.out_dir / f"{name}.key"


def make_pki(base: Path, agents: int, shared_key: bool = False,
             key_type: str = "ec") -> BenchPKI:
    """One CA; certificates for sat1, master and every agent (CN = SAN = name).

    ``shared_key``: all agents share one key (``agents.key``) and get one certificate
    each; issuing N certificates for one key is much faster than generating N keys.
    ``key_type``: every key, the CA's included (:data:`router.pki.KEY_TYPES`; ``rsa4096``
    is what an Icinga CA and ``icinga2 pki new-cert`` make).
    """
    ca_dir, out_dir = base / "ca", base / "issued"
    pki.create_ca(ca_dir, common_name="Bench Relay CA", key_type=key_type)
    ca_cert, ca_key = pki.load_ca(ca_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agent_key = None
    if shared_key:
        _, agent_key = pki.issue_certificate(ca_cert, ca_key, agent_name(0), key_type=key_type)
        pki.write_private_key(out_dir / "agents.key", agent_key)
    for name in [SAT, MASTER]:
        cert, key = pki.issue_certificate(ca_cert, ca_key, name, key_type=key_type)
        pki.write_private_key(out_dir / f"{name}.key", key)
        pki.write_certificate(out_dir / f"{name}.crt", cert)
    for name in [agent_name(i) for i in range(agents)]:
        cert, key = pki.issue_certificate(ca_cert, ca_key, name, key=agent_key,
                                          key_type=key_type)
        if agent_key is None:
            pki.write_private_key(out_dir / f"{name}.key", key)
        write_agent_chain(out_dir / f"{name}.crt", cert, ca_cert)
    return BenchPKI(ca_dir, out_dir)


def write_agent_chain(path: Path, cert: Any, ca_cert: Any) -> None:
    """An emulated agent's certificate file: its certificate, then the CA's.

    That chain is what an Icinga agent sends: its file names only its own certificate,
    and OpenSSL completes the chain from the CA store on every handshake. Given the chain
    up front, the emulated agent sends the same bytes and skips that search (about 0.1 ms
    a handshake, CPU the node under test shares).
    """
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                     + ca_cert.public_bytes(serialization.Encoding.PEM))


def pki_from_ca(base: Path, ca_dir: Path, n: int, key_type: str = "ec") -> BenchPKI:
    """Certificates for ``master`` and the agents, issued by an existing CA (``--pki``).

    Like :func:`make_pki`: one shared key, and each agent's certificate file
    holds its chain (certificate, then CA), the bytes an Icinga agent sends.
    """
    ca_cert, ca_key = pki.load_ca(ca_dir)
    out = base / "issued"
    out.mkdir(parents=True)
    shutil.copy(ca_dir / "ca.crt", out / "ca.crt")
    _, shared = pki.issue_certificate(ca_cert, ca_key, MASTER, key_type=key_type)
    pki.write_private_key(out / "agents.key", shared)
    for name in [MASTER] + [agent_name(i) for i in range(n)]:
        cert, key = pki.issue_certificate(ca_cert, ca_key, name, key=shared)
        if name == MASTER:
            pki.write_certificate(out / f"{name}.crt", cert)
        else:
            write_agent_chain(out / f"{name}.crt", cert, ca_cert)
        pki.write_private_key(out / f"{name}.key", key)
    return BenchPKI(ca_dir, out)
