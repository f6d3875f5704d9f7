"""``python -m perf.fuzz TARGET --runs N``: run one fuzz target under atheris.

Why atheris: it is coverage-guided (each input that reaches new Python lines or branches
of the instrumented modules is kept and mutated further), its engine is libFuzzer, and
it runs the target in-process, so a million inputs of a pure-Python decoder take
minutes, not hours. Only the decoder's own modules are instrumented (``Target.modules``),
so the feedback is about our code and the overhead stays small.

::

    python -m perf.fuzz list
    python -m perf.fuzz netstring --runs 1000000          # one target, seeded corpus
    python -m perf.fuzz all --runs 1000000 --jobs 2 --out /tmp/fuzz   # every target
    python -m perf.fuzz replay netstring CRASH_FILE       # re-run one input, traceback
    python -m perf.fuzz all --runs 1000000 -max_total_time=1200   # libFuzzer flags pass

The seeded corpus is ``perf/fuzz/corpus/<target>/`` (read only: new inputs the engine
finds go to a work directory, ``--work``, default a temporary one). A crash prints the
traceback, writes the input to ``--artifacts`` (default the work directory) and exits 1;
libFuzzer's final statistics (``stat::number_of_executed_units``, ``cov:``, ``ft:``) are
on stderr, and ``all`` collects them into one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def _fuzz_one(name: str, runs: int, work: Path, artifacts: Path, max_len: int,
              seed: int, extra: list[str]) -> None:
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    from perf.fuzz.targets import TARGETS   # targets import the decoders lazily

    target = TARGETS[name]
    with atheris.instrument_imports(include=list(target.modules)):
        for module in target.modules:
            __import__(module)
    target.run(b"")   # build caches (CA, template log) outside the measured runs
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], str(work), str(CORPUS / name), f"-runs={runs}", f"-seed={seed}",
            f"-max_len={max_len}", f"-artifact_prefix={artifacts}/{name}-",
            "-print_final_stats=1", "-timeout=30", "-rss_limit_mb=3072", *extra]
    atheris.Setup(argv, target.run)
    atheris.Fuzz()


_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_COV = re.compile(r"#(\d+)\s+(?:DONE|NEW|REDUCE|pulse|INITED)\s+cov: (\d+) ft: (\d+)"
                  r"(?: corp: (\d+)/)?")


def summarize(log: str) -> dict[str, int | str]:
    """The figures of one libFuzzer log: runs, coverage, features, corpus, crash."""
    out: dict[str, int | str] = {}
    for key, value in _STAT.findall(log):
        out[key] = int(value)
    covs = _COV.findall(log)
    if covs:
        last = covs[-1]
        out.update(cov=int(last[1]), ft=int(last[2]))
        if last[3]:
            out["corpus"] = int(last[3])
    crash = re.search(r"Uncaught Python exception: =+\n(.+)$", log, re.M)
    if crash or "Test unit written to" in log:
        out["crash"] = crash.group(1) if crash else "see log"
    return out


def _run_all(args: argparse.Namespace) -> int:
    from perf.fuzz.targets import TARGETS

    names = args.targets or list(TARGETS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pending = list(names)
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    results: dict[str, dict[str, int | str]] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            log = open(out / f"{name}.log", "wb")   # noqa: SIM115 - closed with the child
            cmd = [sys.executable, "-m", "perf.fuzz", name, "--runs", str(args.runs),
                   "--work", str(out / "work" / name), "--artifacts", str(out / "crashes"),
                   *args.engine_options]
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
                             time.monotonic())
        time.sleep(1)
        for name, (proc, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            figures = summarize((out / f"{name}.log").read_text(errors="replace"))
            figures["seconds"] = round(time.monotonic() - started)
            figures["exit"] = proc.returncode
            results[name] = figures
            print(f"{name}: {figures}", flush=True)
    print(table(results))
    return 1 if any(r.get("exit") for r in results.values()) else 0


def table(results: dict[str, dict[str, int | str]]) -> str:
    """Markdown table of the runs (RESULTS.md, docs/reliability.md)."""
    rows = ["| target | inputs run | seconds | exec/s | cov | ft | corpus | crashes |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        runs = r.get("number_of_executed_units", "?")
        rows.append(f"| {name} | {runs} | {r.get('seconds', '?')} | "
                    f"{r.get('average_exec_per_sec', '?')} | {r.get('cov', '?')} | "
                    f"{r.get('ft', '?')} | {r.get('corpus', '?')} | "
                    f"{r.get('crash', 'none')} |")
    return "\n".join(rows)


def _replay(name: str, files: list[str]) -> int:
    from perf.fuzz.targets import TARGETS

    for file in files:
        TARGETS[name].run(Path(file).read_bytes())
        print(f"{file}: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["list"]:
        from perf.fuzz.targets import TARGETS
        for t in TARGETS.values():
            print(f"{t.name:15} {t.documented}")
        return 0
    if argv[:1] == ["replay"]:
        return _replay(argv[1], argv[2:])
    parser = argparse.ArgumentParser(prog="python -m perf.fuzz")
    parser.add_argument("target", help="a target name (see 'list') or 'all'")
    parser.add_argument("targets", nargs="*", help="with 'all': only these targets")
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=1, help="with 'all': parallel runs")
    parser.add_argument("--out", default=None, help="with 'all': logs, work, crashes")
    parser.add_argument("--work", default=None)
    parser.add_argument("--artifacts", default=None)
    parser.add_argument("--max-len", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=1)
    args, extra = parser.parse_known_args(argv)
    if args.target == "all":
        args.out = args.out or tempfile.mkdtemp(prefix="router-fuzz-")
        args.engine_options = extra   # libFuzzer flags (-max_total_time=S) for every run
        return _run_all(args)
    work = Path(args.work or tempfile.mkdtemp(prefix=f"router-fuzz-{args.target}-"))
    _fuzz_one(args.target, args.runs, work, Path(args.artifacts or work), args.max_len,
              args.seed, extra)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
