"""Inputs that made a fuzz target crash, kept as regression tests.

Each file under ``tests/fuzz/regressions/<target>/`` was written by the fuzzing engine
(``python -m perf.fuzz``) when an undocumented exception came out of a decoder. The
targets must now accept it or refuse it with a documented exception; the direct tests
below pin down the refusal the fix chose, through the public API the node uses.
"""

from __future__ import annotations

import struct
from pathlib import Path

import lmdb
import pytest

from perf.fuzz.targets import TARGETS
from replaylog import ReplayLogCorrupt, ReplayStore
from router.pki.requests import CertRequestError, RequestStore
from router.pki.signing import parse_request, sign_request

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
CASES = sorted((d.name, f) for d in REGRESSIONS.iterdir() for f in sorted(d.iterdir()))


@pytest.mark.parametrize(("target", "path"), CASES,
                         ids=[f"{t}/{p.name}" for t, p in CASES])
def test_crash_input_now_takes_a_documented_path(target: str, path: Path) -> None:
    TARGETS[target].run(path.read_bytes())


def test_a_certificate_with_a_damaged_key_is_refused_not_raised() -> None:
    """cryptography parses the key lazily: ``public_key()`` raised ValueError in
    sign_request, so a peer's request ended as an "internal error" with a traceback."""
    cert = parse_request((REGRESSIONS / "csr" / "public_key_invalid").read_bytes())
    from perf.fuzz.targets import throwaway_ca
    ca_cert, ca_key = throwaway_ca()
    with pytest.raises(CertRequestError, match="unusable public key"):
        sign_request(ca_cert, ca_key, cert)


def test_a_certificate_with_a_bad_version_is_not_a_certificate() -> None:
    with pytest.raises(CertRequestError, match="not an X.509 certificate"):
        parse_request((REGRESSIONS / "csr" / "invalid_version").read_bytes())


def test_a_stored_request_with_an_unparsable_subject_is_listed_as_corrupt(tmp_path) -> None:
    """``router ca list`` printed the CN of every request: one file whose subject did not
    parse raised ValueError out of the listing."""
    store = RequestStore(tmp_path)
    path = store.path("1" * 64)
    path.parent.mkdir(parents=True)
    path.write_bytes((REGRESSIONS / "csr_store" / "subject_unparsable").read_bytes())
    listing = store.list()
    assert listing.requests == [] and len(listing.corrupt) == 1
    with pytest.raises(CertRequestError, match="does not parse"):
        store.get("1" * 64)


def test_a_short_record_in_the_middle_of_the_log_is_reported_as_corrupt(tmp_path) -> None:
    """The open checks the first and last records only; a damaged one between them
    raised struct.error out of read_batch (the replay of a peer)."""
    path = tmp_path / "replaylog"
    with ReplayStore(path, sync=False) as store:
        store.append_many([("agent", 100.0 + i, b"2:{},", None) for i in range(5)])
    env = lmdb.open(str(path), max_dbs=8, lock=False)
    with env.begin(write=True) as txn:
        txn.put(struct.pack(">IQ", 0, 3), b"\x00\x01", db=env.open_db(b"records", txn=txn))
    env.close()
    with ReplayStore(path, readonly=True) as store:
        with pytest.raises(ReplayLogCorrupt, match="damaged entry") as info:
            list(store.iter_from("agent"))
    assert "router replaylog reset --data-dir" in str(info.value)


@pytest.mark.parametrize("key", [b"total", b"next_zone", b"version"])
def test_a_meta_entry_of_the_wrong_size_is_corrupt_at_open(tmp_path, key: bytes) -> None:
    """``struct.error`` is no ``ValueError``: the open let it out for a short meta entry."""
    path = tmp_path / "replaylog"
    with ReplayStore(path, sync=False) as store:
        store.append_many([("agent", 100.0, b"2:{},", None)])
    env = lmdb.open(str(path), max_dbs=8, lock=False)
    with env.begin(write=True) as txn:
        txn.put(key, b"\x00\x01\x02", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(ReplayLogCorrupt, match="error"):
        ReplayStore(path, readonly=True)
