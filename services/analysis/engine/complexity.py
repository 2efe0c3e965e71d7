"""The complexity step: per-function metrics (cyclomatic complexity, length, parameters, nesting) from tree-sitter.

`measure_file(path, data, language)` parses one file's bytes with the grammar of `language` (a name from the
inventory's language table) and returns one `FunctionMetrics` per function, method or anonymous function;
`complexity(root, files)` does that for many files, skipping those over a size limit.

How it works, and why it is fast: one tree-sitter query per language finds, in C, the few nodes that matter
(functions, classes, decision points, control blocks); Python then sweeps those nodes once, in document order,
with a stack of open ranges. No Python code runs per syntax node.

Metrics:

* `cyclomatic` = 1 + the decision points inside the function, as lizard counts them. Nested functions (named or
  anonymous) are measured on their own and add nothing to their parent. Decision points outside any function
  (module level, class bodies) are not reported.
* `length` = lines from the function's first to its last line, both included (decorators and comments before it
  excluded).
* `parameters` = declared parameters, as written: Python's `self`/`cls` and Rust's `self` count; Python's bare
  `*` and `/` separators do not; C's `f(void)` has none; Go's `a, b int` is two.
* `max_nesting` = the deepest nesting of control blocks (the "nesting" list below) inside the function, 0 when
  there are none. An `else if` continues its `if` and adds no level; `elif`/`elsif`/`elseif` neither.
* `name` is qualified with the enclosing classes (Rust: the `impl` type; Go: the receiver type) and enclosing
  functions, joined by "."; anonymous functions take the name they are assigned to (`const f = () => 1` is "f"),
  else "(anonymous)".

Decision points per language (each node, or each token, adds 1):

* Python: `if`, `elif`, `for`, `while`, `except` clauses, `case` clauses other than `case _`, conditional
  expressions, comprehension `for` and `if` clauses, `and`, `or`.
* JavaScript, TypeScript, TSX: `if` (so `else if`), `for`, `for in/of`, `while`, `do`, `case` (not `default`),
  `catch`, `?:`, `&&`, `||`.
* Go: `if`, `for`, `case` in expression, type and `select` switches (not `default`), `&&`, `||`.
* Java: `if`, `for`, enhanced `for`, `while`, `do`, each `case` label (not `default`), `catch`, `?:`, `&&`, `||`.
* C: `if`, `for`, `while`, `do`, `case` (not `default`), `?:`, `&&`, `||`. C++: the same plus range `for`,
  `catch`.
* C#: `if`, `for`, `foreach`, `while`, `do`, each `case` label (not `default`), switch-expression arms other than
  `_`, `catch`, `?:`, `&&`, `||`.
* Rust: `if` (and `if let`), `while` (and `while let`), `for`, `match` arms other than `_`, `&&`, `||`.
* Ruby: `if`, `elsif`, `unless`, `while`, `until`, `for`, their modifier forms, `when`, `in` (pattern matching),
  `rescue` (and the `rescue` modifier), `?:`, `and`, `or`, `&&`, `||`.
* PHP: `if`, `elseif`, `for`, `foreach`, `while`, `do`, `case` (not `default`), `match` arms (not `default`),
  `catch`, `?:`, `&&`, `||`, `and`, `or`.

Not counted anywhere: `else`, `default`, `??`, `?.`, Rust's `?`, `loop`, `try`/`finally`, `with`.

Control blocks that nest ("nesting"): `if`/`unless`, loops (Rust's `loop` included), `switch`/`match`/`case`
statements and expressions, `try`/`begin` blocks.

Functions: Python `def` and `lambda`; JS/TS function declarations and expressions, generators, arrow functions,
methods; Go functions, methods, function literals; Java methods, constructors, lambdas; C functions; C++
functions and lambdas; C# methods, constructors, destructors, operators, local functions, lambdas, anonymous
methods; Rust `fn` items with a body and closures; Ruby `def` and `def self.`; PHP functions, methods,
closures, arrow functions. Ruby blocks are not functions: a block's decisions count for the method around it.
Declarations without a body (abstract or interface methods, prototypes) are not measured.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tree_sitter import Language, Node, Parser, Query, QueryCursor

from services.analysis.engine.inventory import count_lines_around

__all__ = [
    "SUPPORTED_LANGUAGES",
    "ComplexityResult",
    "FunctionMetrics",
    "complexity",
    "grammar_for",
    "measure_file",
    "measure_into",
    "parser_for",
]


class FunctionMetrics(NamedTuple):
    """One function's metrics. A named tuple, not a dataclass: a large repository has tens of thousands, and they
    cross from the engine's processes to the worker; a tuple pickles about ten times faster."""

    name: str
    path: str
    start_line: int
    end_line: int
    cyclomatic: int
    length: int
    parameters: int
    max_nesting: int


