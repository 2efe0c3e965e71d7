"""The inventory step on real files: languages, line counts, skip rules, cancellation, progress and the report."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from services.analysis.engine.complexity import SUPPORTED_LANGUAGES
from services.analysis.engine.inventory import (
    Cancelled,
    FileStats,
    Inventory,
    LanguageStats,
    count_lines,
    inventory,
    read,
)
from services.analysis.engine.languages import BY_EXTENSION, by_path_name, by_shebang
from services.analysis.engine.scan import scan_files

# (file name, content, language, code, comment, blank): every count planted and checked line by line in the
# comments beside each sample.
SAMPLES: list[tuple[str, str, str, int, int, int]] = [
    (
        "app.py",
        "#!/usr/bin/env python3\n"  # code: a shebang is a directive
        '"""Module docstring.\n'  # comment
        "\n"  # blank, inside the docstring
        "More text.\n"  # comment
        '"""\n'  # comment
        "\n"  # blank
        "import os  # trailing comment\n"  # code
        "\n"  # blank
        'URL = "http://example.com/#anchor"  # a hash in a string\n'  # code
        "PATTERN = '/* not a comment */'\n"  # code
        'TEMPLATE = """\n'  # code: a string in an assignment is code
        "# not a comment: inside a string\n"  # code
        '"""\n'  # code
        "\n"  # blank
        "\n"  # blank
        "def f(x):\n"  # code
        "    '''One-line docstring.'''\n"  # comment
        "    # a comment\n"  # comment
        "    return x  # trailing\n"  # code
        "\n"  # blank
        "\n"  # blank
        "class C:\n"  # code
        '    "Single-quoted docstring."\n'  # comment
        "\n"  # blank
        "    value = (\n"  # code
        '        "implicit "\n'  # code: inside brackets, not a statement
        '        "concatenation"\n'  # code
        "    )\n",  # code
        "Python",
        14,
        6,
        8,
    ),
    (
        "app.js",
        "// line comment\n"  # comment
        "/* block\n"  # comment
        "   comment */\n"  # comment
        'const url = "http://example.com"; // trailing\n'  # code
        "const glob = '**/*.js'; /* trailing block */\n"  # code
        "const re = /\\/*[a-z]+/g;\n"  # code: a regex literal, not a comment
        "const t = `multi\n"  # code
        "line // not a comment\n"  # code: in the template
        "${inner(`/*`)} end`;\n"  # code: a template nested in an interpolation opens no comment
        "const after = 1;\n"  # code
        "\n"  # blank
        "/**\n"  # comment
        " * JSDoc\n"  # comment
        " */\n"  # comment
        "function f(a, b) { return a / b; } // a division, not a regex\n",  # code
        "JavaScript",
        8,
        6,
        1,
    ),
    (
        "component.tsx",
        'import React from "react";\n'  # code
        "\n"  # blank
        "// Props of the component.\n"  # comment
        "interface Props {\n"  # code
        "  name: string; /* inline block */\n"  # code
        "}\n"  # code
        "\n"  # blank
        "export const Hello = ({ name }: Props) => (\n"  # code
        '  <div className="greeting">Hello, {name}! It\'s here.</div>\n'  # code: a stray quote in JSX text
        ");\n",  # code
        "TypeScript",
        7,
        1,
        2,
    ),
    (
        "main.go",
        "package main\n"  # code
        "\n"  # blank
        'import "fmt"\n'  # code
        "\n"  # blank
        "/*\n"  # comment
        "Package doc in a block comment.\n"  # comment
        "*/\n"  # comment
        "\n"  # blank
        "// main prints a raw string.\n"  # comment
        "func main() {\n"  # code
        "\ts := `raw // not a comment\n"  # code
        "/* still a string */`\n"  # code
        '\tfmt.Println(s, "/*", \'"\') // trailing\n'  # code
        "}\n",  # code
        "Go",
        7,
        4,
        3,
    ),
    (
        "Main.java",
        "/**\n"  # comment
        " * Javadoc.\n"  # comment
        " */\n"  # comment
        "public class Main {\n"  # code
        '    // A comment with "quotes"\n'  # comment
        '    private static final String S = "/* not a comment */";\n'  # code
        "    private static final char C = '\"';\n"  # code
        '    private static final String BLOCK = """\n'  # code
        "        text block // not a comment\n"  # code
        '        """;\n'  # code
        "\n"  # blank
        "    public static void main(String[] args) { /* inline */ }\n"  # code
        "}\n",  # code
        "Java",
        8,
        4,
        1,
    ),
    (
        "util.c",
        "#include <stdio.h>  /* trailing */\n"  # code
        "\n"  # blank
        "// C99 comment\n"  # comment
        'static const char *s = "// not a comment";\n'  # code
        "static const char c = '\\'';\n"  # code: an escaped quote in a character literal
        "\n"  # blank
        "/* multi\n"  # comment
        " * line\n"  # comment
        " */\n"  # comment
        "int add(int a, int b) {\n"  # code
        "    return a + b; // trailing\n"  # code
        "}\n",  # code
        "C",
        6,
        4,
        2,
    ),
    (
        "util.h",
        "#ifndef UTIL_H\n#define UTIL_H\n/* Adds two ints. */\nint add(int a, int b);\n#endif\n",
        "C",  # .h is C
        4,
        1,
        0,
    ),
    (
        "lib.cpp",
        "#include <string>\n"  # code
        "\n"  # blank
        "// raw string with comment markers\n"  # comment
        'const char* raw = R"x(\n'  # code
        "/* not a comment */ // nor this\n"  # code
        ')x";\n'  # code
        "\n"  # blank
        "int main() { return 0; } /* trailing */\n",  # code
        "C++",
        5,
        1,
        2,
    ),
    ("lib.hpp", "#pragma once\n// Declares f.\nint f();\n", "C++", 2, 1, 0),
    (
        "Program.cs",
        "using System;\n"  # code
        "\n"  # blank
        "/// <summary>XML doc comment.</summary>\n"  # comment
        "class Program\n"  # code
        "{\n"  # code
        '    static string Path = @"C:\\temp\\"; // a verbatim string: no escapes\n'  # code
        '    static string Multi = @"line one\n'  # code
        "// not a comment\n"  # code
        '""quoted""";\n'  # code
        "\n"  # blank
        "    static void Main() { }\n"  # code
        "}\n",  # code
        "C#",
        9,
        1,
        2,
    ),
    (
        "lib.rs",
        "//! Crate docs.\n"  # comment
        "\n"  # blank
        "/* outer /* nested */ still comment */\n"  # comment
        "fn main() {\n"  # code
        '    let s = r#"raw "string" // not a comment"#;\n'  # code
        "    let c = '\"';\n"  # code
        '    let lifetime: &\'static str = "x"; // trailing\n'  # code
        "}\n",  # code
        "Rust",
        5,
        2,
        1,
    ),
    (
        "app.rb",
        "# frozen_string_literal: true\n"  # comment
        "\n"  # blank
        "=begin\n"  # comment
        "Block comment.\n"  # comment
        "=end\n"  # comment
        "def greet(name)\n"  # code
        '  "Hello #{name.upcase + "!"} # not a comment" # trailing\n'  # code
        "end\n"  # code
        'puts "#{\'"\'}"\n'  # code: the quotes nested in the interpolation open no string
        "# a comment\n",  # comment
        "Ruby",
        4,
        5,
        1,
    ),
    (
        "index.php",
        "<?php\n"  # code
        "// line comment\n"  # comment
        "# hash comment\n"  # comment
        "/* block */\n"  # comment
        "#[Attribute]\n"  # code: an attribute, not a comment
        "class A {}\n"  # code
        '$s = "# not a comment // either";\n'  # code
        "echo $s; // trailing\n",  # code
        "PHP",
        5,
        3,
        0,
    ),
    (
        "run.sh",
        "#!/bin/sh\n"  # code
        "# comment\n"  # comment
        "set -e\n"  # code
        "\n"  # blank
        "echo \"# not a comment\" '# nor this' # trailing\n"  # code
        "echo $# ${#var} a#b\n"  # code: no comment starts inside a word
        "echo a#'\n"  # code: so this quote opens a string
        "# inside the string, not a comment\n"  # code
        "'\n",  # code
        "Shell",
        7,
        1,
        1,
    ),
    (
        "index.html",
        "<!DOCTYPE html>\n"  # code
        "<!-- a comment -->\n"  # comment
        "<html>\n"  # code
        "<!--\n"  # comment
        "  multi-line comment\n"  # comment
        "-->\n"  # comment
        "<body><p>Text</p><!-- trailing --></body>\n"  # code
        "</html>\n",  # code
        "HTML",
        4,
        4,
        0,
    ),
    (
        "style.css",
        "/* header comment */\n"  # comment
        "body {\n"  # code
        '  background: url("data:image/png;base64,/*notacomment*/");\n'  # code
        "  color: red; /* trailing */\n"  # code
        "}\n"  # code
        "\n"  # blank
        "/*\n"  # comment
        " multi\n"  # comment
        "*/\n",  # comment
        "CSS",
        4,
        4,
        1,
    ),
    (
        "schema.sql",
        "-- a comment\n"  # comment
        "CREATE TABLE t (\n"  # code
        "  id INT, -- trailing\n"  # code
        "  note TEXT DEFAULT '-- not a comment'\n"  # code
        ");\n"  # code
        "/* block\n"  # comment
        "   comment */\n",  # comment
        "SQL",
        4,
        3,
        0,
    ),
    (
        "config.yaml",
        "# comment\n"  # comment
        "key: value # trailing\n"  # code
        'url: "http://x/#frag"\n'  # code
        "tag: a#b\n"  # code
        "\n"  # blank
        "list:\n"  # code
        "  - item\n",  # code
        "YAML",
        5,
        1,
        1,
    ),
    ("data.json", '{\n  "a": "// not a comment",\n\n  "b": [1, 2]\n}\n', "JSON", 4, 0, 1),
    (
        "README.md",
        "# Title\n"  # code: a heading, not a comment
        "\n"  # blank
        "Some *text* with `code`.\n"  # code
        "\n"  # blank
        "- item\n"  # code
        "<!-- a hidden note -->\n",  # comment, as cloc counts it
        "Markdown",
        3,
        1,
        2,
    ),
    ("Makefile", "# comment\nall: build  # trailing\n\nbuild:\n\techo done\n", "Makefile", 3, 1, 1),
    ("Dockerfile", "# comment\nFROM python:3.11\nRUN echo a#b # not a comment here\n", "Dockerfile", 2, 1, 0),
    (
        "Main.kt",
        "// comment\n"  # comment
        'val s = "${f("/*")} // not a comment"\n'  # code: a string nested in an interpolation
        "val t = 1\n"  # code
        "/* outer /* nested */ */\n",  # comment
        "Kotlin",
        2,
        2,
        0,
    ),
    ("main.swift", '// comment\nlet s = "\\(f("/*")) // not a comment"\nlet t = 1\n', "Swift", 2, 1, 0),
    (
        "init.lua",
        "-- comment\n"  # comment
        "--[==[\n"  # comment
        "long ]] comment\n"  # comment
        "]==]\n"  # comment
        'local s = [[ -- not a comment ]] .. "--"\n',  # code
        "Lua",
        1,
        4,
        0,
    ),
    (
        "CMakeLists.txt",
        "#[==[ bracket\ncomment ]] still ]==]\nproject(x)  # trailing\n",
        "CMake",
        1,
        2,
        0,
    ),
    (
        "tool.pl",
        "use strict;\n"  # code
        "=pod\n"  # comment
        "Docs.\n"  # comment
        "=cut\n"  # comment
        "print 1; # trailing\n"  # code
        "__END__\n"  # comment
        "anything\n",  # comment
        "Perl",
        2,
        5,
        0,
    ),
    ("notes.txt", "Plain text.\n\n  \nMore # text.\n", "Text", 2, 0, 2),
]


