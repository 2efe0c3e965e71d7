"""The language table of the inventory step: how a file is recognised, and how its comments and strings look.

A `Language` says which file names, extensions and shebang interpreters belong to it, and gives the lexical rules
the line counter needs: line comments, block comments (optionally nesting), whole-line comments, blocks that open
and close at column 0 (Ruby's `=begin`/`=end`, Perl's POD), and string literals (so that `"//"` or `'#'` do not
open a comment). Comment and string openers are byte regular expressions (applied to the raw bytes of a line);
block-comment delimiters are literal bytes.

Decisions worth knowing:

* `.h` is C (cloc calls it "C/C++ Header"); `.hpp`, `.hh`, `.hxx`, `.h++`, `.inl`, `.ipp`, `.tpp` are C++.
* Text, Markdown (apart from `<!-- -->`), reStructuredText, JSON and CSV have no comments: every non-blank line is
  code, as cloc counts them.
* Python strings that stand alone as a statement (docstrings, triple-quoted or not, and bare strings used as
  block comments) are comments; strings that are part of an expression (`x = '''...'''`) are code. cloc
  instead counts every triple-quoted string as a comment and every other string as code.
* `kind` sorts languages into programming languages, markup, data and prose, so that a report can, for
  instance, leave prose out of a "lines of code" figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["programming", "markup", "data", "prose"]


@dataclass(frozen=True, slots=True)
class StringRule:
    """A string literal: `opener` finds its start; `body` matches the rest, closing quote included, at the end of
    the opener. `multiline` strings may run over line ends (their `body` is then tried again on each following
    line). When `close_format` is set the closer depends on the opener's `delim` group: `body` is built as
    "anything, lazily, then close_format % delim" (C++ `R"x(...)x"`, Rust `r#"..."#`). `docstring` marks Python's
    strings (a comment when one stands alone as a statement), and `regex_literal` a JavaScript `/.../` literal,
    recognised only where an operand may start. `starts` lists the bytes the opener can begin with when that is
    not its first character (after any leading look-behind): the counter looks for those bytes first.

    An interpolating string (JavaScript's `${...}`, Ruby's `#{...}`, Swift's `\\(...)`) has a `body` that stops
    either at the closing quote or just after `interpolation`; the counter then reads code, tracking the
    `brackets` pair (`{}` or `()`), and goes back into the string at the bracket that closes the interpolation,
    so that strings nested in the interpolated expression (`` `a${f(`b`)}c` ``) are read right.
    """

    opener: bytes
    body: bytes
    multiline: bool = False
    close_format: bytes | None = None
    docstring: bool = False
    regex_literal: bool = False
    starts: bytes = b""
    interpolation: bytes = b""
    brackets: bytes = b""


@dataclass(frozen=True, slots=True)
class Language:
    name: str
    kind: Kind
    extensions: tuple[str, ...] = ()
    filenames: tuple[str, ...] = ()
    interpreters: tuple[str, ...] = ()
    line_comments: tuple[bytes, ...] = ()
    block_comments: tuple[tuple[bytes, bytes], ...] = ()
    nested_blocks: bool = False
    # Block comments whose closer depends on the opener: (opener pattern with a `delim` group, closer format),
    # as in CMake's `#[==[ ... ]==]` (closer b"]%s]").
    delimited_block_comments: tuple[tuple[bytes, bytes], ...] = ()
    strings: tuple[StringRule, ...] = ()
    # A line matching this (at its start) is a comment, whatever follows; nothing else is a comment.
    full_line_comment: bytes | None = None
    # (open, close) patterns matched at column 0: the lines from open to close, both included, are comments.
    line_blocks: tuple[tuple[bytes, bytes], ...] = ()
    # Lower-case name prefixes (`dockerfile.` for `Dockerfile.dev`). File names are matched exactly first, then
    # case-insensitively; extensions always case-insensitively.
    filename_prefixes: tuple[str, ...] = ()

    @property
    def has_comments(self) -> bool:
        return bool(
            self.line_comments
            or self.block_comments
            or self.delimited_block_comments
            or self.full_line_comment
            or self.line_blocks
        )


# --- string rules -----------------------------------------------------------------------------------------------

_DQ_BODY = rb'[^"\\]*(?:\\.[^"\\]*)*"'
_SQ_BODY = rb"[^'\\]*(?:\\.[^'\\]*)*'"

DQ = StringRule(rb'"', _DQ_BODY)
SQ = StringRule(rb"'", _SQ_BODY)
DQ_ML = StringRule(rb'"', _DQ_BODY, multiline=True)
SQ_ML = StringRule(rb"'", _SQ_BODY, multiline=True)
# Single-quoted strings without escapes (shell, Rust-less SQL-style doubling is two adjacent strings).
SQ_RAW_ML = StringRule(rb"'", rb"[^']*'", multiline=True)
# A character literal: one character or one escape sequence, so that Rust lifetimes (`'a`) and C's `'"'` work.
CHAR = StringRule(rb"'", rb"(?:[^'\\]|\\(?:x[0-9a-fA-F]{1,8}|u\{[0-9a-fA-F]{1,6}\}|u[0-9a-fA-F]{4}|[0-7]{1,3}|.))'")
BACKTICK_RAW = StringRule(rb"`", rb"[^`]*`", multiline=True)
JS_TEMPLATE = StringRule(
    rb"`", rb"[^`\\$]*(?:(?:\\.|\$(?!\{))[^`\\$]*)*(?:`|\$\{)", multiline=True, interpolation=b"${", brackets=b"{}"
)
# "...#{expr}...": Ruby.
HASH_INTERPOLATED_DQ_ML = StringRule(
    rb'"', rb'[^"\\#]*(?:(?:\\.|#(?!\{))[^"\\#]*)*(?:"|#\{)', multiline=True, interpolation=b"#{", brackets=b"{}"
)
# "...${expr}...": Kotlin, Groovy, Dart, and their triple-quoted strings.
DOLLAR_INTERPOLATED_DQ = StringRule(
    rb'"', rb'[^"\\$]*(?:(?:\\.|\$(?!\{))[^"\\$]*)*(?:"|\$\{)', interpolation=b"${", brackets=b"{}"
)
DOLLAR_INTERPOLATED_TRIPLE_DQ = StringRule(
    rb'"""',
    rb'[^"\\$]*(?:(?:\\.|"(?!"")|\$(?!\{))[^"\\$]*)*(?:"""|\$\{)',
    multiline=True,
    interpolation=b"${",
    brackets=b"{}",
)
# Swift: "...\(expr)...".
SWIFT_DQ = StringRule(rb'"', rb'[^"\\]*(?:\\[^(][^"\\]*)*(?:"|\\\()', interpolation=b"\\(", brackets=b"()")
SWIFT_TRIPLE_DQ = StringRule(
    rb'"""',
    rb'[^"\\]*(?:(?:\\[^(]|"(?!""))[^"\\]*)*(?:"""|\\\()',
    multiline=True,
    interpolation=b"\\(",
    brackets=b"()",
)
JS_REGEX = StringRule(rb"/(?![/*])", rb"(?:[^/\\\[]|\\.|\[(?:[^\]\\]|\\.)*\])+/[A-Za-z]*", regex_literal=True)
TRIPLE_DQ = StringRule(rb'"""', rb'[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*"""', multiline=True)
TRIPLE_SQ = StringRule(rb"'''", rb"[^'\\]*(?:(?:\\.|'(?!''))[^'\\]*)*'''", multiline=True)
PY_TRIPLE_DQ = StringRule(TRIPLE_DQ.opener, TRIPLE_DQ.body, multiline=True, docstring=True)
PY_TRIPLE_SQ = StringRule(TRIPLE_SQ.opener, TRIPLE_SQ.body, multiline=True, docstring=True)
PY_DQ = StringRule(DQ.opener, DQ.body, docstring=True)
PY_SQ = StringRule(SQ.opener, SQ.body, docstring=True)
CS_VERBATIM = StringRule(rb'\$?@\$?"', rb'[^"]*(?:""[^"]*)*"', multiline=True, starts=b"$@")
CPP_RAW = StringRule(
    rb'(?<![A-Za-z0-9_])(?:u8|[uUL])?R"(?P<delim>[^()\\\s"]{0,16})\(',
    b"",
    multiline=True,
    close_format=b')%s"',
    starts=b"uULR",
)
RUST_RAW = StringRule(rb'(?<![A-Za-z0-9_])b?r(?P<delim>#*)"', b"", multiline=True, close_format=b'"%s', starts=b"br")