@dataclass(slots=True)
class ComplexityResult:
    functions: list[FunctionMetrics] = field(default_factory=list)
    files_parsed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "functions": [f._asdict() for f in self.functions],
            "files_parsed": self.files_parsed,
            "skipped": dict(self.skipped),
        }


# --- the language specifications ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    functions: tuple[str, ...]
    classes: tuple[str, ...]
    # Decision points that are also control blocks.
    branches: tuple[str, ...]
    # Decision points only.
    decisions: tuple[str, ...]
    # Control blocks only.
    blocks: tuple[str, ...]
    # Extra query patterns, capturing @d (decision), @b (decision and block), @e (an `else if`: decision only, even
    # when also captured as @b), @w (decision unless its first named child is the wildcard `_`).
    extra: str = ""
    # What the line counts take for comments (@k): the grammar's comment nodes, Python's docstrings.
    comments: str = "(comment) @k"


_C_BOOL = '(binary_expression operator: ["&&" "||"] @d)'
_LINE_AND_BLOCK = "(line_comment) @k (block_comment) @k"

_JS = _Spec(
    functions=(
        "function_declaration",
        "generator_function_declaration",
        "function_expression",
        "generator_function",
        "arrow_function",
        "method_definition",
    ),
    classes=("class_declaration", "class"),
    branches=("if_statement", "for_statement", "for_in_statement", "while_statement", "do_statement"),
    decisions=("switch_case", "catch_clause", "ternary_expression"),
    blocks=("switch_statement", "try_statement"),
    extra=_C_BOOL + " (else_clause (if_statement) @e)",
)

_TS = _Spec(
    functions=_JS.functions,
    classes=(*_JS.classes, "abstract_class_declaration"),
    branches=_JS.branches,
    decisions=_JS.decisions,
    blocks=_JS.blocks,
    extra=_JS.extra,
)

_C = _Spec(
    functions=("function_definition",),
    classes=(),
    branches=("if_statement", "for_statement", "while_statement", "do_statement"),
    decisions=("conditional_expression",),
    blocks=("switch_statement",),
    extra=_C_BOOL + ' (case_statement "case" @d) (else_clause (if_statement) @e)',
)

