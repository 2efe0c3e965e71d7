"""Compare the inventory step with cloc on a directory: per-language files, code, comment and blank lines, and time.

    .venv/bin/python bench/inventory_vs_cloc.py /tmp/django-sdist/django-5.2.8 [--worst 10] [--language Python]

cloc runs twice when it is installed (`apt-get install cloc`):

* on the directory as it is (`cloc --json DIR`): its own choice of files, for the timing and its totals;
* on exactly the files that the inventory counted (`--list-file`, `--skip-uniqueness`, `--by-file`): the
  per-language table compares counting rules on the same files, without our skip rules (vendored directories,
  minified and generated files, which cloc counts) or cloc's (duplicate files, which it drops) in the way; each
  file is summed under the language the inventory gave it.

`--worst N` lists the N files of `--language` whose code counts differ most from cloc's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.analysis.engine.inventory import Inventory, inventory  # noqa: E402

# cloc's language names -> ours, where they differ. cloc's "C/C++ Header" is C here (.h is C for us).
CLOC_NAMES = {
    "Bourne Shell": "Shell",
    "Bourne Again Shell": "Shell",
    "zsh": "Shell",
    "C/C++ Header": "C",
    "make": "Makefile",
    "DOS Batch": "Batch",
    "Vuejs Component": "Vue",
    "LESS": "Less",
    "Gradle": "Groovy",
    "JSX": "JavaScript",
    "XSD": "XML",
    "XSLT": "XML",
    "MSBuild script": "XML",
    "Starlark": "Starlark",
    "Bazel": "Starlark",
    "HCL": "HCL",
    "Objective-C++": "Objective-C++",
}

Counts = dict[str, list[int]]  # language -> [files, code, comment, blank]


def run_cloc(args: list[str]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    done = subprocess.run(["cloc", "--json", "--quiet", *args], capture_output=True, check=True)
    elapsed = time.perf_counter() - started
    text = done.stdout.decode("utf-8", "replace")
    return (json.loads(text) if text.strip() else {}), elapsed


def cloc_by_language(report: dict[str, Any]) -> Counts:
    counts: Counts = {}
    for name, row in report.items():
        if name in ("header", "SUM") or not isinstance(row, dict):
            continue
        acc = counts.setdefault(CLOC_NAMES.get(name, name), [0, 0, 0, 0])
        for i, key in enumerate(("nFiles", "code", "comment", "blank")):
            acc[i] += int(row.get(key, 0))
    return counts


def cloc_by_file(
    report: dict[str, Any], directory: Path, our_languages: dict[str, str]
) -> tuple[Counts, dict[str, tuple[str, int, int, int]]]:
    """From `cloc --by-file --json`: per-language sums and per-file (language, code, comment, blank). A file is
    summed under the language we gave it, so that the table compares counting rules, not classification (cloc
    calls `.h`, `.hpp` and `.hh` alike "C/C++ Header")."""
    counts: Counts = {}
    files: dict[str, tuple[str, int, int, int]] = {}
    for name, row in report.items():
        if name in ("header", "SUM") or not isinstance(row, dict):
            continue
        language = str(row["language"])
        language = CLOC_NAMES.get(language, language)
        code, comment, blank = int(row["code"]), int(row["comment"]), int(row["blank"])
        rel = Path(name).resolve().relative_to(directory).as_posix()
        language = our_languages.get(rel, language)
        files[rel] = (language, code, comment, blank)
        acc = counts.setdefault(language, [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += code
        acc[2] += comment
        acc[3] += blank
    return counts, files


def ours_by_language(inv: Inventory) -> Counts:
    return {name: [s.files, s.code, s.comment, s.blank] for name, s in inv.languages.items()}


def pct(ours: int, theirs: int) -> str:
    if theirs == 0:
        return "   -   " if ours == 0 else "  new  "
    return f"{100.0 * (ours - theirs) / theirs:+6.2f}%"


def print_table(ours: Counts, theirs: Counts, title: str) -> None:
    print(f"\n{title}")
    header = f"{'language':<18} {'files':>13}  {'code':>26}  {'comment':>24}  {'blank':>24}"
    print(header)
    print(
        f"{'':<18} {'ours / cloc':>13}  {'ours / cloc':>17} {'diff':>8}  {'ours / cloc':>15} {'diff':>8}  "
        f"{'ours / cloc':>15} {'diff':>8}"
    )
    names = sorted(set(ours) | set(theirs), key=lambda n: -max(ours.get(n, [0, 0])[1], theirs.get(n, [0, 0])[1]))
    total_o, total_t = [0, 0, 0, 0], [0, 0, 0, 0]
    for name in [*names, "TOTAL"]:
        if name == "TOTAL":
            o, t = total_o, total_t
            print("-" * len(header))
        else:
            o, t = ours.get(name, [0, 0, 0, 0]), theirs.get(name, [0, 0, 0, 0])
            for i in range(4):
                total_o[i] += o[i]
                total_t[i] += t[i]
        print(
            f"{name[:18]:<18} {o[0]:>6}/{t[0]:<6}  {o[1]:>8}/{t[1]:<8} {pct(o[1], t[1])}  "
            f"{o[2]:>7}/{t[2]:<7} {pct(o[2], t[2])}  {o[3]:>7}/{t[3]:<7} {pct(o[3], t[3])}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--worst", type=int, default=0, help="list the N files whose code counts differ most")
    parser.add_argument("--language", default="Python", help="the language for --worst (default: Python)")
    parser.add_argument("--max-file-bytes", type=int, default=2_000_000)
    args = parser.parse_args(argv)
    directory: Path = args.directory.resolve()

    started = time.perf_counter()
    inv = inventory(directory, max_file_bytes=args.max_file_bytes)
    ours_s = time.perf_counter() - started
    ours = ours_by_language(inv)
    print(f"inventory: {len(inv.files)} files counted in {ours_s:.2f} s; skipped: {inv.skipped}")

    if shutil.which("cloc") is None:
        print_table(ours, {}, "cloc is not installed (apt-get install cloc): our counts only")
        return 0

    whole, whole_s = run_cloc([str(directory)])
    print(f"cloc on the directory: {whole.get('header', {}).get('n_files', '?')} files in {whole_s:.2f} s")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("".join(f"{directory / f.path}\n" for f in inv.files))
    try:
        same, same_s = run_cloc(["--by-file", "--skip-uniqueness", f"--list-file={listing.name}"])
    finally:
        Path(listing.name).unlink()
    theirs, their_files = cloc_by_file(same, directory, {f.path: f.language for f in inv.files})
    print(f"cloc on the inventory's files: {len(their_files)} files in {same_s:.2f} s")
    print(f"time: inventory {ours_s:.2f} s, cloc {whole_s:.2f} s (directory), {same_s:.2f} s (same files)")

    print_table(ours, theirs, "Same files (counting rules only):")
    print_table(ours, cloc_by_language(whole), "cloc on the whole directory (its own file selection):")

    if args.worst:
        rows = []
        for f in inv.files:
            if f.language != args.language or f.path not in their_files:
                continue
            _, code, comment, blank = their_files[f.path]
            rows.append((abs(f.code - code), f.path, f.code, code, f.comment, comment, f.blank, blank))
        rows.sort(reverse=True)
        print(f"\n{args.language} files differing most in code lines (ours/cloc):")
        for _, path, oc, tc, om, tm, ob, tb in rows[: args.worst]:
            print(f"  code {oc:>6}/{tc:<6} comment {om:>5}/{tm:<5} blank {ob:>5}/{tb:<5} {path}")
        missing = sorted({f.path for f in inv.files} - set(their_files))
        if missing:
            print(f"\n{len(missing)} of our files cloc did not count, e.g. {missing[:5]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