def _write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def _by_path(inv: Inventory) -> dict[str, FileStats]:
    return {f.path: f for f in inv.files}


@pytest.mark.parametrize(
    ("name", "content", "language", "code", "comment", "blank"), SAMPLES, ids=[s[0] for s in SAMPLES]
)
def test_counts_per_language(
    tmp_path: Path, name: str, content: str, language: str, code: int, comment: int, blank: int
) -> None:
    _write(tmp_path, name, content)
    inv = inventory(tmp_path)
    assert inv.skipped == {}
    assert inv.files == [FileStats(name, language, code, comment, blank, len(content.encode()))]
    assert inv.languages == {language: LanguageStats(1, code, comment, blank)}
    assert inv.totals == LanguageStats(1, code, comment, blank)
    if language in SUPPORTED_LANGUAGES:
        # The engine counts the files it parses from the parser's comment nodes: the same answers.
        data = content.encode()
        part = scan_files(str(tmp_path), [(name, by_path_name(name), len(data), True, False)], 15)
        assert part.measured.files_parsed == 1
        assert part.counted == inv.files


def test_required_languages_are_known() -> None:
    required = {
        ".py": "Python",
        ".js": "JavaScript",
        ".ts": "TypeScript",
        ".tsx": "TypeScript",
        ".go": "Go",
        ".java": "Java",
        ".c": "C",
        ".h": "C",
        ".cpp": "C++",
        ".hpp": "C++",
        ".cs": "C#",
        ".rs": "Rust",
        ".rb": "Ruby",
        ".php": "PHP",
        ".sh": "Shell",
        ".html": "HTML",
        ".css": "CSS",
        ".sql": "SQL",
        ".yaml": "YAML",
        ".yml": "YAML",
        ".json": "JSON",
        ".md": "Markdown",
    }
    assert {ext: BY_EXTENSION[ext].name for ext in required} == required
    names = {name: getattr(by_path_name(name), "name", None) for name in ("Makefile", "Dockerfile", "Dockerfile.dev")}
    assert names == {"Makefile": "Makefile", "Dockerfile": "Dockerfile", "Dockerfile.dev": "Dockerfile"}
    assert getattr(by_shebang(b"#!/usr/bin/env -S python3 -u"), "name", None) == "Python"
    assert by_shebang(b"#!/opt/unknown-interpreter") is None


