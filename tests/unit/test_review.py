"""The rule-based review."""

from services.analysis.engine.review import rule_based_review


def test_summary_names_size_languages_gate_and_first_finding() -> None:
    review = rule_based_review(
        {
            "inventory": {
                "totals": {"files": 3, "code": 1200},
                "languages": {"Python": {"code": 1000}, "Go": {"code": 200}},
            },
            "quality_gate": {"status": "failed", "failed": ["max_file_lines"]},
            "findings": [
                {"severity": "low", "path": "big.py", "line": 1, "message": "2000 lines (limit 1000)"},
            ],
        }
    )
    assert review["provider"] == "rules"
    assert review["state"] == "written"
    assert review["text"] == (
        "1,200 lines of code in 3 files; mostly Python (1,000 lines), Go (200 lines). "
        "The quality gate failed on: max_file_lines. 1 findings (1 low). "
        "Start with big.py:1: 2000 lines (limit 1000)."
    )


def test_summary_of_an_empty_tree() -> None:
    assert rule_based_review({})["text"] == "No source files were recognised. No findings."
