"""Compare the complexity step with lizard on one tree: `python bench/complexity_accuracy.py PATH [--show N]`.

Both measure the same files (those the inventory assigns to a language both support). Functions are matched by
file and start line; the script prints, per language and in total, both function counts, how many matched, and
the share of matched functions with equal cyclomatic complexity, then up to N mismatches of each kind to read.
Its last line is `function_ratio=<ours/lizard> cyclomatic_equal=<share of matched>`.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import lizard

from services.analysis.engine.complexity import complexity
from services.analysis.engine.inventory import inventory

# Languages lizard reads, by the inventory's language names.
COMPARED = {"Python", "JavaScript", "TypeScript", "Go", "Java", "C", "C++", "Rust", "Ruby", "PHP", "C#"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--show", type=int, default=10, help="mismatches of each kind to print")
    args = parser.parse_args()
    root: Path = args.path.resolve()

    files = [(f.path, f.language) for f in inventory(root, should_stop=lambda: False).files if f.language in COMPARED]
    language_of = dict(files)
    ours = {(f.path, f.start_line): f for f in complexity(root, files).functions}
    theirs = {}
    for path, _ in files:
        for function in lizard.analyze_file(str(root / path)).function_list:
            theirs[(path, function.start_line)] = function

    totals: dict[str, Counter[str]] = defaultdict(Counter)
    for key in ours:
        totals[language_of[key[0]]]["ours"] += 1
    for key in theirs:
        totals[language_of[key[0]]]["lizard"] += 1
    differing = []
    for key in ours.keys() & theirs.keys():
        counts = totals[language_of[key[0]]]
        counts["matched"] += 1
        if ours[key].cyclomatic == theirs[key].cyclomatic_complexity:
            counts["equal"] += 1
        else:
            differing.append(key)

    print(f"{'language':<12}{'ours':>9}{'lizard':>9}{'matched':>9}{'cc equal':>10}")
    grand: Counter[str] = Counter()
    for language, counts in sorted(totals.items()):
        grand.update(counts)
        share = counts["equal"] / counts["matched"] if counts["matched"] else 0.0
        print(f"{language:<12}{counts['ours']:>9}{counts['lizard']:>9}{counts['matched']:>9}{share:>10.1%}")
    share = grand["equal"] / grand["matched"] if grand["matched"] else 0.0
    print(f"{'total':<12}{grand['ours']:>9}{grand['lizard']:>9}{grand['matched']:>9}{share:>10.1%}")

    for key in sorted(differing)[: args.show]:
        print(
            f"cc differs  {key[0]}:{key[1]} {ours[key].name}: ours {ours[key].cyclomatic}, lizard "
            f"{theirs[key].cyclomatic_complexity}"
        )
    for key in sorted(ours.keys() - theirs.keys())[: args.show]:
        print(f"ours only   {key[0]}:{key[1]} {ours[key].name}")
    for key in sorted(theirs.keys() - ours.keys())[: args.show]:
        print(f"lizard only {key[0]}:{key[1]} {theirs[key].name}")
    ratio = grand["ours"] / grand["lizard"] if grand["lizard"] else 0.0
    print(f"function_ratio={ratio:.3f} cyclomatic_equal={share:.3f}")


if __name__ == "__main__":
    main()
