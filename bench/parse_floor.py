"""How fast the engine could ever be on a tree: tree-sitter's parse alone, against cloc's whole run.

    python bench/parse_floor.py /tmp/kernel/linux-source-6.1/net

The engine parses every file in a language it measures (the complexity step needs the syntax tree; the line
counts come from the same tree). This times just `Parser.parse` on those files, in one process, then cloc on the
whole tree, and prints the floor: the parse time divided among `--processes` cores, and that floor as a share of
cloc's time. When the floor alone is above 0.5, no engine that parses every file beats half of cloc's time on
that many cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.analysis.engine.complexity import SUPPORTED_LANGUAGES, parser_for
from services.analysis.engine.inventory import read
from services.analysis.engine.scan import MAX_FILE_BYTES, STEP_MAX_FILE_BYTES, plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--processes", type=int, default=2, help="cores the parse could be spread on; default 2")
    args = parser.parse_args()
    items, _ = plan(args.path, lambda: False, {})
    seconds: defaultdict[str, float] = defaultdict(float)
    sizes: defaultdict[str, int] = defaultdict(int)
    for rel, language, size, counted, _ in items:
        if not counted or language is None or language.name not in SUPPORTED_LANGUAGES or size > STEP_MAX_FILE_BYTES:
            continue
        data = read(os.path.join(args.path, rel), MAX_FILE_BYTES, size)
        if isinstance(data, str):
            continue
        ts_parser = parser_for(rel, language.name)
        if ts_parser is None:
            continue
        started = time.perf_counter()
        ts_parser.parse(data)
        seconds[language.name] += time.perf_counter() - started
        sizes[language.name] += len(data)
    for name in sorted(seconds, key=lambda n: -seconds[n]):
        rate = sizes[name] / seconds[name] / 1e6 if seconds[name] else 0.0
        print(f"{name:12} {sizes[name] / 1e6:7.1f} MB  parse {seconds[name]:6.2f} s  {rate:5.1f} MB/s")
    parse = sum(seconds.values())
    floor = parse / args.processes
    print(f"parse, one process: {parse:.2f} s; floor on {args.processes} cores: {floor:.2f} s")
    if shutil.which("cloc") is None:
        print("cloc is not installed")
        return 0
    started = time.perf_counter()
    subprocess.run(["cloc", "--quiet", "--json", str(args.path)], stdout=subprocess.DEVNULL, check=False, timeout=3600)
    cloc = time.perf_counter() - started
    print(f"cloc: {cloc:.2f} s")
    print(f"floor_vs_cloc={floor / cloc:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
