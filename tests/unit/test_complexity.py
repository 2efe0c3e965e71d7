"""Complexity metrics per language, on snippets whose figures were counted by hand (see the comments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.analysis.engine.complexity import ComplexityResult, FunctionMetrics, complexity, measure_file
from services.analysis.engine.inventory import Cancelled

# (language, file name, source, [(name, start, end, cyclomatic, parameters, max nesting), ...])
CASES: list[tuple[str, str, str, list[tuple[str, int, int, int, int, int]]]] = [
    (
        "Python",
        "a.py",
        """\
class A:
    def m(self, a, *, b=1):
        if a and b:
            for x in a:
                if x:
                    pass
        elif b:
            pass
        return [y for y in a if y] if a else None

def outer(x):
    def inner(y):
        while y or x:
            y -= 1
    f = lambda z: z if z else 0
    try:
        match x:
            case 1:
                pass
            case _:
                pass
    except ValueError:
        pass
""",
        [
            ("A.m", 2, 9, 9, 3, 3),
            ("outer", 11, 23, 3, 1, 2),
            ("outer.inner", 12, 14, 3, 1, 1),
            ("outer.f", 15, 15, 2, 1, 0),
        ],
    ),
    (
        "JavaScript",
        "a.js",
        """\
class Shop {
  total(items, tax) {
    let sum = 0;
    for (const it of items) {
      if (it.price > 0 && !it.free) {
        sum += it.price;
      } else if (it.gift) {
        sum += 1;
      }
    }
    return tax ? sum * tax : sum;
  }
}
const pick = (a) => a || 0;
function kind(x) {
  switch (x) {
    case 1: return "one";
    case 2: return "two";
    default: return "many";
  }
}
""",
        [
            ("Shop.total", 2, 12, 6, 2, 2),
            ("pick", 14, 14, 2, 1, 0),
            ("kind", 15, 21, 3, 1, 1),
        ],
    ),
    (
        "TypeScript",
        "a.ts",
        """\
class Shop {
  total(items: number[], tax?: number): number {
    let sum = 0;
    for (const it of items) {
      if (it.price > 0 && !it.free) {
        sum += it.price;
      } else if (it.gift) {
        sum += 1;
      }
    }
    return tax ? sum * tax : sum;
  }
}
const pick = (a) => a || 0;
function kind(x) {
  switch (x) {
    case 1: return "one";
    case 2: return "two";
    default: return "many";
  }
}
""",
        [
            ("Shop.total", 2, 12, 6, 2, 2),
            ("pick", 14, 14, 2, 1, 0),
            ("kind", 15, 21, 3, 1, 1),
        ],
    ),
    (
        "TypeScript",
        "a.tsx",
        """\
function View(props: { n: number }) {
  return props.n > 1 ? <b>{props.n}</b> : <i>none</i>;
}
""",
        [
            ("View", 1, 3, 2, 1, 0),
        ],
    ),
    (
        "Go",
        "a.go",
        """\
package shop

func (s *Shop) Total(items []int, a, b int) int {
	sum := 0
	for _, it := range items {
		if it > 0 && it < 10 {
			sum += it
		} else if it == 0 {
			sum--
		}
	}
	f := func() int { return 1 }
	switch sum {
	case 1, 2:
		return f()
	default:
		return 0
	}
}
""",
        [
            ("Shop.Total", 3, 19, 6, 3, 2),
            ("Shop.Total.(anonymous)", 12, 12, 1, 0, 0),
        ],
    ),
    (
        "Java",
        "A.java",
        """\
class A {
    int f(int a, int b) {
        try {
            while (a > 0 || b > 0) {
                a--;
            }
        } catch (RuntimeException e) {
            return a > 0 ? 1 : 0;
        }
        switch (a) {
            case 1: return 1;
            case 2: case 3: return 2;
            default: return 0;
        }
    }
    abstract void g();
}
""",
        [
            ("A.f", 2, 15, 8, 2, 2),
        ],
    ),
    (
        "C",
        "a.c",
        """\
