"""The fuzz targets of ``perf/fuzz`` in the normal test run: a short, seeded run of each.

The million-input runs are perf scripts (``python -m perf.fuzz all --runs 1000000``,
results in perf/RESULTS.md); here every target gets its seeded corpus
(``perf/fuzz/corpus/<target>/``) plus a few hundred to a few thousand inputs mutated from
it with a fixed seed, so a decoder change that lets an undocumented exception out on
ordinary near-miss input fails CI, and the targets themselves cannot rot. The mutations
are libFuzzer's simplest ones (bit flips, byte changes, inserts, erases, duplicated
ranges, splices of two corpus files), deterministic per target.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from perf.fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parents[2] / "perf" / "fuzz" / "corpus"
#: generated inputs per target; the slow ones (a whole TOML configuration, an LMDB
#: environment per input, 1-byte reads into the peer) get fewer: the file stays < 30 s on
#: a busy machine.
BUDGET = {"toml_config": 300, "replaylog_read": 400, "csr_store": 600, "peer": 1200,
          "zones_conf": 1200}
DEFAULT_BUDGET = 2500


def corpus(name: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / name).iterdir()) if p.is_file()]


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One input derived from the corpus by 1-4 random edits."""
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(data))
        if op == 0 and data:                                # flip a bit
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:                              # set a byte
            data[rng.randrange(len(data))] = rng.choice(
                [0, 1, 0x7F, 0x80, 0xFF, ord(":"), ord(","), ord("\n"), ord('"'),
                 ord("{"), ord("}"), ord("["), rng.randrange(256)])
        elif op == 2:                                       # insert random bytes
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and data:                              # erase a range
            data[pos:pos + rng.randint(1, 16)] = b""
        elif op == 4 and data:                              # duplicate a range
            start = rng.randrange(len(data))
            data[pos:pos] = data[start:start + rng.randint(1, 32)]
        elif op == 5:                                       # splice another seed in
            other = rng.choice(seeds)
            cut = rng.randint(0, len(other))
            data[pos:] = other[cut:]
        else:                                               # change a decimal number
            digits = str(rng.choice([0, 1, 9, 10, 255, 65535, 2**31, 2**63, 999999999]))
            data[pos:pos] = digits.encode()
    return bytes(data)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus_and_mutations_raise_only_documented_exceptions(name: str) -> None:
    """Every target on its corpus and on seeded mutations of it (see the module doc)."""
    target = TARGETS[name]
    seeds = corpus(name)
    assert seeds, f"perf/fuzz/corpus/{name}/ is empty"
    for data in seeds:
        target.run(data)
    rng = random.Random(f"{name}-2026")
    for _ in range(BUDGET.get(name, DEFAULT_BUDGET)):
        data = mutate(rng, seeds)
        try:
            target.run(data)
        except BaseException as exc:
            raise AssertionError(f"target {name} let {type(exc).__name__} out on input "
                                 f"{data!r}; documented: {target.documented}") from exc


def test_every_target_has_a_small_corpus() -> None:
    """The seeded corpora are kept in the repository: small files, one directory each."""
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(TARGETS)
    for directory in CORPUS.iterdir():
        sizes = [p.stat().st_size for p in directory.iterdir()]
        assert sizes and max(sizes) <= 16 * 1024, directory
