"""The step functions tests call (`inventory`, `complexity`, `scan_secrets`) are the scan step's own path: on one tree
they give what the worker's scan step reports."""

from __future__ import annotations

from pathlib import Path

from repolens.tenants.v1 import tenants_pb2
from services.analysis.engine import pipeline
from services.analysis.engine.complexity import complexity
from services.analysis.engine.inventory import inventory
from services.analysis.engine.secrets import scan_secrets

GATE = tenants_pb2.QualityGate(max_function_complexity=1, max_high_findings=0, max_secrets=0, max_file_lines=1000)
FILES = {
    "app/main.py": '"""Doc."""\n\nimport os  # code\n\n\ndef f(a):\n    if a:\n        return 1\n    return 2\n',
    "web/app.js": "// c\nfunction g(x) { return x ? 1 : 2; }\n",
    "cmd/main.go": "package main\n\n// m\nfunc main() {\n}\n",
    "README.md": "# Title\n\ntext\n",
    "config/.env": "GITHUB_TOKEN=ghp_" + "Zq8" * 12 + "\n",
    "empty.py": "",
    "data.bin": "\0\1\2",
}


def test_the_step_functions_give_what_the_scan_step_reports(tmp_path: Path) -> None:
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    sections = pipeline.analyse(tmp_path, gate=GATE, should_stop=lambda: False, progress=lambda s, p: None).sections
    assert inventory(tmp_path).to_dict() == sections["inventory"]
    assert scan_secrets(tmp_path, sorted(FILES)).to_dict()["findings"] == sections["secrets"]["findings"]
    measured = complexity(tmp_path, [(f["path"], f["language"]) for f in sections["inventory"]["files"]])
    assert [f._asdict() for f in sorted(measured.functions, key=lambda f: (-f.cyclomatic, f.path, f.start_line))] == (
        sections["complexity"]["top"]
    )
    assert measured.files_parsed == sections["complexity"]["files_parsed"] == 3
