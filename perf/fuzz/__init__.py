"""Fuzz targets for every decoder that takes bytes from outside (``python -m perf.fuzz``).

:mod:`perf.fuzz.targets` holds the targets and the exceptions each may let out;
``python -m perf.fuzz`` runs them under atheris (the optional extra ``fuzz``); the seeded
corpora are in ``perf/fuzz/corpus/<target>/``. ``tests/fuzz/test_fuzz_targets.py`` runs
every target on its corpus and a few thousand mutated inputs in the normal test run.
"""

__all__: list[str] = []