static int count(const char *s, int n)
{
    int c = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] == 'a' || s[i] == 'b') {
            c++;
        }
    }
    do { c--; } while (c > 10);
    return c;
}

int main(void) { return count("ab", 2) ? 0 : 1; }
""",
        [
            ("count", 1, 11, 5, 2, 2),
            ("main", 13, 13, 2, 0, 0),
        ],
    ),
    (
        "C++",
        "a.cpp",
        """\
class Box {
public:
    int size(int a) const {
        auto twice = [](int x) { return x > 0 ? 2 * x : 0; };
        for (int v : items) {
            if (v) { return twice(v); }
        }
        return 0;
    }
};

int Box2::get(int a, int b) {
    try {
        if (a && b) return 1;
    } catch (...) {
        return 0;
    }
    return 2;
}
""",
        [
            ("Box.size", 3, 9, 3, 1, 2),
            ("Box.size.(anonymous)", 4, 4, 2, 1, 0),
            ("Box2::get", 12, 19, 4, 2, 2),
        ],
    ),
    (
        "Rust",
        "a.rs",
        """\
impl Shop {
    fn total(&self, items: &[i32]) -> i32 {
        let mut sum = 0;
        for it in items {
            if *it > 0 && *it < 10 {
                sum += it;
            } else if *it == 0 {
                sum -= 1;
            }
        }
        let f = |x: i32| x + 1;
        match sum {
            1 => f(1),
            2 | 3 => 2,
            _ => 0,
        }
    }
}
""",
        [
            ("Shop.total", 2, 17, 7, 2, 2),
            ("Shop.total.f", 11, 11, 1, 1, 0),
        ],
    ),
    (
        "Ruby",
        "a.rb",
        """\
class Shop
  def total(items, tax = nil)
    sum = 0
    items.each do |it|
      if it > 0 and it < 10
        sum += it
      elsif it == 0
        sum -= 1
      end
    end
    sum += 1 unless tax
    tax ? sum * tax : sum
  end

  def self.kind(x)
    case x
    when 1 then "one"
    when 2, 3 then "few"
    else "many"
    end
  end
end
""",
        [
            ("Shop.total", 2, 13, 6, 2, 1),
            ("Shop.kind", 15, 21, 3, 1, 1),
        ],
    ),
    (
        "PHP",
        "a.php",
        """\
<?php
class Shop {
    public function total(array $items, $tax = null) {
        $sum = 0;
        foreach ($items as $it) {
            if ($it > 0 && $it < 10) {
                $sum += $it;
            } elseif ($it == 0) {
                $sum -= 1;
            }
        }
        $f = fn($x) => $x ?: 1;
        return $tax ? $sum * $tax : $sum;
    }
}
function kind($x) {
    return match ($x) { 1 => "one", 2 => "two", default => "many" };
}
""",
        [
            ("Shop.total", 3, 14, 6, 2, 2),
            ("Shop.total.$f", 12, 12, 2, 1, 0),
            ("kind", 16, 18, 3, 1, 1),
        ],
    ),
    (
        "C#",
        "a.cs",
        """\
