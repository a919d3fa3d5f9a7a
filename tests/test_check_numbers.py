"""bench/check_numbers.py: BENCHMARKS.md's tables against their committed result files (issue 23.4).

The real file must pass; temporary files show that the check fails for a number its file does not hold,
a table without a marker, and a marker naming a missing file, and that rounding, percentages,
thousands separators, names such as ``f16`` and code fences are read as the docstring says.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_numbers", REPO / "bench" / "check_numbers.py")
check_numbers = importlib.util.module_from_spec(_spec)
sys.modules["check_numbers"] = check_numbers  # dataclasses look their module up
_spec.loader.exec_module(check_numbers)


def test_benchmarks_md_quotes_only_numbers_of_its_result_files():
    problems, counts = check_numbers.check(REPO / "BENCHMARKS.md")
    assert problems == []
    assert counts["backed"] >= 2 and counts["numbers"] >= 100  # §11 and the dense-perplexity table at least
    assert counts["tables"] == counts["backed"] + counts["not_kept"]


def _doc(tmp_path: Path, table: str, marker: str = "<!-- results: r.json -->") -> Path:
    (tmp_path / "r.json").write_text(json.dumps({"a": {"ppl": 41.9512, "tokens": 10240}, "list": [0.2, 1.2483],
                                                 "flag": True}))
    path = tmp_path / "B.md"
    path.write_text(f"# x\n\n{marker}\n\n{table}\n\nafter\n")
    return path


TABLE = ("| model 0.2 (header numbers are not checked: 7) | PPL | tokens |\n|---|---|---|\n"
         "| f16, k32, blk.1 | 41.95 (1.25×) | 10,240 |\n| 20% | 42 | 10240 |\n")


def test_a_table_of_numbers_in_its_file_passes(tmp_path):
    problems, counts = check_numbers.check(_doc(tmp_path, TABLE), root=tmp_path)
    assert problems == []
    # 41.95, 1.25 (1.2483 rounded), 10,240, 20% (0.2 x 100), 42 (41.95 rounded), 10240; f16/k32/blk.1 are names
    assert counts == {"tables": 1, "backed": 1, "not_kept": 0, "numbers": 6}


def test_a_number_not_in_the_file_fails(tmp_path):
    wrong = TABLE.replace("41.95 (1.25×)", "41.96 (1.25×)").replace("| 42 |", "| 1.0 |")  # only True is 1.0
    path = _doc(tmp_path, wrong)
    problems, _ = check_numbers.check(path, root=tmp_path)
    assert problems == ["B.md:7: 41.96 is in no number of r.json", "B.md:8: 1.0 is in no number of r.json"]
    assert check_numbers.main([str(path), "--root", str(tmp_path)]) == 1


def test_markers_are_required_and_their_files_must_exist(tmp_path):
    problems, _ = check_numbers.check(_doc(tmp_path, TABLE, marker="Some prose."), root=tmp_path)
    assert len(problems) == 1 and "B.md:5: table without a marker" in problems[0]
    problems, _ = check_numbers.check(_doc(tmp_path, TABLE, "<!-- results: r.json, gone.json -->"), root=tmp_path)
    assert problems == ["B.md:5: gone.json does not exist"]
    problems, counts = check_numbers.check(
        _doc(tmp_path, TABLE.replace("41.95", "99.99"), "<!-- results: not kept (before results were committed) -->"),
        root=tmp_path)
    assert problems == [] and counts["not_kept"] == 1 and counts["numbers"] == 0


def test_tables_in_code_fences_are_not_tables(tmp_path):
    path = _doc(tmp_path, "```\n" + TABLE.replace("41.95", "99.99") + "```", marker="text")
    problems, counts = check_numbers.check(path, root=tmp_path)
    assert problems == [] and counts["tables"] == 0