# Lua's and CMake's [[...]], [==[...]==].
BRACKET_STRING = StringRule(rb"\[(?P<delim>=*)\[", b"", multiline=True, close_format=b"]%s]")

_C_BLOCK = ((b"/*", b"*/"),)
_HTML_BLOCK = ((b"<!--", b"-->"),)
_HASH = (rb"#",)
# '#' opens a comment only at the start of a word (shell: `$#`, `${#a}`, `a#b` are not comments).
_HASH_WORD = (rb"(?<![^\s;|&()])#",)
# YAML and friends: '#' after white space or at the start of the line.
_HASH_SPACED = (rb"(?<!\S)#",)
_SLASHES = (rb"//",)


def _c_like(name: str, extensions: tuple[str, ...], *extra: StringRule, filenames: tuple[str, ...] = ()) -> Language:
    return Language(
        name,
        "programming",
        extensions,
        filenames=filenames,
        line_comments=_SLASHES,
        block_comments=_C_BLOCK,
        strings=(*extra, DQ, CHAR),
    )


LANGUAGES: tuple[Language, ...] = (
    Language(
        "Python",
        "programming",
        (".py", ".pyw", ".pyi", ".pyx", ".pxd", ".gyp", ".gypi"),
        filenames=("SConstruct", "SConscript", "wscript"),
        interpreters=("python", "python2", "python3", "pypy", "pypy3"),
        line_comments=_HASH,
        strings=(PY_TRIPLE_DQ, PY_TRIPLE_SQ, PY_DQ, PY_SQ),
    ),
    Language(
        "JavaScript",
        "programming",
        (".js", ".mjs", ".cjs", ".jsx"),
        filenames=("Jakefile",),
        interpreters=("node", "nodejs", "deno", "bun"),
        line_comments=_SLASHES,
        block_comments=_C_BLOCK,
        strings=(JS_TEMPLATE, DQ, SQ, JS_REGEX),
    ),
    Language(
        "TypeScript",
        "programming",
        (".ts", ".tsx", ".mts", ".cts"),
        interpreters=("ts-node", "tsx"),
        line_comments=_SLASHES,
        block_comments=_C_BLOCK,
        strings=(JS_TEMPLATE, DQ, SQ, JS_REGEX),
    ),
    _c_like("C", (".c", ".h")),
    _c_like(
        "C++",
        (".cpp", ".cc", ".cxx", ".c++", ".cp", ".hpp", ".hh", ".hxx", ".h++", ".inl", ".ipp", ".tpp", ".ixx", ".cppm"),
        CPP_RAW,
    ),
    _c_like("C#", (".cs", ".csx"), TRIPLE_DQ, CS_VERBATIM),
    _c_like("Java", (".java",), TRIPLE_DQ),
    _c_like("Go", (".go",), BACKTICK_RAW),
    Language(
        "Rust",
        "programming",
        (".rs",),
        line_comments=_SLASHES,
        block_comments=_C_BLOCK,
        nested_blocks=True,
        strings=(RUST_RAW, DQ_ML, CHAR),
    ),
    Language(
        "Kotlin",
        "programming",
        (".kt", ".kts"),
        line_comments=_SLASHES,
        block_comments=_C_BLOCK,
        nested_blocks=True,
        strings=(DOLLAR_INTERPOLATED_TRIPLE_DQ, DOLLAR_INTERPOLATED_DQ, CHAR),
    ),
    Language(
        "Swift",
        "programming",
        (".swift",),
        line_comments=_SLASHES,
        block_comments=_C_BLOCK,
        nested_blocks=True,
        strings=(SWIFT_TRIPLE_DQ, SWIFT_DQ),
    ),
    Language(
        "Scala",
        "programming",
        (".scala", ".sc"),
        line_comments=_SLASHES,
        block_comments=_C_BLOCK,
        nested_blocks=True,
        strings=(TRIPLE_DQ, DQ, CHAR),
    ),
    Language(
        "Groovy",
        "programming",
        (".groovy", ".gradle", ".gvy"),
        filenames=("Jenkinsfile",),
        line_comments=_SLASHES,
        block_comments=_C_BLOCK,
        strings=(DOLLAR_INTERPOLATED_TRIPLE_DQ, TRIPLE_SQ, DOLLAR_INTERPOLATED_DQ, SQ),
    ),
    Language(
        "Dart",
        "programming",
        (".dart",),
        line_comments=_SLASHES,
        block_comments=_C_BLOCK,
        nested_blocks=True,
        strings=(DOLLAR_INTERPOLATED_TRIPLE_DQ, TRIPLE_SQ, DOLLAR_INTERPOLATED_DQ, SQ),
    ),
    _c_like("Protocol Buffers", (".proto",)),
    _c_like("Zig", (".zig",)),
    Language(
        "Objective-C++",
        "programming",
        (".mm",),
        line_comments=_SLASHES,
        block_comments=_C_BLOCK,
        strings=(DQ, CHAR),
    ),
    Language(
        "Ruby",
        "programming",
        (".rb", ".rake", ".gemspec", ".ru", ".rbw"),
        filenames=("Gemfile", "Rakefile", "Vagrantfile", "Guardfile", "Podfile", "Fastfile", "Brewfile"),
        interpreters=("ruby", "jruby"),
        line_comments=_HASH,
        strings=(HASH_INTERPOLATED_DQ_ML, SQ_ML),
        line_blocks=((rb"=begin\b", rb"=end\b"),),
    ),
    Language(
        "PHP",
        "programming",
        (".php", ".phtml", ".php3", ".php4", ".php5", ".phps"),
        interpreters=("php",),
        line_comments=(rb"//", rb"#(?!\[)"),
        block_comments=_C_BLOCK,
        strings=(DQ_ML, SQ_ML),
    ),
    Language(
        "Perl",
        "programming",
        (".pl", ".pm", ".t", ".pod"),
        interpreters=("perl",),
        line_comments=_HASH_WORD,
        strings=(DQ, SQ),
        # POD, and everything after __END__ or __DATA__ (as cloc counts them).
        line_blocks=((rb"=[A-Za-z]", rb"=cut\b"), (rb"__(?:END|DATA)__\b", rb"(?!)")),
    ),
    Language(
        "Shell",
        "programming",
        (".sh", ".bash", ".zsh", ".ksh", ".bats", ".command"),
        filenames=(".bashrc", ".bash_profile", ".profile", ".zshrc", "PKGBUILD"),
        interpreters=("sh", "bash", "zsh", "ksh", "dash", "ash"),
        line_comments=_HASH_WORD,
        strings=(DQ_ML, SQ_RAW_ML),
    ),
    Language(
        "PowerShell",
        "programming",
        (".ps1", ".psm1", ".psd1"),
        interpreters=("pwsh", "powershell"),
        line_comments=_HASH,
        block_comments=((b"<#", b"#>"),),
        strings=(DQ_ML, SQ_RAW_ML),
    ),
    Language(
        "Batch",
        "programming",
        (".bat", ".cmd"),
        full_line_comment=rb"\s*(?:@?[Rr][Ee][Mm](?:\s|$)|::)",
    ),
    Language(
        "Lua",
        "programming",
        (".lua",),
        interpreters=("lua", "luajit"),
        line_comments=(rb"--(?!\[=*\[)",),
        delimited_block_comments=((rb"--\[(?P<delim>=*)\[", b"]%s]"),),
        strings=(DQ, SQ, BRACKET_STRING),
    ),
    Language(
        "R",
        "programming",
        (".r",),
        interpreters=("Rscript",),
        line_comments=_HASH,
        strings=(DQ_ML, SQ_ML),
    ),
    Language(
        "Elixir",
        "programming",
        (".ex", ".exs"),
        interpreters=("elixir",),
        line_comments=_HASH,
        strings=(TRIPLE_DQ, DQ_ML),
    ),
    Language(
        "Haskell",
        "programming",
        (".hs", ".hsc"),
        line_comments=(rb"--(?![!#$%&*+./<=>?@\\^|~:-])",),
        block_comments=((b"{-", b"-}"),),
        nested_blocks=True,
        strings=(DQ,),
    ),
    Language(
        "SQL",
        "programming",
        (".sql", ".psql", ".pgsql", ".ddl", ".dml"),
        line_comments=(rb"--",),
        block_comments=_C_BLOCK,
        strings=(SQ_ML, DQ),
    ),
    Language(
        "HTML",
        "markup",
        (".html", ".htm", ".xhtml", ".jinja", ".jinja2", ".j2", ".hbs", ".handlebars", ".mustache"),
        block_comments=_HTML_BLOCK,
    ),
    Language(
        "Vue",
        "markup",
        (".vue",),
        line_comments=(rb"(?<!\S)//",),
        block_comments=(*_HTML_BLOCK, *_C_BLOCK),
    ),
    Language(
        "Svelte",
        "markup",
        (".svelte",),
        line_comments=(rb"(?<!\S)//",),
        block_comments=(*_HTML_BLOCK, *_C_BLOCK),
    ),
    Language(
        "XML",
        "data",
        (
            ".xml",
            ".xsd",
            ".xsl",
            ".xslt",
            ".plist",
            ".csproj",
            ".fsproj",
            ".vbproj",
            ".props",
            ".targets",
            ".wsdl",
            ".rss",
            ".atom",
            ".xaml",
            ".resx",
            ".nuspec",
            ".pom",
        ),
        filenames=("pom.xml",),
        block_comments=_HTML_BLOCK,
    ),
    Language("SVG", "data", (".svg",), block_comments=_HTML_BLOCK),
    Language("CSS", "markup", (".css",), block_comments=_C_BLOCK, strings=(DQ, SQ)),
    Language("SCSS", "markup", (".scss",), line_comments=_SLASHES, block_comments=_C_BLOCK, strings=(DQ, SQ)),
    Language("Sass", "markup", (".sass",), line_comments=_SLASHES, block_comments=_C_BLOCK, strings=(DQ, SQ)),
    Language("Less", "markup", (".less",), line_comments=_SLASHES, block_comments=_C_BLOCK, strings=(DQ, SQ)),
    Language(
        "YAML",
        "data",
        (".yaml", ".yml"),
        filenames=(".clang-format", ".clang-tidy"),
        line_comments=_HASH_SPACED,
        strings=(DQ, SQ),
    ),
    Language(
        "TOML",
        "data",
        (".toml",),
        filenames=("Pipfile",),
        line_comments=_HASH,
        strings=(TRIPLE_DQ, TRIPLE_SQ, DQ, StringRule(rb"'", rb"[^']*'")),
    ),
    Language(
        "INI",
        "data",
        (".ini", ".cfg", ".conf", ".properties", ".prefs"),
        filenames=(".editorconfig", ".gitconfig", ".flake8", ".pylintrc", ".coveragerc"),
        full_line_comment=rb"\s*[;#]",
    ),
    Language("JSON", "data", (".json", ".geojson", ".webmanifest", ".har"), filenames=(".babelrc", ".eslintrc")),
    Language("CSV", "data", (".csv", ".tsv")),
    Language(
        "Markdown",
        "prose",
        (".md", ".markdown", ".mdown", ".mkd", ".mdx"),
        block_comments=_HTML_BLOCK,
    ),
    Language("reStructuredText", "prose", (".rst",)),
    Language("Text", "prose", (".txt", ".text")),
    Language(
        "PO File",
        "data",
        (".po", ".pot"),
        full_line_comment=rb"\s*#(?!,)",
    ),
    Language(
        "Makefile",
        "programming",
        (".mk", ".mak", ".make"),
        filenames=("Makefile", "makefile", "GNUmakefile", "Kbuild"),
        line_comments=(rb"(?<!\\)#",),
    ),
    Language(
        "Dockerfile",
        "programming",
        (".dockerfile",),
        filenames=("Dockerfile", "Containerfile"),
        filename_prefixes=("dockerfile.", "containerfile."),
        full_line_comment=rb"\s*#",
    ),
    Language(
        "CMake",
        "programming",
        (".cmake",),
        filenames=("CMakeLists.txt",),
        line_comments=(rb"#(?!\[=*\[)",),
        delimited_block_comments=((rb"#\[(?P<delim>=*)\[", b"]%s]"),),
        strings=(DQ_ML, BRACKET_STRING),
    ),
    Language(
        "Starlark",
        "programming",
        (".bzl", ".star", ".bazel"),
        filenames=("BUILD", "WORKSPACE", "BUCK", "Tiltfile"),
        line_comments=_HASH,
        strings=(PY_TRIPLE_DQ, PY_TRIPLE_SQ, PY_DQ, PY_SQ),
    ),
    Language(
        "HCL",
        "programming",
        (".tf", ".tfvars", ".hcl", ".nomad"),
        line_comments=(rb"#", rb"//"),
        block_comments=_C_BLOCK,
        strings=(DQ,),
    ),
    Language("GraphQL", "programming", (".graphql", ".gql"), line_comments=_HASH, strings=(TRIPLE_DQ, DQ)),
)