_SPECS: dict[str, _Spec] = {
    "Python": _Spec(
        functions=("function_definition", "lambda"),
        classes=("class_definition",),
        branches=("if_statement", "for_statement", "while_statement"),
        decisions=("elif_clause", "except_clause", "conditional_expression", "for_in_clause", "if_clause"),
        blocks=("match_statement", "try_statement"),
        extra="(boolean_operator) @d (case_clause) @w",
        # A string standing alone as a statement is a docstring (cloc counts those as comments too).
        comments="(comment) @k (expression_statement . [(string) (concatenated_string)] @k .)",
    ),
    "JavaScript": _JS,
    "TypeScript": _TS,
    "TSX": _TS,
    "Go": _Spec(
        functions=("function_declaration", "method_declaration", "func_literal"),
        classes=(),
        branches=("if_statement", "for_statement"),
        decisions=("expression_case", "type_case", "communication_case"),
        blocks=("expression_switch_statement", "type_switch_statement", "select_statement"),
        extra=_C_BOOL + " (if_statement alternative: (if_statement) @e)",
    ),
    "Java": _Spec(
        functions=(
            "method_declaration",
            "constructor_declaration",
            "compact_constructor_declaration",
            "lambda_expression",
        ),
        classes=("class_declaration", "interface_declaration", "enum_declaration", "record_declaration"),
        branches=("if_statement", "for_statement", "enhanced_for_statement", "while_statement", "do_statement"),
        decisions=("catch_clause", "ternary_expression"),
        blocks=("switch_expression", "try_statement", "try_with_resources_statement"),
        extra=_C_BOOL + ' (switch_label "case" @d) (if_statement alternative: (if_statement) @e)',
        comments=_LINE_AND_BLOCK,
    ),
    "C": _C,
    "C++": _Spec(
        functions=("function_definition", "lambda_expression"),
        classes=("class_specifier", "struct_specifier"),
        branches=(*_C.branches, "for_range_loop"),
        decisions=(*_C.decisions, "catch_clause"),
        blocks=(*_C.blocks, "try_statement"),
        extra=_C.extra,
    ),
    "C#": _Spec(
        functions=(
            "method_declaration",
            "constructor_declaration",
            "destructor_declaration",
            "operator_declaration",
            "conversion_operator_declaration",
            "local_function_statement",
            "lambda_expression",
            "anonymous_method_expression",
        ),
        classes=("class_declaration", "struct_declaration", "interface_declaration", "record_declaration"),
        branches=("if_statement", "for_statement", "foreach_statement", "while_statement", "do_statement"),
        decisions=("catch_clause", "conditional_expression"),
        blocks=("switch_statement", "switch_expression", "try_statement"),
        extra=_C_BOOL
        + ' (switch_section "case" @d) (switch_expression_arm) @w (if_statement alternative: (if_statement) @e)',
    ),
    "Rust": _Spec(
        functions=("function_item", "closure_expression"),
        classes=("impl_item", "trait_item"),
        branches=("if_expression", "while_expression", "for_expression"),
        decisions=(),
        blocks=("loop_expression", "match_expression"),
        extra=_C_BOOL + " (match_arm) @w (else_clause (if_expression) @e)",
        comments=_LINE_AND_BLOCK,
    ),
    "Ruby": _Spec(
        functions=("method", "singleton_method"),
        classes=("class", "module", "singleton_class"),
        branches=("if", "unless", "while", "until", "for"),
        decisions=(
            "elsif",
            "if_modifier",
            "unless_modifier",
            "while_modifier",
            "until_modifier",
            "when",
            "in_clause",
            "rescue",
            "rescue_modifier",
            "conditional",
        ),
        blocks=("case", "case_match", "begin"),
        extra='(binary operator: ["and" "or" "&&" "||"] @d)',
    ),
    "PHP": _Spec(
        functions=("function_definition", "method_declaration", "anonymous_function", "arrow_function"),
        classes=("class_declaration", "interface_declaration", "trait_declaration", "enum_declaration"),
        branches=("if_statement", "for_statement", "foreach_statement", "while_statement", "do_statement"),
        decisions=("else_if_clause", "case_statement", "match_conditional_expression", "catch_clause"),
        blocks=("switch_statement", "match_expression", "try_statement"),
        extra='(conditional_expression) @d (binary_expression operator: ["&&" "||" "and" "or"] @d)'
        " (else_clause (if_statement) @e)",
    ),
}

SUPPORTED_LANGUAGES: frozenset[str] = frozenset(_SPECS)


def _load_language(grammar: str) -> Language:
    # Imported here so that importing this module loads no grammar.
    if grammar == "Python":
        import tree_sitter_python as m

        return Language(m.language())
    if grammar == "JavaScript":
        import tree_sitter_javascript as m_js

        return Language(m_js.language())
    if grammar in ("TypeScript", "TSX"):
        import tree_sitter_typescript as m_ts

        return Language(m_ts.language_typescript() if grammar == "TypeScript" else m_ts.language_tsx())
    if grammar == "Go":
        import tree_sitter_go as m_go

        return Language(m_go.language())
    if grammar == "Java":
        import tree_sitter_java as m_java

        return Language(m_java.language())
    if grammar == "C":
        import tree_sitter_c as m_c

        return Language(m_c.language())
    if grammar == "C++":
        import tree_sitter_cpp as m_cpp

        return Language(m_cpp.language())
    if grammar == "C#":
        import tree_sitter_c_sharp as m_cs

        return Language(m_cs.language())
    if grammar == "Rust":
        import tree_sitter_rust as m_rs

        return Language(m_rs.language())
    if grammar == "Ruby":
        import tree_sitter_ruby as m_rb

        return Language(m_rb.language())
    if grammar == "PHP":
        import tree_sitter_php as m_php

        return Language(m_php.language_php())
    raise KeyError(grammar)


