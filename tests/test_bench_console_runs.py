"""docs/console.md and docs/status-api.md cite `python perf/bench_console.py` as the
measurement behind the console's scale promise ("At 5 000 endpoints the console's
document is about 1.7 MB and its build takes well under the issue's 200 ms"). The
benchmark no longer runs: perf/bench_console.py:73 sets ``stats.rate_in.add(...)`` and
``stats.byte_rate_in``, attributes EndpointStats lost when the four rates moved into one
``stats.rates`` (RateSeries, router/node/stats.py), so it dies with AttributeError before
building a single document and the documented figure cannot be reproduced."""
from __future__ import annotations

import shutil
import tempfile

import pytest


def test_bench_console_in_process_runs(monkeypatch, tmp_path):
    from perf import bench_console

    made = []
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):          # keep its files under the test's tmp_path
        kwargs["dir"] = str(tmp_path)
        path = real(*args, **kwargs)
        made.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    try:
        result = bench_console.in_process(20, 1)
    except AttributeError as exc:
        pytest.fail(f"perf/bench_console.py (cited by docs/console.md) crashes: {exc}")
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
    assert result["console"]["bytes"] > 0