BY_NAME: dict[str, Language] = {lang.name: lang for lang in LANGUAGES}


def _index() -> tuple[dict[str, Language], dict[str, Language], dict[str, Language], tuple[tuple[str, Language], ...]]:
    by_ext: dict[str, Language] = {}
    by_filename: dict[str, Language] = {}
    by_interpreter: dict[str, Language] = {}
    prefixes: list[tuple[str, Language]] = []
    for lang in LANGUAGES:
        for ext in lang.extensions:
            if ext != ext.lower() or not ext.startswith("."):
                raise ValueError(f"{lang.name}: extensions are lower-case and start with a dot: {ext}")
            if ext in by_ext:
                raise ValueError(f"{ext} claimed by {by_ext[ext].name} and {lang.name}")
            by_ext[ext] = lang
        for name in lang.filenames:
            if name in by_filename:
                raise ValueError(f"{name} claimed by {by_filename[name].name} and {lang.name}")
            by_filename[name] = lang
        for interpreter in lang.interpreters:
            by_interpreter[interpreter] = lang
        prefixes.extend((prefix, lang) for prefix in lang.filename_prefixes)
    return by_ext, by_filename, by_interpreter, tuple(prefixes)


BY_EXTENSION, BY_FILENAME, BY_INTERPRETER, _PREFIXES = _index()
BY_FILENAME_LOWER: dict[str, Language] = {name.lower(): lang for name, lang in reversed(BY_FILENAME.items())}