class Shop {
    public int Total(int[] items, int tax) {
        int sum = 0;
        foreach (var it in items) {
            if (it > 0 && it < 10) {
                sum += it;
            } else if (it == 0) {
                sum -= 1;
            }
        }
        Func<int, int> f = x => x + 1;
        return tax > 0 ? sum * tax : sum;
    }
    string Kind(int x) => x switch { 1 => "one", 2 => "two", _ => "many" };
}
""",
        [
            ("Shop.Total", 2, 13, 6, 2, 2),
            ("Shop.Total.f", 11, 11, 1, 1, 0),
            ("Shop.Kind", 14, 14, 3, 1, 1),
        ],
    ),
]

# The hand counts, decision points in brackets:
# Python A.m: if, and, for, if, elif, comprehension for, comprehension if, conditional -> 9; nesting if>for>if.
#   outer: match case 1 (not `case _`), except -> 3; nesting try>match; inner and the lambda are measured apart.
# JS/TS total: for-of, if, &&, else if, ?: -> 6; nesting for>if (`else if` adds no level). kind: 2 cases -> 3.
# Go Total: for, if, &&, else if, one case -> 6; `a, b int` is two parameters. Java f: while, ||, catch, ?:,
#   3 case labels -> 8; the abstract g is not measured. C count: for, if, ||, do -> 5; main(void) has no
#   parameters. C++ size: range for, if -> 3; get: if, &&, catch -> 4. Rust total: for, if, &&, else if, two arms
#   besides `_` -> 7. Ruby total: if, and, elsif, unless modifier, ?: -> 6; the block adds no nesting. PHP total:
#   foreach, if, &&, elseif, ?: -> 6; kind: 2 arms besides default -> 3. C# Total: foreach, if, &&, else if, ?: -> 6;
#   Kind: 2 arms besides `_` -> 3.


@pytest.mark.parametrize(("language", "name", "source", "expected"), CASES, ids=[c[1] for c in CASES])
def test_language(language: str, name: str, source: str, expected: list[tuple[str, int, int, int, int, int]]) -> None:
    functions = measure_file(name, source.encode(), language)
    got = [(f.name, f.start_line, f.end_line, f.cyclomatic, f.parameters, f.max_nesting) for f in functions]
    assert got == expected
    for f in functions:
        assert f.path == name
        assert f.length == f.end_line - f.start_line + 1


def test_all_eleven_languages_covered() -> None:
    assert {c[0] for c in CASES} == {
        "Python",
        "JavaScript",
        "TypeScript",
        "Go",
        "Java",
        "C",
        "C++",
        "Rust",
        "Ruby",
        "PHP",
        "C#",
    }


def test_nested_functions_do_not_add_to_their_parent() -> None:
    source = b"""\
def outer(a):
    def inner(b):
        if b:
            if a:
                return 1
        return 0
    return inner(a)
"""
    outer, inner = measure_file("n.py", source, "Python")
    assert (outer.name, outer.cyclomatic, outer.max_nesting, outer.length) == ("outer", 1, 0, 7)
    assert (inner.name, inner.cyclomatic, inner.max_nesting, inner.start_line, inner.end_line) == (
        "outer.inner",
        3,
        2,
        2,
        6,
    )


def test_syntax_error_is_measured_not_raised() -> None:
    source = b"def ok(a):\n    if a:\n        return 1\n\ndef broken(:\n    while True\n        pass\n"
    functions = measure_file("bad.py", source, "Python")
    assert functions[0] == FunctionMetrics("ok", "bad.py", 1, 3, 2, 3, 1, 1)
    # Garbage, empty and binary input never raise.
    assert isinstance(measure_file("x.c", b"\x00\xff{{{{ ))) int f(", "C"), list)
    assert measure_file("x.go", b"", "Go") == []
    assert measure_file("x.txt", b"hello", "Text") == []


def test_complexity_walks_files_and_skips(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_bytes(b"def f(x):\n    return x or 1\n")
    (tmp_path / "big.js").write_bytes(b"function g() {}\n" * 100)
    (tmp_path / "README.md").write_bytes(b"# hi\n")
    files = [("pkg/a.py", "Python"), ("big.js", "JavaScript"), ("README.md", "Markdown"), ("gone.go", "Go")]
    result = complexity(tmp_path, files, max_file_bytes=1000)
    assert isinstance(result, ComplexityResult)
    assert result.files_parsed == 1
    assert result.skipped == {"too_large": 1, "unsupported": 1, "unreadable": 1}
    assert result.to_dict() == {
        "functions": [
            {
                "name": "f",
                "path": "pkg/a.py",
                "start_line": 1,
                "end_line": 2,
                "cyclomatic": 2,
                "length": 2,
                "parameters": 1,
                "max_nesting": 0,
            }
        ],
        "files_parsed": 1,
        "skipped": {"too_large": 1, "unsupported": 1, "unreadable": 1},
    }


def test_cancellation_between_files(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"m{i}.py").write_bytes(b"def f():\n    pass\n")
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Cancelled):
        complexity(tmp_path, [(f"m{i}.py", "Python") for i in range(3)], should_stop=should_stop)
    assert len(asked) == 3
