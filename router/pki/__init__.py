"""PKI: keys, the certificate authority, node certificates and tickets, in Icinga 2's file layout.

``certs`` holds keys, the CA, certificates and tickets; ``requests`` the certificate request
store (``DATA_DIR/certificate-requests``); ``signing`` the key policy and the signing of a
request; ``crl`` revocation lists; ``tickets`` the ticket check with its cache;
``limits`` the token buckets that bound anonymous enrollment; ``rekey`` renewal
with a new key (the proof a request carries, the key pair swap). All pure functions and
files: the message handling is in ``router.node.enrollment``.
"""

from __future__ import annotations

from router.pki.certs import (
    atomic_write,
    PrivateKey,
    PublicKey,
    CA_VALID_DAYS,
    LEAF_VALID_DAYS,
    CLOCK_SKEW,
    RSA_BITS,
    KEY_TYPES,
    TICKET_ITERATIONS,
    CERT_MODE,
    KEY_MODE,
    DIR_MODE,
    NodePKI,
    generate_key,
    ca_certificate,
    certificate_pem,
    create_ca,
    load_ca,
    issue_certificate,
    fingerprint,
    ticket,
    check_ticket,
    write_certificate,
    write_private_key,
    load_certificates,
    load_private_key,
    self_signed_certificate,
    ensure_node_pki,
    issue_node_files,
)
from router.pki.crl import (
    CRL_NAME,
    check_crl_file,
    crl_days_left,
    is_revoked,
    load_crl,
    revoke,
)
from router.pki.limits import Budget, PerSourceLimit
from router.pki.requests import (
    CertRequest,
    CertRequestError,
    Listing,
    RequestStore,
    common_name,
    valid_fingerprint,
)
from router.pki.rekey import (
    finish_key_rotation,
    install_key_pair,
    rekey_request,
    renewal_key,
    renewal_proof,
    staged_cert_path,
)
from router.pki.signing import (
    KeyPolicy,
    parse_request,
    same_public_key,
    sign_request,
    signed_by,
)
from router.pki.tickets import TicketChecker

__all__ = [
    "finish_key_rotation",
    "install_key_pair",
    "rekey_request",
    "renewal_key",
    "renewal_proof",
    "staged_cert_path",
    "Budget",
    "PerSourceLimit",
    "TicketChecker",
    "CRL_NAME",
    "check_crl_file",
    "crl_days_left",
    "is_revoked",
    "load_crl",
    "revoke",
    "atomic_write",
    "CertRequest",
    "CertRequestError",
    "certificate_pem",
    "common_name",
    "KeyPolicy",
    "Listing",
    "parse_request",
    "RequestStore",
    "same_public_key",
    "self_signed_certificate",
    "sign_request",
    "signed_by",
    "valid_fingerprint",
    "ca_certificate",
    "CA_VALID_DAYS",
    "CERT_MODE",
    "check_ticket",
    "CLOCK_SKEW",
    "create_ca",
    "DIR_MODE",
    "ensure_node_pki",
    "fingerprint",
    "generate_key",
    "issue_certificate",
    "issue_node_files",
    "KEY_MODE",
    "KEY_TYPES",
    "LEAF_VALID_DAYS",
    "load_ca",
    "load_certificates",
    "load_private_key",
    "NodePKI",
    "PrivateKey",
    "PublicKey",
    "RSA_BITS",
    "ticket",
    "TICKET_ITERATIONS",
    "write_certificate",
    "write_private_key",
]