def test_crlf_line_ends_bom_and_missing_final_newline(tmp_path: Path) -> None:
    _write(tmp_path, "crlf.py", b'\xef\xbb\xbf# comment\r\nx = 1\r\n\r\n"""doc\r\n"""\r\ny = 2')
    (stats,) = inventory(tmp_path).files
    assert (stats.code, stats.comment, stats.blank) == (2, 3, 1)


def test_shebang_gives_the_language_of_extensionless_scripts(tmp_path: Path) -> None:
    tool = "#!/usr/bin/env bash\n# comment\necho hi\n"
    _write(tmp_path, "bin/tool", tool)
    _write(tmp_path, "bin/manage", "#!/usr/bin/python3\nimport sys\n")
    _write(tmp_path, "LICENSE", "Permission is hereby granted\n")
    inv = inventory(tmp_path)
    files = _by_path(inv)
    assert files["bin/tool"] == FileStats("bin/tool", "Shell", 2, 1, 0, len(tool))
    assert files["bin/manage"].language == "Python"
    assert inv.skipped == {"unknown_language": 1}


def test_skip_rules(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path / "repo"
    _write(root, "src/app.py", "x = 1\n")
    # Excluded directories: counted once each, their contents never read.
    for rel in (
        "node_modules/pkg/index.js",
        "vendor/lib.go",
        "third_party/x/y.c",
        ".venv/lib/site.py",
        "src/__pycache__/app.py",
        "build/out.js",
        "dist/out.js",
        "pkg.egg-info/top.py",
        "cache/anything.py",
        "myenv/lib.py",
    ):
        _write(root, rel, "x = 1\n")
    _write(root, "cache/CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n")
    _write(root, "myenv/pyvenv.cfg", "home = /usr/bin\n")
    # Version control metadata: not counted at all.
    _write(root, ".git/config", "[core]\n")
    _write(root, ".git/hooks/pre-commit.sh", "#!/bin/sh\n")
    # Minified: by name and by line length.
    _write(root, "static/app.min.js", "var a=1;\n")
    _write(root, "static/bundle.js", "var a=1;" * 300 + "\n")  # 2,401 bytes on one line
    # Generated: by name and by a header.
    _write(root, "api/service_pb2.py", "x = 1\n")
    _write(root, "package-lock.json", "{}\n")
    _write(root, "gen/types.go", "// Code generated by protoc-gen-go. DO NOT EDIT.\npackage gen\n")
    _write(root, "gen/model.py", "# Copyright\n#\n# This file was automatically generated; do not edit\nx = 1\n")
    # Unknown, binary, too large, empty.
    _write(root, "logo.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    _write(root, "blob.c", b"int x;\n\x00\x01\x02\n")
    _write(root, "big.py", "x = 1\n" * 600)  # 3,600 bytes
    _write(root, "empty.py", b"")
    # Symbolic links, to a file and a directory outside the root: never followed.
    outside = tmp_path_factory.mktemp("outside")
    _write(outside, "secret.py", "password = 'x'\n")
    (root / "link.py").symlink_to(outside / "secret.py")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "src" / "inner_link.py").symlink_to(root / "src" / "app.py")

    inv = inventory(root, max_file_bytes=3000)

    assert [f.path for f in inv.files] == ["src/app.py"]
    assert inv.skipped == {
        "binary": 1,
        "empty": 1,
        "excluded_dir": 10,
        "generated": 4,
        "minified": 2,
        "symlink": 3,
        "too_large": 1,
        "unknown_language": 1,
    }


def test_a_file_just_at_the_size_limit_is_counted(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", "x = 1\n" * 10)  # 60 bytes
    assert len(inventory(tmp_path, max_file_bytes=60).files) == 1
    assert inventory(tmp_path, max_file_bytes=59).skipped == {"too_large": 1}


def test_should_stop_cancels(tmp_path: Path) -> None:
    for i in range(50):
        _write(tmp_path, f"pkg{i % 5}/m{i}.py", "x = 1\n")
    with pytest.raises(Cancelled):
        inventory(tmp_path, should_stop=lambda: True)

    calls = 0

    def stop_on_the_tenth_call() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 10

    with pytest.raises(Cancelled):
        inventory(tmp_path, should_stop=stop_on_the_tenth_call)
    assert calls == 10  # it gave up at once


def test_progress_is_reported_from_zero_to_total(tmp_path: Path) -> None:
    for i in range(7):
        _write(tmp_path, f"m{i}.py", "x = 1\n")
    _write(tmp_path, "image.png", b"\x89PNG")
    seen: list[tuple[int, int]] = []
    inventory(tmp_path, on_progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 7)
    assert seen[-1] == (7, 7)
    assert all(0 <= done <= total == 7 for done, total in seen)


def test_not_a_directory(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.py", "x = 1\n")
    with pytest.raises(NotADirectoryError):
        inventory(path)


def test_totals_order_and_to_dict(tmp_path: Path) -> None:
    _write(tmp_path, "b/app.py", "# comment\nx = 1\n\ny = 2\n")
    _write(tmp_path, "a/app.py", "z = 3\n")
    _write(tmp_path, "web/app.js", "// c\nlet a = 1;\n")
    _write(tmp_path, "web/logo.png", b"\x89PNG")
    inv = inventory(tmp_path)

    assert [f.path for f in inv.files] == ["a/app.py", "b/app.py", "web/app.js"]
    assert list(inv.languages) == ["Python", "JavaScript"]  # most code first
    assert inv.totals == LanguageStats(files=3, code=4, comment=2, blank=1)
    assert inv.totals.lines == 7

    report = inv.to_dict()
    assert json.loads(json.dumps(report)) == report
    assert report == {
        "files": [
            {"path": "a/app.py", "language": "Python", "code": 1, "comment": 0, "blank": 0, "bytes": 6},
            {"path": "b/app.py", "language": "Python", "code": 2, "comment": 1, "blank": 1, "bytes": 23},
            {"path": "web/app.js", "language": "JavaScript", "code": 1, "comment": 1, "blank": 0, "bytes": 16},
        ],
        "languages": {
            "Python": {"files": 2, "code": 3, "comment": 1, "blank": 1},
            "JavaScript": {"files": 1, "code": 1, "comment": 1, "blank": 0},
        },
        "totals": {"files": 3, "code": 4, "comment": 2, "blank": 1},
        "skipped": {"unknown_language": 1},
    }


def test_fifos_and_other_special_files_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path, "a.py", "x = 1\n")
    os.mkfifo(tmp_path / "pipe.py")  # reading it would block
    inv = inventory(tmp_path)
    assert [f.path for f in inv.files] == ["a.py"]
    assert inv.skipped == {"not_regular": 1}


# Edge cases for both counting paths: (file name, content, code, comment, blank).
EDGES: list[tuple[str, bytes, int, int, int]] = [
    ("crlf.py", b'\xef\xbb\xbf# comment\r\nx = 1\r\n\r\n"""doc\r\n"""\r\ny = 2', 2, 3, 1),
    ("last.py", b"x = 1\n# a comment on the last line, no newline after it", 1, 1, 0),
    ("blank_end.c", b"int x;\n/* a\n\n   b */\n   ", 1, 2, 2),
    ("script.py", b"#!/usr/bin/env python3\n# comment\nx = 1\n", 2, 1, 0),
    ("attr.rs", b"#![allow(dead_code)]\n// comment\nfn f() {}\n", 2, 1, 0),
    ("empty_lines.go", b"\n\n\npackage a\n\n", 1, 0, 4),
    ("only_comment.c", b"/* all there is, and no newline */", 0, 1, 0),
    ("docs.rs", b"//! Crate docs\n\n/// f's docs\n/// more\nfn f() {} // trailing\n", 1, 3, 1),
    ("runs.c", b"int a; /* x */ /* y */\n/* x */ /* y */\n  /* a\n\n b */ int b;\n", 2, 2, 1),
    ("only_blank.js", b"  \n\t", 0, 0, 2),
]


@pytest.mark.parametrize(("name", "content", "code", "comment", "blank"), EDGES, ids=[e[0] for e in EDGES])
def test_edge_cases_counted_alike_by_both_paths(
    tmp_path: Path, name: str, content: bytes, code: int, comment: int, blank: int
) -> None:
    _write(tmp_path, name, content)
    (stats,) = inventory(tmp_path).files
    assert (stats.code, stats.comment, stats.blank) == (code, comment, blank)
    part = scan_files(str(tmp_path), [(name, by_path_name(name), len(content), True, False)], 15)
    assert part.measured.files_parsed == 1
    assert part.counted == [stats]


@pytest.mark.parametrize("length", [0, 1, 4096, 70_000])
def test_read_gives_the_bytes_whatever_the_size_seen_by_the_walk(tmp_path: Path, length: int) -> None:
    path = _write(tmp_path, "f.bin", bytes(range(256)) * (length // 256) + b"x" * (length % 256))
    expected = path.read_bytes()[:60_001]
    # The size seen when walking may be stale: the file may have grown or shrunk since.
    for seen in (None, 0, length, length // 2, length + 100):
        assert read(str(path), 60_000, seen) == expected
    assert read(str(tmp_path / "missing"), 10) == "unreadable"


def test_full_line_comment_languages_count_line_by_line() -> None:
    """Languages whose one comment rule is a full-line pattern are counted by a search over the whole text; on
    random texts it must agree with the rule applied line by line (a first `#!` line being code)."""
    languages = [BY_EXTENSION[ext] for ext in (".bat", ".ini", ".po")] + [by_path_name("Dockerfile")]
    rng = random.Random(5)
    pieces = [
        b"",
        b"  ",
        b"\t",
        b"#",
        b"#,",
        b" # c",
        b";x",
        b"REM x",
        b"rem",
        b"@REM",
        b"::",
        b"x",
        b"#!/bin/sh",
        b"\r",
    ]
    for _ in range(3000):
        lines = [b"".join(rng.choice(pieces) for _ in range(rng.randrange(3))) for _ in range(rng.randrange(8))]
        data = b"\n".join(lines) + rng.choice([b"", b"\n"])
        for language in languages:
            assert language is not None
            assert language.full_line_comment is not None
            rule = re.compile(language.full_line_comment)
            counted = data.split(b"\n")
            if counted and counted[-1] == b"":
                counted.pop()
            blank = sum(1 for line in counted if not line.strip())
            comment = sum(
                1
                for n, line in enumerate(counted)
                if line.strip() and rule.match(line) and not (n == 0 and line.startswith(b"#!"))
            )
            expected = (len(counted) - blank - comment, comment, blank)
            assert count_lines(data, language) == expected, (language.name, data)
