"""The hottest functions of a py-spy flame graph (SVG), as a text table.

``router perf --py-spy DIR`` keeps one flame graph per node and load window; this reads
one back (the frames' titles and their ``fg:x``/``fg:w`` sample counts) and prints, per
function, its *self* samples (not in a callee) and *inclusive* samples (counted once per
stack even when recursive), largest self first:

    python perf/flame_top.py perf/flame/router-max-sat1.svg [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import html
import re
import sys
from pathlib import Path

__all__ = ["Frame", "frames", "main", "top"]

_FRAME = re.compile(r'<g><title>(?P<title>[^<]*)</title><rect [^>]*?y="(?P<y>[\d.]+)"[^>]*?'
                    r'fg:x="(?P<x>\d+)" fg:w="(?P<w>\d+)"')
_LINE = re.compile(r":\d+\)$")
_NAME = re.compile(r"^(?P<name>.*?) \((?P<samples>\d+) samples?, [\d.]+%\)$")


class Frame:
    __slots__ = ("name", "x", "w", "y")

    def __init__(self, name: str, x: int, w: int, y: float) -> None:
        self.name, self.x, self.w, self.y = name, x, w, y


def frames(svg: str, by_line: bool = False) -> list[Frame]:
    out = []
    for m in _FRAME.finditer(svg):
        title = html.unescape(m["title"])
        nm = _NAME.match(title)
        name = nm["name"] if nm else title
        if not by_line:                     # "f (file.py:123)" -> "f (file.py)"
            name = _LINE.sub(")", name)
        out.append(Frame(name, int(m["x"]), int(m["w"]), float(m["y"])))
    return out


def top(svg: str, n: int = 25, by_line: bool = False
        ) -> tuple[int, list[tuple[str, int, int]]]:
    """(total samples, [(function, self, inclusive)] by self, largest first); py-spy names
    frames by line, merged per function unless ``by_line``."""
    fs = frames(svg, by_line)
    by_depth: dict[float, list[Frame]] = collections.defaultdict(list)
    for f in fs:
        by_depth[f.y].append(f)
    depths = sorted(by_depth)
    step = min((b - a for a, b in zip(depths, depths[1:])), default=16.0)
    selfs: collections.Counter[str] = collections.Counter()
    for f in fs:
        children = sum(c.w for c in by_depth.get(f.y + step, ())
                       if f.x <= c.x < f.x + f.w)
        selfs[f.name] += f.w - children
    # inclusive: per function, the samples of its outermost frames only (no double count)
    incl: collections.Counter[str] = collections.Counter()
    spans: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for f in sorted(fs, key=lambda f: f.y if step > 0 else -f.y):
        if any(a <= f.x < b for a, b in spans[f.name]):
            continue
        spans[f.name].append((f.x, f.x + f.w))
        incl[f.name] += f.w
    roots = by_depth[depths[0]] if depths else []
    total = sum(f.w for f in roots)
    rows = [(name, s, incl[name]) for name, s in selfs.most_common(n)]
    return total, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("svg", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--by-line", action="store_true", help="one row per source line")
    args = ap.parse_args(argv)
    for path in args.svg:
        total, rows = top(Path(path).read_text(), args.top, args.by_line)
        print(f"# {path}: {total} samples")
        print(f"{'self %':>7} {'incl %':>7}  function")
        for name, s, inc in rows:
            print(f"{100 * s / max(1, total):7.1f} {100 * inc / max(1, total):7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
