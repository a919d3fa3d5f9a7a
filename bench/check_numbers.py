"""Check that the numbers quoted in BENCHMARKS.md's tables are in the result files they come from.

    python bench/check_numbers.py [BENCHMARKS.md ...]      # exit 1 and one line per problem

The convention (BENCHMARKS.md's introduction says it too): the last non-blank line above every table
is a marker comment, either

    <!-- results: bench/results/speed.json -->             (one or more files, comma-separated)
    <!-- results: not kept (why) -->                       (a table whose data was never kept)

A table under a ``results:`` marker passes when every number in its body cells (not the header row) is
in one of its files: some number of the JSON (at any depth; booleans are not numbers) that rounds to the
quoted one at the decimals it is quoted with (``1.25`` matches 1.2483, ``259`` matches 258.6), or, for a
number written with ``%``, 100 times such a number. ``1,234`` is 1234. A digit run that is part of a word
(``f16``, ``q8_0``, ``k32``, ``blk.1``) is a name, not a number. Problems: a table without a marker, a
marker naming no file or a file that is not there or not JSON, a number in no named file.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!--\s*results:\s*(.*?)\s*-->$")
NOT_KEPT = "not kept"
# a number not glued to a word: 12, 1,234, 0.85, -3.5, 40% (the sign only after a space, bracket or start)
NUMBER = re.compile(r"(?<![\w.,])(-?\d{1,3}(?:,\d{3})+|-?\d+)(\.\d+)?(?![\w])(%?)")


@dataclass
class Quoted:
    line: int
    text: str
    value: float
    decimals: int
    percent: bool


@dataclass
class Table:
    line: int                  # 1-based line of the header row
    marker: str | None         # the marker's text after "results:", or None
    numbers: list[Quoted]


def _numbers(cell: str, line: int) -> list[Quoted]:
    out = []
    for m in NUMBER.finditer(cell):
        whole, frac, pct = m.group(1), m.group(2) or "", m.group(3)
        if whole.startswith("-") and m.start() > 0 and cell[m.start() - 1] not in " ([":
            whole = whole[1:]  # a range's dash, not a sign
        out.append(Quoted(line, f"{whole}{frac}{pct}", float(whole.replace(",", "") + frac),
                          len(frac) - 1 if frac else 0, bool(pct)))
    return out


def tables(text: str) -> list[Table]:
    """The Markdown tables of ``text`` (outside code fences) with their markers and body numbers."""
    lines = text.splitlines()
    found: list[Table] = []
    fenced = False
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            fenced = not fenced
        is_table = (not fenced and stripped.startswith("|") and i + 1 < len(lines)
                    and re.match(r"^\|\s*:?-{3,}", lines[i + 1].strip()))
        if not is_table:
            i += 1
            continue
        above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        m = MARKER.match(above)
        table = Table(line=i + 1, marker=m.group(1) if m else None, numbers=[])
        j = i + 2
        while j < len(lines) and lines[j].strip().startswith("|"):
            for cell in lines[j].strip().strip("|").split("|"):
                table.numbers += _numbers(cell, j + 1)
            j += 1
        found.append(table)
        i = j
    return found


def json_numbers(value) -> list[float]:
    """Every number in a parsed JSON value, at any depth (booleans excluded)."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)] if math.isfinite(value) else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [x for v in value for x in json_numbers(v)]
    return []


def matches(q: Quoted, values: list[float]) -> bool:
    tolerance = 0.5 * 10.0 ** -q.decimals * (1 + 1e-9) + 1e-12
    scales = (1.0, 100.0) if q.percent else (1.0,)
    return any(abs(v * s - q.value) <= tolerance for v in values for s in scales)


def check(path: Path, root: Path = ROOT) -> tuple[list[str], dict]:
    """Problems in ``path`` (one readable line each) and counts."""
    problems: list[str] = []
    counts = {"tables": 0, "backed": 0, "not_kept": 0, "numbers": 0}
    cache: dict[Path, list[float] | str] = {}
    for table in tables(path.read_text(encoding="utf-8")):
        counts["tables"] += 1
        where = f"{path.name}:{table.line}"
        if table.marker is None:
            problems.append(f"{where}: table without a marker: put <!-- results: bench/results/FILE.json --> "
                            f"(or <!-- results: {NOT_KEPT} (why) -->) on the line above it")
            continue
        if table.marker.startswith(NOT_KEPT):
            counts["not_kept"] += 1
            continue
        files = [f.strip() for f in table.marker.split(",") if f.strip()]
        if not files:
            problems.append(f"{where}: the marker names no result file")
            continue
        values: list[float] = []
        broken = False
        for name in files:
            file = (root / name).resolve()
            if file not in cache:
                try:
                    cache[file] = json_numbers(json.loads(file.read_text(encoding="utf-8")))
                except FileNotFoundError:
                    cache[file] = f"{name} does not exist"
                except (OSError, ValueError) as err:
                    cache[file] = f"{name} is not readable JSON ({err})"
            if isinstance(cache[file], str):
                problems.append(f"{where}: {cache[file]}")
                broken = True
            else:
                values += cache[file]
        if broken:
            continue
        counts["backed"] += 1
        for q in table.numbers:
            counts["numbers"] += 1
            if not matches(q, values):
                problems.append(f"{path.name}:{q.line}: {q.text} is in no number of {', '.join(files)}")
    return problems, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, default=[ROOT / "BENCHMARKS.md"])
    parser.add_argument("--root", type=Path, default=ROOT, help="where the markers' paths start (the repository)")
    args = parser.parse_args(argv)
    failed = False
    for path in args.files:
        problems, counts = check(path, args.root)
        for problem in problems:
            print(problem)
        failed |= bool(problems)
        print(f"{path.name}: {counts['tables']} tables, {counts['backed']} backed by result files "
              f"({counts['numbers']} numbers checked), {counts['not_kept']} marked '{NOT_KEPT}'; "
              f"{len(problems)} problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