def _query_source(spec: _Spec) -> str:
    def alternation(types: tuple[str, ...], capture: str) -> str:
        if not types:
            return ""
        return "[" + " ".join(f"({t})" for t in types) + "] @" + capture

    return "\n".join(
        part
        for part in (
            alternation(spec.functions, "f"),
            alternation(spec.classes, "c"),
            alternation(spec.branches, "b"),
            alternation(spec.decisions, "d"),
            alternation(spec.blocks, "n"),
            spec.extra,
            spec.comments,
        )
        if part
    )


_LOCK = threading.Lock()
_QUERIES: dict[str, tuple[Language, Query]] = {}
_LOCAL = threading.local()


def grammar_for(path: str, language: str) -> str | None:
    """The grammar this step parses a file in `language` (an inventory language name) with, or None."""
    if language == "TypeScript" and path.lower().endswith(".tsx"):
        return "TSX"
    return language if language in _SPECS else None


def _tools(grammar: str) -> tuple[Parser, Query]:
    """The parser (one per thread: a parser is not thread-safe) and the query (shared) for `grammar`."""
    parsers: dict[str, Parser] | None = getattr(_LOCAL, "parsers", None)
    if parsers is None:
        parsers = _LOCAL.parsers = {}
    with _LOCK:
        entry = _QUERIES.get(grammar)
        if entry is None:
            lang = _load_language(grammar)
            entry = _QUERIES[grammar] = (lang, Query(lang, _query_source(_SPECS[grammar])))
    parser = parsers.get(grammar)
    if parser is None:
        parser = parsers[grammar] = Parser(entry[0])
    return parser, entry[1]


def parser_for(path: str, language: str) -> Parser | None:
    """The parser this step uses for a file in `language` (an inventory language name), or None without a grammar;
    for measuring the parse alone (`bench/parse_floor.py`)."""
    grammar = grammar_for(path, language)
    return _tools(grammar)[0] if grammar is not None else None


# --- names and parameters -----------------------------------------------------------------------------------

_FUNC, _CLASS, _DEC, _NEST = 1, 2, 4, 8
_ROLES: dict[str, int] = {"f": _FUNC, "c": _CLASS, "d": _DEC, "n": _NEST, "b": _DEC | _NEST, "w": _DEC}
_MAY_LACK_BODY = frozenset({"method_declaration", "function_declaration"})
_NAME_FIELDS = ("name", "left", "pattern", "key", "property")
_NOT_PARAMETERS = frozenset({"comment", "keyword_separator", "positional_separator", "line_comment", "block_comment"})


def _text(node: Node | None) -> str:
    if node is None or node.text is None:
        return ""
    return node.text.decode("utf-8", "replace")


def _c_declarator(node: Node) -> Node | None:
    """The function_declarator under a C/C++ function_definition (through pointers and references)."""
    decl = node.child_by_field_name("declarator")
    while decl is not None and decl.type != "function_declarator":
        decl = decl.child_by_field_name("declarator")
    return decl


def _anonymous_name(node: Node) -> str:
    parent = node.parent
    if parent is not None:
        for name_field in _NAME_FIELDS:
            target = parent.child_by_field_name(name_field)
            if target is not None and target.end_byte <= node.start_byte:
                text = _text(target)
                if text and len(text) <= 80 and not any(ch.isspace() for ch in text):
                    return text
        if parent.type in ("variable_declarator",):  # C#, Java: `name` is the first named child
            first = parent.named_child(0)
            if first is not None and first.type == "identifier":
                return _text(first)
    return "(anonymous)"