_SHEBANG = re.compile(rb"#![ \t]*(\S+)(?:[ \t]+(?:-\S+[ \t]+)*(\S+))?")
_VERSION_SUFFIX = re.compile(r"[\d.]+$")


def by_path_name(name: str) -> Language | None:
    """The language of a file from its base name alone, or None (then try `by_shebang` on extension-less files)."""
    lang = BY_FILENAME.get(name)
    if lang is not None:
        return lang
    lowered = name.lower()
    dot = lowered.rfind(".")
    if dot > 0:
        lang = BY_EXTENSION.get(lowered[dot:])
        if lang is not None:
            return lang
    for prefix, candidate in _PREFIXES:
        if lowered.startswith(prefix):
            return candidate
    return BY_FILENAME_LOWER.get(lowered)


def by_shebang(first_line: bytes) -> Language | None:
    """The language named by a `#!` line (`#!/bin/sh`, `#!/usr/bin/env -S python3 -u`), or None."""
    match = _SHEBANG.match(first_line)
    if match is None:
        return None
    program = match.group(1).rsplit(b"/", 1)[-1].decode("ascii", "replace")
    if program == "env" and match.group(2):
        program = match.group(2).rsplit(b"/", 1)[-1].decode("ascii", "replace")
    lang = BY_INTERPRETER.get(program)
    if lang is None:
        lang = BY_INTERPRETER.get(_VERSION_SUFFIX.sub("", program))
    return lang
