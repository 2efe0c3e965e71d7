"""Our engine (inventory, complexity, secrets, dependencies; no clone) against cloc and lizard on one tree.

    python bench/engine.py /tmp/django-sdist/django-5.2.8 --rounds 5

`--warm` also times a re-analysis with the engine cache filled (`ENGINE_CACHE_DIR`), apart from the ratios, which
are always of a first, cold analysis. cloc and lizard are run when they are on PATH (`apt-get install cloc`,
`pip install lizard`); the last line is exactly `ratio_lizard=<ours/lizard> ratio_cloc=<ours/cloc>` (`nan` for a
tool that is missing).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repolens.tenants.v1 import tenants_pb2
from services.analysis.engine.pipeline import analyse, start_pool

GATE = tenants_pb2.QualityGate(max_function_complexity=15, max_high_findings=0, max_secrets=0, max_file_lines=1000)


def _ours(
    root: str, processes: int, cache_dir: str, queue: multiprocessing.Queue[tuple[float, float, dict[str, float]]]
) -> None:
    # As in a worker, whose pool is started and warmed once, before its first analysis.
    with start_pool(processes) if processes else nullcontext() as pool:
        started = time.perf_counter()
        outcome = analyse(
            Path(root),
            gate=GATE,
            should_stop=lambda: False,
            progress=lambda step, percent: None,
            pool=pool,
            cache_dir=cache_dir,
        )
        elapsed = time.perf_counter() - started
    # The largest of this process and its pool's processes (each holds its own share of the work).
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    queue.put((elapsed, max(own, children) / 1024, outcome.timings))


def ours(root: Path, processes: int, cache_dir: str = "") -> tuple[float, float, dict[str, float]]:
    """In a child process of its own, so that its peak memory is its own. Without a `cache_dir`, cold: every file
    is parsed, as in a first analysis."""
    queue: multiprocessing.Queue[tuple[float, float, dict[str, float]]] = multiprocessing.Queue()
    child = multiprocessing.Process(target=_ours, args=(str(root), processes, cache_dir, queue))
    child.start()
    result = queue.get(timeout=1800)
    child.join(timeout=60)
    return result


def tool(argv: list[str]) -> tuple[float, float] | None:
    if shutil.which(argv[0]) is None:
        return None
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=3600)
    elapsed = time.perf_counter() - started
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    return elapsed, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--processes", type=int, default=2, help="engine processes (0: one thread); default 2")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of the three, in turn; the ratios are of the medians; default 1"
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="also time a re-analysis of the unchanged tree with the engine cache filled (not in the ratios)",
    )
    args = parser.parse_args()
    times: dict[str, list[float]] = {"ours": [], "cloc": [], "lizard": []}
    peaks: dict[str, float] = {}
    steps: dict[str, float] = {}
    for round_ in range(1, args.rounds + 1):
        # The tools first: the peak memory of waited-for children only grows, so ours (a child too) comes last.
        measured = {
            "cloc": tool(["cloc", "--quiet", "--json", str(args.path)]),
            "lizard": tool(["lizard", "--working_threads", "1", str(args.path)]),
        }
        elapsed, peak, steps = ours(args.path, args.processes)
        measured["ours"] = (elapsed, peak)
        for name, result in measured.items():
            if result is not None:
                times[name].append(result[0])
                # A tool's peak is read off this process's waited-for children, ours among them after round 1.
                if name == "ours" or round_ == 1:
                    peaks[name] = max(peaks.get(name, 0.0), result[1])
        if args.rounds > 1:
            print(f"round {round_}: " + "  ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items() if t), flush=True)
    median = {name: statistics.median(t) for name, t in times.items() if t}
    print(f"{'tool':10} {'seconds':>8} {'peak MiB':>9}   (median of {args.rounds})")
    detail = f"processes: {args.processes}, steps: {json.dumps(steps)}"
    print(f"{'ours':10} {median['ours']:8.2f} {peaks['ours']:9.0f}   {detail}")
    for name in ("cloc", "lizard"):
        print(f"{name:10} " + (f"{median[name]:8.2f} {peaks[name]:9.0f}" if name in median else "   (not installed)"))
    if args.warm:
        with tempfile.TemporaryDirectory() as cache_dir:
            ours(args.path, args.processes, cache_dir)  # fills the cache
            warm, warm_peak, _ = ours(args.path, args.processes, cache_dir)
        shares = "  ".join(f"{warm / median[n]:.3f} x {n}" for n in ("cloc", "lizard") if n in median)
        print(f"{'ours, warm':10} {warm:8.2f} {warm_peak:9.0f}   re-analysis with the engine cache filled: {shares}")
    ratio_lizard = f"{median['ours'] / median['lizard']:.3f}" if "lizard" in median else "nan"
    ratio_cloc = f"{median['ours'] / median['cloc']:.3f}" if "cloc" in median else "nan"
    print(f"ratio_lizard={ratio_lizard} ratio_cloc={ratio_cloc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