def _function_name(node: Node, grammar: str) -> str:
    kind = node.type
    if kind == "function_definition" and grammar in ("C", "C++"):
        decl = _c_declarator(node)
        inner = decl.child_by_field_name("declarator") if decl is not None else None
        return _text(inner) or "(anonymous)"
    name = node.child_by_field_name("name")
    if name is None:
        return _anonymous_name(node)
    if kind == "method_declaration" and grammar == "Go":
        receiver = node.child_by_field_name("receiver")
        decl = receiver.named_child(0) if receiver is not None else None
        rtype = _text(decl.child_by_field_name("type")) if decl is not None else ""
        rtype = rtype.lstrip("*").split("[", 1)[0].strip()
        if rtype:
            return f"{rtype}.{_text(name)}"
    return _text(name)


def _class_name(node: Node) -> str:
    name = node.child_by_field_name("name")
    if name is None:
        name = node.child_by_field_name("type")  # Rust: impl Type / impl Trait for Type
    if name is None:
        return "(anonymous)" if node.type != "singleton_class" else "self"
    return _text(name).split("<", 1)[0]


def _parameters(node: Node, grammar: str) -> int:
    if grammar in ("C", "C++"):
        # A C/C++ function definition, or a C++ lambda.
        decl = _c_declarator(node) if node.type == "function_definition" else node.child_by_field_name("declarator")
        params = decl.child_by_field_name("parameters") if decl is not None else None
    else:
        params = node.child_by_field_name("parameters") or node.child_by_field_name("parameter")
    if params is None:
        return 0
    if not (params.type.endswith("parameters") or params.type.endswith("parameter_list")):
        return 1  # a lone parameter: `x => x`, C#'s `x => x`
    count = 0
    for child in params.named_children:
        kind = child.type
        if kind in _NOT_PARAMETERS:
            continue
        if grammar == "Go" and kind == "parameter_declaration":
            count += len(child.children_by_field_name("name")) or 1
        elif grammar in ("C", "C++") and kind == "parameter_declaration" and child.text == b"void":
            continue
        else:
            count += 1
    return count


# --- measuring ----------------------------------------------------------------------------------------------


def _is_wildcard(node: Node) -> bool:
    """A `case _`/`_ =>` arm: the default, not a decision."""
    first = node.named_child(0)
    return first is not None and _text(first) == "_"


def measure_file(path: str, data: bytes, language: str) -> list[FunctionMetrics]:
    """The functions of one file. `language` is an inventory language name; others give an empty list. Never
    raises for bad input: tree-sitter recovers from syntax errors, and what it makes of them is measured."""
    grammar = grammar_for(path, language)
    return _measure(path, data, grammar)[0] if grammar is not None else []


def _measure(path: str, data: bytes, grammar: str) -> tuple[list[FunctionMetrics], tuple[int, int, int]]:
    """The functions of one file and its code, comment and blank lines, from one parse."""
    parser, query = _tools(grammar)
    tree = parser.parse(data)
    captures = QueryCursor(query).captures(tree.root_node)
    comments = captures.get("k", ())
    lines = count_lines_around(data, sorted((n.start_byte, n.end_byte) for n in comments) if comments else ())
    if not captures.get("f"):
        return [], lines

    elseifs = {(n.start_byte, n.end_byte) for n in captures.get("e", ())}
    # (start, -end, rank, order, role, node): parents sort before their children, and functions (rank 0), then
    # classes (rank 1) before anything else on the same range.
    items: list[tuple[int, int, int, int, int, Node]] = []
    order = 0
    for capture, nodes in captures.items():
        role = _ROLES.get(capture)
        if role is None:
            continue
        for node in nodes:
            start, end = node.start_byte, node.end_byte
            if capture == "w" and _is_wildcard(node):
                continue
            actual = role
            if role == _DEC | _NEST and (start, end) in elseifs:
                actual = _DEC
            items.append((start, -end, 0 if actual & _FUNC else 1 if actual & _CLASS else 2, order, actual, node))
            order += 1
    items.sort()

    found: list[tuple[str, Node]] = []
    decisions: list[int] = []
    depths: list[int] = []
    # Stack of open ranges: (end, function index or -1, nesting depth, qualified-name prefix).
    stack: list[tuple[int, int, int, str]] = [(len(data) + 1, -1, 0, "")]
    for start, neg_end, _, _, role, node in items:
        while stack[-1][0] <= start:
            stack.pop()
        _, func, depth, prefix = stack[-1]
        end = -neg_end
        if role & _FUNC:
            if node.type in _MAY_LACK_BODY and node.child_by_field_name("body") is None:
                continue  # an abstract or interface method: nothing to measure, and nothing nests in it
            name = prefix + _function_name(node, grammar)
            found.append((name, node))
            decisions.append(0)
            depths.append(0)
            stack.append((end, len(found) - 1, 0, name + "."))
        elif role & _CLASS:
            stack.append((end, func, depth, prefix + _class_name(node) + "."))
        else:
            if role & _DEC and func >= 0:
                decisions[func] += 1
            if role & _NEST:
                depth += 1
                if func >= 0 and depth > depths[func]:
                    depths[func] = depth
                stack.append((end, func, depth, prefix))

    result: list[FunctionMetrics] = []
    for index, (name, node) in enumerate(found):
        first = node.start_point[0] + 1
        last = node.end_point[0] + 1
        if node.end_point[1] == 0 and last > first:
            last -= 1  # a node that ends at a line start (Python's trailing newline) ends on the line before
        result.append(
            FunctionMetrics(
                name=name,
                path=path,
                start_line=first,
                end_line=last,
                cyclomatic=1 + decisions[index],
                length=last - first + 1,
                parameters=_parameters(node, grammar),
                max_nesting=depths[index],
            )
        )
    return result, lines


def complexity(
    root: Path,
    files: Iterable[tuple[str, str]],
    *,
    should_stop: Callable[[], bool] = lambda: False,
    max_file_bytes: int = 1_000_000,
) -> ComplexityResult:
    """Measure `files`, (path relative to `root` in posix form, inventory language name) pairs, the way the scan step
    does (engine/scan.py: its per-file path), every function kept. Files in languages without a grammar here, over
    `max_file_bytes`, or unreadable are counted in `skipped` by reason ("unsupported", "too_large", "unreadable");
    files the inventory would not count (empty, binary, generated) are not measured. Raises `Cancelled` when
    `should_stop()` is True (asked before each file)."""
    from services.analysis.engine import scan  # the scan step imports this module
    from services.analysis.engine.languages import BY_NAME
    from services.analysis.engine.scan import Item

    skipped: dict[str, int] = {}
    items: list[Item] = []
    root_str = os.fspath(root)
    for rel, language in files:
        reason = None
        if grammar_for(rel, language) is None:
            reason = "unsupported"
        else:
            try:
                items.append((rel, BY_NAME[language], os.stat(os.path.join(root_str, rel)).st_size, True, False))
            except OSError:
                reason = "unreadable"
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
    # No complexity limit: every function is kept, as measured.
    part = scan.scan_files(root_str, items, -1, should_stop, step_max_file_bytes=max_file_bytes)
    result = part.measured
    for reason, count in skipped.items():
        result.skipped[reason] = result.skipped.get(reason, 0) + count
    return result


def measure_into(
    result: ComplexityResult, rel: str, data: bytes | str, language: str, max_file_bytes: int = 1_000_000
) -> tuple[int, int, int] | None:
    """Adds one file's functions to `result`, or counts why it is skipped. `data` is the file's bytes (read up to
    `max_file_bytes` + 1, enough to tell it is too large) or, when it could not be read, the reason. Returns the
    file's code, comment and blank lines when it was parsed (from the syntax tree's comments: the inventory
    need not count them again), else None."""
    reason = data if isinstance(data, str) else None
    grammar = grammar_for(rel, language)
    if grammar is None:
        reason = "unsupported"
    elif isinstance(data, bytes) and len(data) > max_file_bytes:
        reason = "too_large"
    if reason is not None or grammar is None:
        reason = reason or "unsupported"
        result.skipped[reason] = result.skipped.get(reason, 0) + 1
        return None
    assert isinstance(data, bytes)
    functions, lines = _measure(rel, data, grammar)
    result.functions.extend(functions)
    result.files_parsed += 1
    return lines
